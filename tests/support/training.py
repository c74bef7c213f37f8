"""Helpers shared by the training tests: the launch environment, one flag builder, random images, an offline env,
a fake Hub."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT


def launch_env(**extra: str) -> dict:
    """Environment of a launched training process: this checkout's `asuka` and `asuka_training` first on the path
    (as `pip install -e .` installs them), one torch thread, CPU, no Hub."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "training"), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def training_argv(pipeline_dir, image_dir, output_dir, steps, **flags) -> list[str]:
    """argv of a tiny, seeded training run (checkpoint every step, two kept); `flags` override or add flags,
    `True` stands for a bare switch."""
    defaults = {
        "pretrained_model_name_or_path": pipeline_dir,
        "train_data_dir": image_dir,
        "output_dir": output_dir,
        "max_train_steps": steps,
        "train_batch_size": 2,
        "checkpointing_steps": 1,
        "checkpoints_total_limit": 2,
        "seed": 0,
        "report_to": "none",
    }
    argv = []
    for key, value in {**defaults, **flags}.items():
        argv += [f"--{key}"] + ([] if value is True else [str(value)])
    return argv


def tiny_pipeline_dir(tmp_path_factory, kind: str) -> Path:
    """A tiny random pipeline of `kind` (asuka.testing), saved once per test module."""
    from asuka.testing import make_tiny_pipeline

    folder = tmp_path_factory.mktemp(f"tiny_{kind}")
    make_tiny_pipeline(kind, seed=0).save_pretrained(folder)
    return folder


def random_images(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    """Write `image_<i>.png`, seeded random RGB of each (height, width) in `sizes`, into `folder`; returns it."""
    rng = np.random.default_rng(0)
    for index, size in enumerate(sizes):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"image_{index}.png")
    return folder


def intercept_hub(patch: pytest.MonkeyPatch, uploads: Path) -> list[tuple[str, dict]]:
    """Replace `HfApi.create_repo`/`upload_folder`: files land in `uploads/<repo_id>/`, honouring the
    ignore patterns like the real upload. Returns the (repo_id, kwargs) of every created repo."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    repos = []

    def fake_create_repo(self, repo_id, **kwargs):
        repos.append((repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def fake_upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        for relative in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            target = uploads / repo_id / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder_path) / relative, target)
        return f"https://huggingface.co/{repo_id}/commit/fake"

    patch.setattr(HfApi, "create_repo", fake_create_repo)
    patch.setattr(HfApi, "upload_folder", fake_upload_folder)
    return repos
