"""training/recipe.py end to end on tiny components: every stage of the SD recipe runs the real scripts under
`accelerate launch` (a facebook-style MAE converted, the MAE, aligner and decoder trained, the light repo written),
a stage killed after a checkpoint resumes from it, a second invocation skips every stage; bad flags are refused."""

import os
import signal
import subprocess
import sys
import time

import pytest
import recipe
import torch

from tests.support.training import (
    ROOT,
    intercept_hub,
    launch_env,
    random_images,
    tiny_pipeline_dir,
)
from tests.support.vitmae import TINY_VITMAE, tiny_vitmae


STEPS = {"mae": 2, "aligner": 12, "decoder": 2}
FLUX_SCHEDULE = {"steps": 2, "batch_size": 2, "resolution": 32}


@pytest.fixture(scope="module")
def vitmae_dir(tmp_path_factory):
    """A tiny random transformers ViTMAEForPreTraining folder (facebook's MAE format), the recipe's MAE source."""
    model = tiny_vitmae()
    folder = tmp_path_factory.mktemp("vitmae") / "tiny-vit-mae"
    model.save_pretrained(folder)
    return folder


def recipe_command(backbone_dir, image_dir, out, vitmae) -> list[str]:
    """The SD recipe on the tiny backbone: a handful of steps per stage at 32 px, a checkpoint every step."""
    tiny_aligner = "--aligner_num_blocks 1 --aligner_head_dim 8 --validation_inference_steps 2"
    flags = [f"--{stage}_steps={steps}" for stage, steps in STEPS.items()]
    flags += [
        f"--{stage}_{key}=32" if key == "resolution" else f"--{stage}_{key}=2"
        for stage in STEPS
        for key in (
            "resolution",
            "batch_size",
        )
    ]
    return [
        sys.executable,
        str(ROOT / "training" / "recipe.py"),
        "--backbone",
        "sd",
        str(image_dir),
        str(out),
        "--pretrained",
        str(backbone_dir),
        "--mae_from",
        str(vitmae),
        *flags,
        "--checkpointing_steps=1",
        "--seed=0",
        "--num_processes=1",
        "--launcher_args=--num_machines 1 --mixed_precision no --dynamo_backend no",
        f"--stage_args=aligner={tiny_aligner} --validation_steps 0",
        "--stage_args=mae=--validation_steps 0",
        "--stage_args=decoder=--validation_steps 0",
    ]


