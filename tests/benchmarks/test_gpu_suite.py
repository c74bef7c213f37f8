"""benchmarks/gpu_suite.py on the CPU with tiny components: every section runs and the JSON has the schema the
results/ files and docs rely on; the budget guard skips sections cleanly and still writes the JSON."""

import argparse
import json

import pytest
import torch

from benchmarks import gpu_suite


def _number(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_tiny_run_writes_the_full_schema(tmp_path):
    report = gpu_suite.main(["--tiny", "--out", str(tmp_path)])
    [json_file] = tmp_path.glob("*-cpu-tiny.json")
    assert json.loads(json_file.read_text()) == json.loads(json.dumps(report, default=str))
    assert "| measurement | value | note |" in json_file.with_suffix(".md").read_text()

    assert report["schema"] == gpu_suite.SCHEMA and report["tiny"] is True and report["device"] == "cpu"
    assert set(report["sections"]) == set(gpu_suite.SECTIONS)
    sections = report["sections"]
    sd = sections["sd_inference"]
    assert sd["status"] == "done" and _number(sd["time_ratio"])
    assert sd["time_ratio"] == pytest.approx(sd["asuka"]["total"] / sd["sd"]["total"])
    assert {"mae", "aligner", "vae_encode", "denoise", "decode", "total"} <= set(sd["asuka"])
    assert all(_number(m["weights_mib"]) for m in sd["memory"].values())

    train = sections["training"]
    assert train["status"] == "done" and train["batch"] == 2
    assert _number(train["asuka_images_per_s"]) and _number(train["decoder"]["images_per_s"])

    assert all(_number(sections["eval_throughput"][p]["images_per_min"]) for p in ("sd", "flux"))
    sd_co, flux_co = sections["compile_offload"]["sd"], sections["compile_offload"]["flux"]
    assert all(_number(part[k]) for part in (sd_co, flux_co) for k in ("eager_s", "offload_s", "compiled_s"))

    memory_rows = sections["flux_memory"]["rows"]
    assert sections["flux_memory"]["status"] == "done" and len(memory_rows) == 11
    done = [row for row in memory_rows if row["status"] == "done"]
    assert {(row["quantize"], row["offload"]) for row in done} == {
        (quantize, offload) for quantize in ("none", "fp8", "int8") for offload in ("none", "model")
    } | {("none", "group")}
    assert all(_number(row["s_per_step"]) for row in done)
    assert {row["status"] for row in memory_rows if row not in done} == {"skipped: needs CUDA"}

    [run] = sections["flux_inference"]["runs"]
    assert sections["flux_inference"]["status"] == "done" and _number(run["time_ratio"])

    speedups = sections["flux_speedups"]
    assert speedups["status"] == "done", speedups
    assert set(speedups["runs"]) == {"2 steps", "8 steps", "first-block:0.12", "taylorseer:5"}
    assert speedups["runs"]["2 steps"]["computed_share"] == speedups["runs"]["8 steps"]["computed_share"] == 1
    assert all(_number(run["seconds"]) and 0 < run["computed_share"] <= 1 for run in speedups["runs"].values())

    flops = sections["flops"]
    assert flops["status"] == "done", flops
    # the timed hole (a centred square of half the side) and the decoder's worst case (a box spanning the image)
    assert {(row["pipeline"], row["size"], row["steps"], row["hole_side"]) for row in flops["rows"]} == {
        (pipeline, 32, 2, side) for pipeline in ("sd", "flux") for side in (0.5, 1.0)
    }
    assert all(row["asuka_cached_gflop"] < row["asuka_gflop"] for row in flops["rows"])


def test_budget_guard_skips_sections_and_still_writes_the_json(tmp_path):
    report = gpu_suite.main(["--tiny", "--budget", "0", "--out", str(tmp_path), "--skip", "flops"])
    statuses = [entry["status"] for entry in report["sections"].values() if "status" in entry]
    statuses += [part["status"] for entry in report["sections"].values() for part in entry.values()
                 if isinstance(part, dict)]  # fmt: skip
    assert statuses and all(status.startswith("skipped") for status in statuses)
    [json_file] = tmp_path.glob("*.json")
    assert json.loads(json_file.read_text())["sections"]["flops"]["status"] == "skipped: --skip"


def test_a_failing_section_is_recorded_and_does_not_stop_the_run(tmp_path, monkeypatch):
    report = {"sections": {name: {} for name in gpu_suite.SECTIONS}, "elapsed_s": 0.0}
    args = argparse.Namespace(skip=[], tiny=True)
    ctx = gpu_suite.SuiteContext(args, {}, "cpu", gpu_suite.Budget(60), str(tmp_path / "r.json"), torch.float32)
    monkeypatch.setattr(gpu_suite, "write_outputs", lambda *args: None)

    def boom(ctx):
        raise RuntimeError("CUDA out of memory")

    gpu_suite.run_section(report, "training", boom, ctx, 1)
    gpu_suite.run_section(report, "eval_throughput", lambda ctx: {"images_per_min": 1.0}, ctx, 1, part="sd")
    assert report["sections"]["training"]["status"] == "error"
    assert "CUDA out of memory" in report["sections"]["training"]["error"]
    assert report["sections"]["eval_throughput"]["sd"]["status"] == "done"


def test_a_failing_model_build_is_recorded_in_the_sections_that_needed_it(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_suite, "build_sd_components", out_of_memory)
    monkeypatch.setattr(gpu_suite, "write_outputs", lambda *args: None)
    report = {"sections": {name: {} for name in gpu_suite.SECTIONS}}
    args = argparse.Namespace(skip=[], tiny=True)
    ctx = gpu_suite.SuiteContext(args, {}, "cpu", gpu_suite.Budget(60), str(tmp_path / "r.json"), torch.float32)
    gpu_suite.run_sd_sections(report, ctx)
    for name in ("sd_inference", "training"):
        assert report["sections"][name]["status"].startswith("error while building the models: CUDA out of memory")
    assert ctx.sd is None
