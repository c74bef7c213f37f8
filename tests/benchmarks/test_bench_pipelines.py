"""Smoke tests of benchmarks/bench_pipelines.py (tiny components, no timing assertions) and of the speed options
users combine with the ASUKA components: bf16/fp16, enable_model_cpu_offload, VAE tiling."""

import argparse

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from asuka.testing import make_tiny_pipeline
from benchmarks import bench_pipelines, flops


SIZE = 32  # tiny SD: VAE factor 2, MAE image_size 32; tiny FLUX: factor 8 and 2x2 packing


def _inputs(size: int = 64):
    image = np.random.RandomState(0).rand(size, size, 3).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4 : size // 2 + 8, size // 4 : size // 2 + 8] = 1
    return image, mask


def test_main_prints_inference_and_flux_tables():
    report = bench_pipelines.main(
        ["--tiny", "--size", str(SIZE), "--steps", "1", "--repeats", "1", "--skip", "memory", "training", "--flux"]
    )
    assert "wall-clock ratio asuka/sd:" in report and "CPU-time ratio asuka/sd:" in report
    assert "wall-clock ratio asuka-flux/flux-fill:" in report
    assert "FLOP ratio asuka/sd (whole call, as timed):" in report
    assert "FLOP ratio asuka-flux/flux-fill (whole call, as timed):" in report
    assert "Machine:" in report and "load average" in report


def test_inference_runs_share_modules_and_time_every_stage():
    components = bench_pipelines.build_sd_components(tiny=True)
    runs = bench_pipelines.sd_inference_runs(components, SIZE, 1, "cpu", torch.float32)
    medians = bench_pipelines.alternate(runs, repeats=1, device="cpu", warmup=0)
    asuka, sd = medians["asuka"], medians["sd"]
    for stage in ("mae", "aligner", "vae_encode", "denoise", "decode"):
        assert asuka[stage] > 0, stage
    assert set(sd) == {"total", "vae_encode", "denoise", "decode", "other", "cpu"}
    for timings in (asuka, sd):
        assert sum(v for k, v in timings.items() if k not in ("total", "cpu")) == pytest.approx(timings["total"])
        assert timings["cpu"] > 0
    # the timers are instance attributes and are removed afterwards
    assert "forward" not in components["unet"].__dict__ and "prior" not in components["mae"].__dict__


def test_inference_pair_runs_the_same_backbone_weights():
    components = bench_pipelines.build_sd_components(tiny=True)
    asuka, base = bench_pipelines.sd_pipelines(components)
    assert asuka.unet is base.unet and asuka.vae is base.vae
    assert asuka.scheduler is not base.scheduler and asuka.scheduler.config == base.scheduler.config


def test_flux_pair_runs_the_same_backbone_weights_beside_the_suites_text_encoders():
    """gpu_suite.py keeps FLUX's text encoders in the same components dict; the pipelines take only their own."""
    components = bench_pipelines.build_flux_components(tiny=True, num_layers=1, num_single_layers=1)
    asuka, base = bench_pipelines.flux_pipelines({**components, "text_encoders": (None, None)})
    assert asuka.transformer is base.transformer and asuka.vae is base.vae
    assert asuka.scheduler is not base.scheduler and asuka.scheduler.config == base.scheduler.config


def test_training_flop_ratio_is_counted_on_meta_copies():
    args = argparse.Namespace(tiny=True, size=SIZE, train_batch_size=1)
    ratio = bench_pipelines.training_flop_ratio(args)
    # tiny components: 16 aligner tokens against the bare step's 77, so either step may be the larger one
    assert 0.5 < ratio < 2
    # exactly what the same steps count when run for real on CPU tiny components; with the math attention kernel,
    # the one meta tensors decompose attention into (bmm), since CPU's fused kernel is counted by a formula
    runs = bench_pipelines.training_runs(bench_pipelines.build_sd_components(tiny=True), SIZE, 1, "cpu", torch.float32)
    with sdpa_kernel(SDPBackend.MATH):
        counts = {name: flops.count_flops(fn, grad=True) for name, (fn, _stages) in runs.items()}
    assert ratio == counts["asuka"] / counts["bare"]