def check_light_repo(pipeline_class, out, trained: tuple[str, ...]):
    """OUT/light loads as `pipeline_class`, holds the final pipeline's trained components and inpaints; returns it."""
    final = pipeline_class.from_pretrained(out / "decoder" / "pipeline")
    light = pipeline_class.from_pretrained(out / "light")
    for name in trained:
        state, light_state = getattr(final, name).state_dict(), getattr(light, name).state_dict()
        assert all(torch.equal(state[key], light_state[key]) for key in state)
    image, mask = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    result = light(image, mask, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (1, 3, 32, 32) and torch.isfinite(result.images).all()
    return light


def test_sd_recipe_runs_every_stage_resumes_a_killed_one_and_then_skips_all(tmp_path_factory, vitmae_dir):
    backbone = tiny_pipeline_dir(tmp_path_factory, "sd-backbone")
    images = random_images(tmp_path_factory.mktemp("images"), [(40, 40)] * 4)
    out = tmp_path_factory.mktemp("recipe") / "out"
    command = recipe_command(backbone, images, out, vitmae_dir)

    # 1. run until the aligner stage has written a checkpoint, then kill the recipe and its stage
    log = out.parent / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=launch_env(), start_new_session=True
        )
    deadline = time.monotonic() + 600
    while not list((out / "aligner").glob("checkpoint-*")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first_log = log.read_text()
    assert first.returncode == -signal.SIGKILL, first_log[-3000:]
    killed_at = max(int(p.name.split("-")[1]) for p in (out / "aligner").glob("checkpoint-*"))
    assert killed_at < STEPS["aligner"]
    assert not (out / ".recipe" / "aligner.json").exists()
    # the budget came first, with the recipe's schedules; the stages before the aligner ran
    assert first_log.index("TFLOP per sample") < first_log.index("[mae_start]") < first_log.index("[mae]")
    assert "| aligner | 12 steps x batch 2 at 32 |" in first_log and "| mae | 2 steps x batch 2 at 32 |" in first_log
    assert {p.stem for p in (out / ".recipe").glob("*.json")} == {"budget", "mae_start", "mae", "precompute"}

    # 2. the next run skips what is done, resumes the aligner at its checkpoint and runs the rest
    second = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert all(f"[{stage}] done before" in second.stdout for stage in ("mae_start", "mae", "precompute"))
    resumed = [line for line in second.stdout.splitlines() if "Resuming from checkpoint" in line]
    assert len(resumed) == 1 and resumed[0].endswith(f"checkpoint-{killed_at}"), resumed
    assert {p.stem for p in (out / ".recipe").glob("*.json")} == {"budget", *recipe.STAGES[1:]}

    from asuka.models import AsukaMAE
    from asuka.pipelines import AsukaPipeline

    converted = AsukaMAE.from_pretrained(out / "mae_start")
    trained = AsukaMAE.from_pretrained(out / "mae")
    assert converted.config.patch_size == TINY_VITMAE["patch_size"] and trained.config.input_preprocessing == "visible"
    light = check_light_repo(AsukaPipeline, out, ("mae", "aligner", "decoder"))
    assert torch.equal(light.mae.state_dict()["alpha"], trained.state_dict()["alpha"])

    # 3. a third run has nothing left to do
    third = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert third.returncode == 0, third.stderr[-3000:]
    skipped = [line for line in third.stdout.splitlines() if "done before" in line]
    assert len(skipped) == 6 and "accelerate.commands.launch" not in third.stdout


def test_flux_recipe_runs_every_stage_from_a_release_folder_and_then_skips_all(tmp_path_factory):
    """The tiny AsukaFluxPipeline folder stands for the converted release: the MAE stage keeps its mae/ (0 steps),
    the aligner (encoding on the fly, FLUX's default) and decoder train on FLUX.1-Fill, the light repo loads and
    runs."""
    backbone = tiny_pipeline_dir(tmp_path_factory, "flux")
    images = random_images(tmp_path_factory.mktemp("flux_images"), [(40, 40)] * 2)
    out = tmp_path_factory.mktemp("flux_recipe") / "out"
    command = [
        sys.executable,
        str(ROOT / "training" / "recipe.py"),
        "--backbone=flux",
        str(images),
        str(out),
        f"--pretrained={backbone}",
        "--mae_steps=0",
        *(f"--{stage}_{key}={value}" for stage in ("aligner", "decoder") for key, value in FLUX_SCHEDULE.items()),
        "--checkpointing_steps=1",
        "--seed=0",
        "--launcher_args=--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no",
        "--stage_args=aligner=--validation_steps 0 --validation_inference_steps 2",
        "--stage_args=decoder=--validation_steps 0",
    ]
    first = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "| decoder | 2 steps x batch 2 at 32 |" in first.stdout
    records = {p.stem for p in (out / ".recipe").glob("*.json")}
    assert records == {"budget", "aligner", "decoder", "light"}  # FLUX's aligner encodes on the fly by default

    from asuka.pipelines import AsukaFluxPipeline

    check_light_repo(AsukaFluxPipeline, out, ("mae", "token_aligner", "pooled_aligner", "decoder"))

    second = subprocess.run(command, capture_output=True, text=True, env=launch_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert len([line for line in second.stdout.splitlines() if "done before" in line]) == 3


def test_light_stage_pushes_only_asukas_parts_and_the_card(tmp_path, monkeypatch):
    """With --push_to_hub the light stage uploads OUT/light: ASUKA's components, their code, the backbone pointers
    and the card naming the backbone; no backbone weights."""
    import json

    from asuka.testing import make_tiny_pipeline

    backbone = tmp_path / "backbone"
    make_tiny_pipeline("sd-backbone", seed=0).save_pretrained(backbone)
    out = tmp_path / "out"
    make_tiny_pipeline("sd", seed=0).save_pretrained(out / "decoder" / "pipeline")
    repos = intercept_hub(monkeypatch, tmp_path / "hub")
    argv = ["--backbone", "sd", str(tmp_path), str(out), "--pretrained", str(backbone), "--push_to_hub"]
    args = recipe.parse_args([*argv, "--hub_model_id", "me/asuka-sd"])
    recipe.run_light(args, next(stage for stage in recipe.plan(args) if stage.name == "light"))
    assert [repo for repo, _ in repos] == ["me/asuka-sd"]
    uploaded = tmp_path / "hub" / "me/asuka-sd"
    weights = {p.parent.name for p in uploaded.rglob("*.safetensors")}
    assert weights == {"mae", "aligner", "decoder"}
    assert json.loads((uploaded / "unet" / "backbone.json").read_text())["repo"] == str(backbone)
    assert str(backbone) in (uploaded / "README.md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stage_args", "unknown=--x 1"], "--stage_args takes STAGE=FLAGS"),
        (["--mae", "a", "--mae_from", "b"], "not both"),
        (["--push_to_hub"], "--hub_model_id"),
    ],
)
def test_bad_flags_are_refused_with_what_is_accepted(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        recipe.main(["--backbone", "sd", str(tmp_path), str(tmp_path / "out"), "--pretrained", "x", *flags])


def test_data_must_be_a_folder(tmp_path):
    with pytest.raises(ValueError, match="DATA must be a folder"):
        recipe.main(["--backbone", "flux", str(tmp_path / "missing"), str(tmp_path / "out"), "--pretrained", "x"])


def test_flux_recipe_plan_uses_the_release_resolutions_and_the_release_mae(tmp_path):
    """A FLUX folder with mae/ (a converted release) starts the MAE stage from it; aligner at 512, decoder at 256;
    the aligner encodes on the fly unless --precompute asks for the stage."""
    pretrained = tmp_path / "asuka-flux"
    (pretrained / "mae").mkdir(parents=True)
    (pretrained / "mae" / "config.json").write_text("{}")
    argv = ["--backbone", "flux", str(tmp_path), str(tmp_path / "out"), "--pretrained", str(pretrained)]
    stages = {stage.name: stage for stage in recipe.plan(recipe.parse_args(argv))}
    assert list(stages) == ["mae", "aligner", "decoder", "light"]
    flag = lambda stage, name: stages[stage].command[stages[stage].command.index(name) + 1]  # noqa: E731
    assert flag("mae", "--pretrained_model_name_or_path") == str(pretrained)
    assert (flag("aligner", "--resolution"), flag("decoder", "--resolution")) == ("512", "256")
    assert flag("aligner", "--mae_model_name_or_path") == str(tmp_path / "out" / "mae")
    assert flag("aligner", "--train_data_dir") == str(tmp_path)
    assert flag("decoder", "--pretrained_model_name_or_path") == str(tmp_path / "out" / "aligner" / "pipeline")

    stages = {stage.name: stage for stage in recipe.plan(recipe.parse_args([*argv, "--precompute"]))}
    assert list(stages) == ["mae", "precompute", "aligner", "decoder", "light"]
    inputs = str(tmp_path / "out" / "precompute")
    assert flag("aligner", "--precomputed") == flag("precompute", "--output_dir") == inputs
    assert "--train_data_dir" not in stages["aligner"].command and flag("precompute", "--resolution") == "512"
