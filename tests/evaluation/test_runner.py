"""The evaluation CLI end to end with the tiny ASUKA-SD pipeline from asuka.methods (offline, CPU)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import asuka.testing
from asuka.evaluation.__main__ import main
from asuka.evaluation.data import discover
from asuka.methods import InpaintResult, get_method
from tests.support.accelerate_launch import two_process_launch


NAMES = ["0000", "0001", "0500", "0501", "1000", "1500"]  # outdoor x2, indoor x2, building, background
SIZE = 32
TINY_RUN = ["--method", "asuka-sd", "--tiny", "--steps", "1", "--grid-rows", "2"]


def _write_pair(root: Path, name: str, seed: int, size=(SIZE, SIZE), mask_size=None, mask_name=None):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[1], : size[0]]
    image = np.stack([(xx * 7 + seed * 30) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1)
    image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(root / "image" / f"{name}.png")
    mw, mh = mask_size or size
    mask = np.zeros((mh, mw), np.uint8)
    mask[mh // 4 : mh * 3 // 4, mw // 4 : mw * 3 // 4] = 255
    Image.fromarray(mask).save(root / "mask" / (mask_name or f"{name}.png"))


def _make_benchmark(root: Path, names=NAMES) -> Path:
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    for seed, name in enumerate(names):
        _write_pair(root, name, seed)
    return root


@pytest.fixture()
def counting_pipeline(monkeypatch):
    """Counts the tiny pipeline loads and per-image runs of asuka-sd in this process."""
    spec = get_method("asuka-sd")
    counts = {"load": 0, "run": 0}
    original_load, original_run = asuka.testing.make_tiny_pipeline, spec.run

    def load(*args, **kwargs):
        counts["load"] += 1
        return original_load(*args, **kwargs)

    def run(*args):
        counts["run"] += 1
        return original_run(*args)

    monkeypatch.setattr(asuka.testing, "make_tiny_pipeline", load)
    monkeypatch.setattr(spec, "run", run)
    return counts


def test_run_writes_outputs_metrics_table_grid_then_resumes_without_work(tmp_path, counting_pipeline, capsys):
    data, out = _make_benchmark(tmp_path / "misato"), tmp_path / "run"
    assert main(["run", *TINY_RUN, "--data", str(data), "--out", str(out)]) == 0
    assert counting_pipeline == {"load": 1, "run": 6}

    outputs = sorted(p.name for p in (out / "images").iterdir())
    assert outputs == [f"{n}.png" for n in NAMES]
    for name in NAMES:  # outputs are the input's size and keep every unmasked pixel
        output = np.asarray(Image.open(out / "images" / f"{name}.png"))
        image = np.asarray(Image.open(data / "image" / f"{name}.png"))
        mask = np.asarray(Image.open(data / "mask" / f"{name}.png")) > 127
        assert output.shape == image.shape
        np.testing.assert_array_equal(output[~mask], image[~mask])

    record = json.loads((out / "metrics.json").read_text())
    assert record["method"] == "asuka-sd" and record["layout"] == "misato" and record["errors"] == {}
    assert record["counts"] == {"all": 6, "outdoor": 2, "indoor": 2, "building": 1, "background": 1}
    overall = record["metrics"]["all"]
    for key in ("fid", "u_ids", "p_ids", "psnr", "ssim", "lpips", "grad"):
        assert np.isfinite(overall[key]), key
    assert 0.0 <= overall["u_ids"] <= 0.5 and 0.0 <= overall["p_ids"] <= 1.0
    per_image = (out / "per_image.csv").read_text().splitlines()
    psnrs = [float(line.split(",")[2]) for line in per_image[1:]]
    assert overall["psnr"] == pytest.approx(np.mean(psnrs))
    assert record["metrics"]["building"]["fid"] is None  # one image: no covariance, reported as missing

    table = (out / "table.md").read_text()
    for heading in ("All images", "Outdoor", "Indoor", "Building", "Background"):
        assert f"### {heading}" in table
    assert "| ASUKA-SD | 6 |" in table and "FID ↓" in table
    csv_rows = (out / "table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("method,label,domain,images,fid,u_ids,p_ids")
    assert len(csv_rows) == 1 + 5
    grid = Image.open(out / "grid.png")
    assert grid.size == (256 * 3, 24 + 256 * 2)  # input, ASUKA-SD, ground truth x 2 rows

    # second run: nothing is loaded or generated, outputs are untouched, the same metrics come out
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert main(["run", *TINY_RUN, "--data", str(data), "--out", str(out)]) == 0
    assert counting_pipeline == {"load": 1, "run": 6}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    log = json.loads((out / "logs" / "rank0.json").read_text())
    assert log["generated"] == [] and log["skipped"] == [f"{n}.png" for n in NAMES]
    assert json.loads((out / "metrics.json").read_text())["metrics"] == record["metrics"]

    # `score` on the same outputs gives the same numbers; `table` merges both runs
    scored = tmp_path / "scored"
    assert (
        main(
            [
                "score",
                "--pred",
                str(out / "images"),
                "--data",
                str(data),
                "--out",
                str(scored),
                "--features",
                "tiny",
                "--label",
                "Peer",
                "--grid-rows",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((scored / "metrics.json").read_text())["metrics"] == record["metrics"]
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert main(["table", str(out), str(scored), "--out", str(merged), "--grid-rows", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| ASUKA-SD | 6 |" in printed and "| Peer | 6 |" in printed
    assert printed == (merged / "table.md").read_text() + "\n"
    assert len((merged / "table.csv").read_text().splitlines()) == 1 + 2 * 5
    assert Image.open(merged / "grid.png").size == (256 * 4, 24 + 256)  # input, two methods, ground truth


@pytest.fixture()
def inverting_pipeline(monkeypatch):
    """asuka-sd's run stubbed by a cheap one that fills the hole with the inverted image (error tests need no
    diffusion); its third call fails like a pipeline error would."""
    spec = get_method("asuka-sd")
    calls = []

    def run(pipeline, request, progress):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated pipeline failure")
        hole = np.asarray(request.mask)[..., None] > 127
        image = np.asarray(request.image)
        return InpaintResult(Image.fromarray(np.where(hole, 255 - image, image)))

    monkeypatch.setattr(spec, "run", run)


def test_per_file_errors_are_reported_and_the_run_goes_on(tmp_path, capsys, inverting_pipeline):
    data = _make_benchmark(tmp_path / "data", names=["0000", "0001", "0500"])
    _write_pair(data, "0501", 10)
    (data / "mask" / "0501.png").unlink()  # missing mask
    _write_pair(data, "1000", 11, mask_size=(SIZE, SIZE // 2))  # size mismatch
    _write_pair(data, "1500", 12)
    (data / "image" / "1500.png").write_bytes(b"not an image at all")  # unreadable
    _write_pair(data, "1501", 13)
    (data / "image" / "1501.png").write_bytes((data / "image" / "1501.png").read_bytes()[:60])  # truncated PNG

    out = tmp_path / "run"
    assert main(["run", *TINY_RUN, "--data", str(data), "--out", str(out)]) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert set(record["errors"]) == {"0500.png", "0501.png", "1000.png", "1500.png", "1501.png"}
    assert "generation failed (RuntimeError: simulated pipeline failure)" in record["errors"]["0500.png"]
    assert "no mask" in record["errors"]["0501.png"]
    assert "32x32" in record["errors"]["1000.png"] and "32x16" in record["errors"]["1000.png"]
    assert "Could not read" in record["errors"]["1500.png"]
    assert "Could not read" in record["errors"]["1501.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000.png", "0001.png"]
    assert record["counts"]["all"] == 2 and np.isfinite(record["metrics"]["all"]["psnr"])
    stderr = capsys.readouterr().err
    assert "5 file(s) could not be used" in stderr and "no mask found" in stderr

    # scoring outputs made elsewhere: a missing and a wrongly sized output are reported the same way
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.open(out / "images" / "0000.png").save(pred / "0000.png")
    Image.open(out / "images" / "0001.png").resize((16, 16)).save(pred / "0001.png")
    assert main(["score", "--pred", str(pred), "--data", str(data), "--features", "tiny"]) == 0
    scored = json.loads((pred / "metrics.json").read_text())
    assert "no generated output" in scored["errors"]["0500.png"]
    assert "16x16" in scored["errors"]["0001.png"]
    assert scored["counts"]["all"] == 1


def test_two_process_accelerate_run_writes_each_output_once(tmp_path):
    data, out = _make_benchmark(tmp_path / "data"), tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = two_process_launch("-m", "asuka.evaluation", "run", *TINY_RUN, "--data", str(data), "--out", str(out))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads((out / "logs" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    generated = [set(log["generated"]) for log in logs]
    assert generated[0] and generated[1] and not generated[0] & generated[1]  # both worked, no overlap
    assert generated[0] | generated[1] == {f"{n}.png" for n in NAMES}
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{n}.png" for n in NAMES]
    assert json.loads((out / "metrics.json").read_text())["counts"]["all"] == 6


def test_discover_misato_1024_naming_and_generic_layout(tmp_path):
    misato = tmp_path / "1024"
    (misato / "image").mkdir(parents=True)
    (misato / "mask").mkdir()
    for seed, name in enumerate(["0499", "0500", "1999"]):
        _write_pair(misato, name, seed, mask_name=f"00{name}.png")
    benchmark = discover(misato)
    assert benchmark.layout == "misato" and benchmark.domains == ["outdoor", "indoor", "background"]
    assert [s.mask_path.name for s in benchmark.samples] == ["000499.png", "000500.png", "001999.png"]

    places = tmp_path / "places"
    (places / "images").mkdir(parents=True)
    (places / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(places / "images" / "Places365_val_00000001.jpg")
    Image.new("L", (8, 8)).save(places / "masks" / "Places365_val_00000001.png")
    benchmark = discover(places)
    assert benchmark.layout == "folder" and benchmark.domains == ["all"]
    assert benchmark.samples[0].name == "Places365_val_00000001.png"
    assert benchmark.samples[0].mask_path.name == "Places365_val_00000001.png"
    with pytest.raises(ValueError, match="not a MISATO folder"):
        discover(places, layout="misato")
    with pytest.raises(ValueError, match="image/ and mask/"):
        discover(tmp_path)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    data = _make_benchmark(tmp_path / "data", names=["0000"])
    assert main(["run", "--method", "no-such-method", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "Unknown method 'no-such-method'" in capsys.readouterr().err
    assert main(["table", str(tmp_path)]) == 2
    assert "has no metrics.json" in capsys.readouterr().err


def test_device_and_dtype_resolve_as_in_the_app_and_the_cli(monkeypatch):
    import torch

    from asuka.defaults import resolve_device_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for unset in (None, "auto"):  # the runner's "auto" and the CLI's/app's None mean the same
        assert resolve_device_dtype(unset, unset) == ("cpu", torch.float32)
    assert resolve_device_dtype(torch.device("cuda"), "auto") == ("cuda", torch.bfloat16)
    assert resolve_device_dtype("cpu", "fp16") == ("cpu", torch.float16)
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        resolve_device_dtype("cpu", "float8")
