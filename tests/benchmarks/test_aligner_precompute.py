"""benchmarks/aligner_precompute.py: the aligner step from precomputed inputs saves exactly the two VAE encodes and
the MAE prior of the step that encodes on the fly (SD and FLUX), the SD one being the training budget's aligner step;
preparing a sample costs two encodes and two priors (tiny components, meta and CPU)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from asuka.testing.sd import make_tiny_sd_components
from benchmarks import aligner_precompute, flops, training_budget
from tests.support import ROOT


SIZE, BATCH = 32, 2
SD, FLUX = aligner_precompute.BACKBONES["sd"], aligner_precompute.BACKBONES["flux"]


def _count_step(components, spec, source, device="meta"):
    step = aligner_precompute.aligner_step(components, spec, source, SIZE, BATCH, device)
    return flops.count_flops(step, grad=True)


def test_the_encoding_step_is_the_training_budgets_aligner_step():
    components = aligner_precompute.meta_components("sd", tiny=True)
    budget = training_budget.RUNS["aligner"](components, SIZE, BATCH, "meta", torch.float32)
    assert _count_step(components, SD, "encoded") == flops.count_flops(budget, grad=True) > 0


@pytest.mark.parametrize("backbone", ["sd", "flux"])
def test_the_stored_step_saves_the_two_encodes_and_the_prior(backbone):
    components = aligner_precompute.meta_components(backbone, tiny=True)
    spec = aligner_precompute.BACKBONES[backbone]
    vae, mae = components["vae"], components["mae"]
    pixels = torch.zeros(BATCH, 3, SIZE, SIZE, device="meta")
    hole = torch.zeros(BATCH, 1, SIZE, SIZE, device="meta")
    encode = flops.count_flops(lambda: vae.encode(pixels))
    prior = flops.count_flops(lambda: mae.prior(pixels, hole))
    encoded, stored = _count_step(components, spec, "encoded"), _count_step(components, spec, "stored")
    assert stored > 0 and encoded - stored == 2 * encode + prior
    assert aligner_precompute.prepare_flops(components, SIZE, BATCH) == 2 * encode + 2 * prior


def test_the_meta_count_is_the_count_of_the_steps_run_on_cpu():
    on_cpu = make_tiny_sd_components(0)
    for key, module in on_cpu.items():
        if key != "scheduler":
            module.eval().requires_grad_(False)
    on_meta = aligner_precompute.meta_components("sd", tiny=True)
    with sdpa_kernel(SDPBackend.MATH):  # what meta tensors decompose attention into
        for source in aligner_precompute.SOURCES:
            assert _count_step(on_meta, SD, source) == _count_step(on_cpu, SD, source, "cpu"), source


def test_the_full_size_figures_are_those_docs_training_states():
    """The SD and FLUX.1-Fill rows of docs/training.md's table, recounted at full size on meta (half a minute)."""
    docs = (ROOT / "docs" / "training.md").read_text()
    for backbone, label in (("sd", "| SD-1.5-inpainting |"), ("flux", "| FLUX.1-Fill (full depth) |")):
        spec = aligner_precompute.BACKBONES[backbone]
        row = aligner_precompute.precompute_rows(aligner_precompute.meta_components(backbone), spec, 512)
        flop, stored = row["tflop_per_sample"], row["stored_bytes_per_sample"]
        saved = 100 * (1 - flop["step_stored"] / flop["step_encoded"])
        line = next(line for line in docs.splitlines() if line.startswith(label))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:3] == [f"{flop['step_encoded']:.2f} TFLOP", f"{flop['step_stored']:.2f} TFLOP"], line
        assert cells[3].startswith(f"{saved:.0f} %") and cells[4] == f"{flop['prepare']:.2f} TFLOP", line
        assert cells[5] == f"{stored['float32']:,}; {stored['bfloat16']:,}", line
