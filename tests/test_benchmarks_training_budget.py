"""benchmarks/training_budget.py: its training steps train what the scripts train, and the budget arithmetic."""

import pytest
import torch
from benchmark_modules import flops, training_budget
from torch.nn.attention import SDPBackend, sdpa_kernel

from asuka.testing.sd import make_tiny_sd_components


@pytest.mark.parametrize("name", ["aligner", "decoder"])
def test_steps_update_only_the_trained_component(name):
    components = make_tiny_sd_components(0)
    for key, module in components.items():
        if key != "scheduler":
            module.eval().requires_grad_(False)
    before = {k: {n: p.clone() for n, p in m.state_dict().items()} for k, m in components.items() if k != "scheduler"}
    training_budget.RUNS[name](components, 32, 2, "cpu", torch.float32)()
    changed = {
        key
        for key, state in before.items()
        if any(not torch.equal(v, components[key].state_dict()[n]) for n, v in state.items())
    }
    assert changed == {name}


def test_decoder_step_counts_on_meta_what_it_runs_on_cpu():
    """The budget's FLOPs are counted on meta tensors, its step times measured on real ones: both must be the same
    step (the decoder's hole box included, which meta tensors cannot yield from the mask)."""
    on_meta = training_budget.RUNS["decoder"](flops.meta_sd_components(tiny=True), 32, 2, "meta", torch.float32)
    on_cpu = training_budget.RUNS["decoder"](
        training_budget.build_sd_components(tiny=True), 32, 2, "cpu", torch.float32
    )
    with sdpa_kernel(SDPBackend.MATH):  # what meta tensors decompose attention into
        assert flops.count_flops(on_meta, grad=True) == flops.count_flops(on_cpu, grad=True) > 0


def test_budget_table_arithmetic():
    table = training_budget.budget_table({"aligner": 1e12, "decoder": 2e12}, tflops=100.0)
    # aligner: 20,000 x 8 samples x 1 TFLOP at 100 TFLOP/s = 1600 s = 0.44 h; decoder: 50,000 x 40 x 2 TFLOP = 11.1 h
    assert "| aligner | 20,000 steps x batch 8 | 1.00 | 160 | 0.4 | 0.1 h |" in table
    assert "| decoder | 50,000 steps x batch 40 | 2.00 | 4,000 | 11.1 | 1.4 h |" in table
