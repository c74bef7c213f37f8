"""The speed options where users are: `--cache`, `--lora`, `--compile` in the CLI and the demo, the step cache per
request through the methods, and the run time the demo shows."""

import functools

import numpy as np
import pytest
import torch

import app
from asuka import methods
from asuka.cli import main
from asuka.methods.speedups import compile_and_warm_up, load_loras, parse_lora, use_step_cache
from asuka.pipelines.step_cache import CACHE_KNOBS
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image
from tests.support.lora import save_tiny_lora


def request(**kwargs) -> methods.InpaintRequest:
    image, mask = random_image(32, 48), box_mask(32, 48, rows=(8, 20), cols=(16, 32))
    return methods.InpaintRequest(image=image, mask=mask, steps=2, **kwargs)


def test_lora_specs():
    assert parse_lora("alimama-creative/FLUX.1-Turbo-Alpha") == ("alimama-creative/FLUX.1-Turbo-Alpha", 1.0)
    assert parse_lora("alimama-creative/FLUX.1-Turbo-Alpha:0.8") == ("alimama-creative/FLUX.1-Turbo-Alpha", 0.8)
    assert parse_lora("C:/loras/turbo.safetensors") == ("C:/loras/turbo.safetensors", 1.0)
    assert parse_lora("C:/loras/turbo.safetensors:0.5") == ("C:/loras/turbo.safetensors", 0.5)
    with pytest.raises(ValueError, match="REPO_OR_FILE"):
        parse_lora("")


def test_cache_help_names_every_cache():
    assert all(f"{name}[:" in methods.CACHE_HELP for name in CACHE_KNOBS)


def test_step_cache_follows_the_request():
    pipe = make_tiny_pipeline("flux")
    methods.run_method("asuka-flux", pipe, request(step_cache="first-block:0.8"))
    assert pipe.step_cache_enabled and pipe.transformer._cache_config.threshold == 0.8
    methods.run_method("asuka-flux", pipe, request(step_cache="first-block:0.8"))
    assert pipe.transformer._cache_config.threshold == 0.8
    use_step_cache(pipe, "mag:0.06", 2)
    assert len(pipe.transformer._cache_config.mag_ratios) == 2  # MagCache's ratios follow the steps
    use_step_cache(pipe, "mag:0.06", 4)
    assert len(pipe.transformer._cache_config.mag_ratios) == 4
    with pytest.raises(ValueError, match="accepted: first-block"):
        use_step_cache(pipe, "deep:2", 4)
    assert pipe.step_cache_enabled  # a bad spec leaves the current cache
    plain = methods.run_method("asuka-flux", pipe, request()).image
    assert not pipe.step_cache_enabled
    assert np.array_equal(
        np.asarray(plain), np.asarray(methods.run_method("asuka-flux", make_tiny_pipeline("flux"), request()).image)
    )
    with pytest.raises(ValueError, match="ASUKA pipelines"):
        methods.run_method("flux-fill", make_tiny_pipeline("flux-backbone"), request(step_cache="first-block"))


def test_loras_load_as_adapters_at_their_scales(tmp_path):
    pipe = make_tiny_pipeline("sd")
    save_tiny_lora(pipe, "sd", tmp_path / "a")
    save_tiny_lora(pipe, "sd", tmp_path / "b")
    lines = load_loras(pipe, (f"{tmp_path / 'a' / 'pytorch_lora_weights.safetensors'}:0.5", str(tmp_path / "b")))
    assert pipe.get_active_adapters() == ["lora_0", "lora_1"]
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.scaling == {"lora_0": 0.5 * 2.0, "lora_1": 2.0}  # alpha / rank = 2, times the scale
    assert lines[0].endswith("at scale 0.5") and lines[1].endswith("at scale 1")


def test_cli_takes_cache_and_lora(tmp_path, capsys):
    pipe = make_tiny_pipeline("sd")
    save_tiny_lora(pipe, "sd", tmp_path / "lora")
    image, mask = request().image, request().mask
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "photo.png")
    mask.save(tmp_path / "in" / "mask.png")
    args = ["inpaint", "--image", str(tmp_path / "in" / "photo.png"), "--mask", str(tmp_path / "in" / "mask.png")]
    args += ["--tiny"]
    args += [
        "--steps",
        "2",
        "--output",
        str(tmp_path / "out"),
        "--cache",
        "pab:2",
        "--lora",
        f"{tmp_path / 'lora'}:0.5",
    ]
    assert main(args) == 0
    assert "LoRA" in capsys.readouterr().err and (tmp_path / "out" / "photo.png").is_file()
    assert main(args[:-4] + ["--cache", "first-block:0.1", "--overwrite"]) == 2  # the SD UNet takes PAB only
    assert "PyramidAttentionBroadcastConfig" in capsys.readouterr().err
    assert main(args[:-4] + ["--cache", "deep:2", "--overwrite"]) == 2
    assert "accepted: first-block" in capsys.readouterr().err


def test_app_flags():
    args = app.parse_args(["--cache", "first-block:0.12", "--lora", "a/b:0.5", "--lora", "c", "--compile"])
    assert args.cache == "first-block:0.12" and args.lora == ["a/b:0.5", "c"] and args.compile


def test_app_run_shows_its_time_and_takes_the_cache():
    demo = app.build_demo(methods.PipelineCache(tiny=True), "asuka-flux", tiny=True, step_cache="first-block:0.8")
    inpaint = next(fn for fn in demo.fns.values() if fn.api_name == "inpaint").fn
    image, mask = request().image, request().mask
    editor = {"background": image, "layers": [], "composite": None}
    outputs = inpaint(editor, mask, "asuka-flux", 2, 0, False, 1.0, 30.0, True, 0, False, step_cache="first-block:0.8")
    took = outputs[-1]
    assert took.startswith("ASUKA") and " s for 2 steps (step cache first-block:0.8)" in took
    assert float(took.split(": ")[1].split(" s")[0]) > 0


@pytest.mark.compile
def test_compile_warms_up_at_the_working_size():
    """`--compile`: compile_components, then one warm-up call at the square working size, stated in a line."""
    pipe = make_tiny_pipeline("flux")
    pipe.compile_components = functools.partial(pipe.compile_components, backend="eager")
    torch._dynamo.reset()
    (line,) = compile_and_warm_up(pipe)
    assert line.startswith("torch.compile: transformer (FluxTransformerBlock, FluxSingleTransformerBlock), mae")
    assert "warm-up at 64x64 took" in line
    with torch._dynamo.config.patch(error_on_recompile=True):
        pipe.warm_up(64, 64)
    torch._dynamo.reset()