def test_training_steps_update_only_their_learnable_inputs():
    components = bench_pipelines.build_sd_components(tiny=True)
    runs = bench_pipelines.training_runs(components, SIZE, 1, "cpu", torch.float32)
    unet_before = {k: v.clone() for k, v in components["unet"].state_dict().items()}
    mae_before = {k: v.clone() for k, v in components["mae"].state_dict().items()}
    aligner_before = {k: v.clone() for k, v in components["aligner"].state_dict().items()}
    for fn, _stages in runs.values():
        fn()
    assert all(torch.equal(v, components["unet"].state_dict()[k]) for k, v in unet_before.items())
    assert all(torch.equal(v, components["mae"].state_dict()[k]) for k, v in mae_before.items())
    assert any(not torch.equal(v, components["aligner"].state_dict()[k]) for k, v in aligner_before.items())
    assert all(p.grad is None for p in components["unet"].parameters())


def test_memory_child_reports_a_peak_above_the_weights():
    args = argparse.Namespace(device="cpu", dtype="fp32", size=SIZE, steps=1, tiny=True)
    for config in ("asuka", "sd"):
        memory = bench_pipelines.memory_child(config, args)
        assert memory["peak_mib"] >= memory["loaded_mib"] > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pipeline_runs_and_stays_close_to_fp32(dtype):
    image, mask = _inputs(SIZE)
    kwargs = dict(num_inference_steps=1, output_type="np")
    reference = make_tiny_pipeline("sd")(image, mask, generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe = make_tiny_pipeline("sd").to(dtype=dtype)
    assert {pipe.mae.dtype, pipe.aligner.dtype, pipe.decoder.dtype, pipe.unet.dtype} == {dtype}
    out = pipe(image, mask, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.isfinite(out).all()
    assert np.abs(out - reference).mean() < 5e-3


@pytest.mark.parametrize("kind, extra", [("sd", {}), ("flux", {"with_masked_image_encoder": True})])
def test_model_cpu_offload_moves_every_component_in_order_including_the_mae(kind, extra):
    """enable_model_cpu_offload needs an accelerator in practice; with device="cpu" accelerate installs the same
    hooks, so we can check that every offloaded component's hook fires, in the sequence's order, and that the MAE's
    fires too although the pipeline calls `mae.prior`, not `forward` (this needs `apply_forward_hook`; so does the
    FLUX masked-image encoder's `encode`)."""
    image, mask = _inputs()
    kwargs = dict(num_inference_steps=2, output_type="np")
    reference = make_tiny_pipeline(kind, **extra)(
        image, mask, generator=torch.Generator().manual_seed(0), **kwargs
    ).images
    pipe = make_tiny_pipeline(kind, **extra)
    pipe.enable_model_cpu_offload(device="cpu")
    sequence = pipe.model_cpu_offload_seq.split("->")
    calls = []
    for name in sequence:
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def spy(module, *args, _name=name, _original=original, **kw):
            calls.append(_name)
            return _original(module, *args, **kw)

        hook.pre_forward = spy
    out = pipe(image, mask, generator=torch.Generator().manual_seed(0), **kwargs).images
    first_calls = list(dict.fromkeys(calls))
    assert first_calls == sequence
    np.testing.assert_array_equal(out, reference)


def test_vae_tiling_is_used_and_close_to_untiled():
    image, mask = _inputs()
    kwargs = dict(num_inference_steps=2, output_type="np")
    reference = make_tiny_pipeline("sd", decoder=None)(
        image, mask, generator=torch.Generator().manual_seed(0), **kwargs
    ).images
    pipe = make_tiny_pipeline("sd", decoder=None)
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 16  # tiles smaller than the 64x64 input
    tiled = []
    for name in ("_tiled_encode", "tiled_decode"):
        original = getattr(pipe.vae, name)
        setattr(pipe.vae, name, lambda *a, _o=original, _n=name, **k: tiled.append(_n) or _o(*a, **k))
    out = pipe(image, mask, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert set(tiled) == {"_tiled_encode", "tiled_decode"}
    assert np.abs(out - reference).mean() < 1e-2  # tiles are blended, so only close, not equal
