"""python -m asuka inpaint: pairing, skipping bad/unpaired files, exit codes, never touching the inputs."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asuka import methods
from asuka.cli import main, plan_jobs
from tests.support.app_launcher import ROOT, quiet_env


def _inpaint_args(image: Path, mask: Path, output: Path, *extra: str) -> list[str]:
    """`python -m asuka` arguments: inpaint `image` with `mask` into `output`, then `extra` options."""
    return ["inpaint", "--image", str(image), "--mask", str(mask), "--output", str(output), *extra]


def _snapshot(folder: Path) -> dict:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture
def folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    photo = Image.open(ROOT / "examples" / "rocket.jpg").convert("RGB").resize((72, 48))
    photo.save(images / "good.png")
    photo.save(images / "lonely.png")  # no mask anywhere
    data = (images / "good.png").read_bytes()
    (images / "broken.png").write_bytes(data[: len(data) // 3])  # truncated
    hole = Image.new("L", photo.size, 0)
    hole.paste(255, (20, 10, 50, 30))
    hole.save(masks / "good_mask.png")  # paired by <name>_mask.<ext>
    hole.save(masks / "broken.png")  # paired by the same file name
    return images, masks, np.asarray(photo), np.asarray(hole) > 0


def test_folder_batch_skips_bad_and_unpaired_files(folders, tmp_path):
    images, masks, photo, hole = folders
    before = (_snapshot(images), _snapshot(masks))
    output = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "asuka", *_inpaint_args(images, masks, output, "--tiny", "--steps", "2")],
        cwd=ROOT,
        env=quiet_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 1, process.stderr
    assert sorted(p.name for p in output.iterdir()) == ["good.png"]
    result = np.asarray(Image.open(output / "good.png").convert("RGB"))
    assert result.shape == photo.shape and np.array_equal(result[~hole], photo[~hole])
    assert "lonely.png" in process.stderr and "no mask" in process.stderr
    assert "broken.png" in process.stderr and "Could not read" in process.stderr
    assert "Traceback" not in process.stderr
    assert (_snapshot(images), _snapshot(masks)) == before


def test_never_overwrites_without_flag(folders, tmp_path):
    images, masks, photo, hole = folders
    output = tmp_path / "out"
    output.mkdir()
    (output / "good.png").write_bytes(b"keep me")
    args = _inpaint_args(images / "good.png", masks, output, "--tiny", "--steps", "1")
    assert main(args) == 1
    assert (output / "good.png").read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0
    result = np.asarray(Image.open(output / "good.png").convert("RGB"))
    assert np.array_equal(result[~hole], photo[~hole])


def test_refuses_to_write_into_an_input_folder(folders):
    images, masks, _, _ = folders
    before = _snapshot(images)
    assert main(_inpaint_args(images, masks, images / "out", "--tiny")) == 2
    assert _snapshot(images) == before


def test_masks_beside_images_and_single_mask_for_all(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "a_mask.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    jobs = plan_jobs(tmp_path, tmp_path, tmp_path / "out")
    assert [(j.image.name, j.mask.name if j.mask else None) for j in jobs] == [
        ("a.jpg", "a_mask.png"),
        ("b.png", None),
    ]
    shared = tmp_path / "a_mask.png"
    assert all(j.mask == shared for j in plan_jobs(tmp_path, shared, tmp_path / "out"))


def test_without_method_or_gpu_exits_2_with_guidance(folders, tmp_path, monkeypatch, capsys):
    images, masks, _, _ = folders
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _inpaint_args(images / "good.png", masks, tmp_path / "out")
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert "No CUDA GPU" in stderr and "--tiny" in stderr
    for name in ("asuka-sd", "sd", "asuka-flux", "flux-fill", "strdiffusion"):
        assert f"  {name} " in stderr
    assert not (tmp_path / "out").exists()


def test_default_method_follows_the_device(folders, tmp_path, monkeypatch, capsys):
    # the CLI and the app choose with the same rule; --tiny runs the first method on any device
    assert methods.choose_method(None, tiny=False, cuda_available=True) == "asuka-flux"
    assert methods.choose_method(None, tiny=True, cuda_available=True) == "asuka-sd"
    assert methods.choose_method("sd", tiny=False, cuda_available=False) == "sd"
    assert methods.choose_method(None, tiny=True, cuda_available=False) == "asuka-sd"
    with pytest.raises(methods.NoDefaultMethod):
        methods.choose_method(None, tiny=False, cuda_available=False)
    # on a GPU machine, --device cpu without --method must not pick the GPU-only default
    images, masks, _, _ = folders
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = _inpaint_args(images / "good.png", masks, tmp_path / "out")
    assert main(args + ["--device", "cpu"]) == 2
    assert "No CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
