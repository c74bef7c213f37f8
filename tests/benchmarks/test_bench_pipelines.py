"""benchmarks/bench_pipelines.py on tiny components: what it reports, and that its pairs share the backbone's weights
(no timing assertions)."""

import argparse

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks import bench_pipelines, flops


SIZE = 32  # tiny SD: VAE factor 2, MAE image_size 32; tiny FLUX: factor 8 and 2x2 packing


def test_main_reports_the_measured_medians_and_the_counted_flop_ratios(monkeypatch):
    """The report's tables hold the medians the alternated runs measured, its ratio lines are those medians'
    ratios, and its FLOP ratios are the per-stage counts of benchmarks/flops.py summed."""
    measured = []

    def recording_alternate(*args, **kwargs):
        measured.append(alternate(*args, **kwargs))
        return measured[-1]

    alternate = bench_pipelines.alternate
    monkeypatch.setattr(bench_pipelines, "alternate", recording_alternate)
    argv = ["--tiny", "--size", str(SIZE), "--steps", "1", "--repeats", "1", "--skip", "memory", "training", "--flux"]
    report = bench_pipelines.main(argv)

    assert [list(medians) for medians in measured] == [["asuka", "sd"], ["asuka-flux", "flux-fill"]]
    for medians in measured:
        (a_name, a), (b_name, b) = medians.items()
        for stage in a.keys() - {"total", "cpu"}:
            assert f"| {stage} | {a[stage]:.3f} | {b.get(stage, 0.0):.3f} |" in report, stage
        assert f"| **total (wall)** | **{a['total']:.3f}** | **{b['total']:.3f}** |" in report
        assert f"wall-clock ratio {a_name}/{b_name}: **{a['total'] / b['total']:.3f}**" in report
        assert f"CPU-time ratio {a_name}/{b_name}: **{a['cpu'] / b['cpu']:.3f}**" in report

    for kind, names, components in (
        ("sd", "asuka/sd", flops.meta_sd_components(tiny=True)),
        ("flux", "asuka-flux/flux-fill", flops.meta_flux_components(tiny=True, num_layers=1, num_single_layers=1)),
    ):
        totals = {k: sum(v.values()) for k, v in flops.pipeline_flops(kind, components, SIZE, 1).items()}
        base = totals.pop("sd" if kind == "sd" else "flux-fill")
        line = f"FLOP ratio {names} (whole call, as timed): **{totals['asuka_cached'] / base:.4f}**"
        assert f"{line} (conditioning cache off: {totals['asuka'] / base:.4f})" in report
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
