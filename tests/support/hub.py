"""The offline "Hub" of the light-format tests: tiny backbone repos, a Hub cache that serves them, a blocked asuka.

A backbone repo is a tiny SD-1.5-inpainting (or FLUX.1-Fill) pipeline folder with tiny text encoders, written with
diffusers' `save_pretrained`, plus an `fp16` variant of its models holding *different* weights (so a test can tell
which file was read). `hub_cache` places it in a Hugging Face cache at a commit hash, where `HF_HUB_OFFLINE=1`
loading finds it only when that revision is asked for.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from asuka.testing import make_tiny_pipeline
from asuka.testing.flux import flux_fill_pipeline, make_tiny_flux_components
from asuka.testing.sd import make_tiny_sd_components, sd_inpaint_pipeline
from tests.support.inputs import make_inputs


BACKBONE_SHA = "0123456789abcdef0123456789abcdef01234567"
SD_BACKBONE = "tiny-hub/sd-inpainting"
FLUX_BACKBONE = "tiny-hub/flux-fill"
# The backbone's component classes a light repo points to.
SD_BACKBONE_CLASSES = {"vae": "AutoencoderKL", "unet": "UNet2DConditionModel", "scheduler": "PNDMScheduler"}
FLUX_BACKBONE_CLASSES = {
    "vae": "AutoencoderKL",
    "transformer": "FluxTransformer2DModel",
    "scheduler": "FlowMatchEulerDiscreteScheduler",
}


def tiny_clip_text_encoder(hidden_size: int = 32) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=1,
        vocab_size=100,
        projection_dim=hidden_size,
    )
    return CLIPTextModel(config).eval()


def tiny_t5_encoder() -> T5EncoderModel:
    torch.manual_seed(0)
    return T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4, vocab_size=100)).eval()


def save_sd_backbone(folder: Path, make_components=make_tiny_sd_components) -> Path:
    """SD-1.5-inpainting's layout: vae, unet, scheduler, text_encoder (+ fp16 variants of vae and unet), of the
    components `make_components(seed=...)` builds (another backbone of SD's architecture: its own)."""
    components = make_components(seed=0)
    pipe = sd_inpaint_pipeline(components)
    pipe.register_modules(text_encoder=tiny_clip_text_encoder(components["unet"].config.cross_attention_dim))
    pipe.save_pretrained(folder)
    other = make_components(seed=1)
    for name in ("vae", "unet"):
        other[name].save_pretrained(folder / name, variant="fp16")
    return folder


def save_flux_backbone(folder: Path) -> Path:
    """FLUX.1-Fill's layout: vae, transformer, scheduler, text_encoder (CLIP), text_encoder_2 (T5) + fp16 variants."""
    pipe = flux_fill_pipeline(make_tiny_flux_components(seed=0))
    pipe.register_modules(text_encoder=tiny_clip_text_encoder(), text_encoder_2=tiny_t5_encoder())
    pipe.save_pretrained(folder)
    other = make_tiny_flux_components(seed=1)
    for name in ("vae", "transformer"):
        other[name].save_pretrained(folder / name, variant="fp16")
    return folder


def hub_cache(cache_dir: Path, repo_id: str, folder: Path, sha: str = BACKBONE_SHA) -> Path:
    """Serve `folder` as `repo_id` at commit `sha` from a Hugging Face cache (no `refs/main`: only `sha` resolves)."""
    snapshot = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha
    shutil.copytree(folder, snapshot)
    return cache_dir


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def weight_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*.safetensors"))


# The prelude of every subprocess: `import asuka` fails, and each model load is recorded (text encoders refuse).
BLOCKED_PRELUDE = """
import json, sys
sys.modules["asuka"] = None  # any `import asuka` now fails
try:
    import asuka
except ImportError:
    pass
else:
    raise SystemExit("asuka is importable")
import diffusers, transformers
from diffusers import ModelMixin, SchedulerMixin

LOADS = []
_model_load = ModelMixin.from_pretrained.__func__
_scheduler_load = SchedulerMixin.from_pretrained.__func__

def _record(cls, path, kwargs):
    LOADS.append({"class": cls.__name__, "path": str(path), "subfolder": kwargs.get("subfolder"),
                  "revision": kwargs.get("revision"), "variant": kwargs.get("variant"),
                  "torch_dtype": str(kwargs.get("torch_dtype"))})

def model_load(cls, path, **kwargs):
    _record(cls, path, kwargs)
    return _model_load(cls, path, **kwargs)

def scheduler_load(cls, path=None, subfolder=None, return_unused_kwargs=False, **kwargs):
    _record(cls, path, {"subfolder": subfolder, **kwargs})
    return _scheduler_load(cls, path, subfolder=subfolder, return_unused_kwargs=return_unused_kwargs, **kwargs)

def text_encoder_load(cls, *args, **kwargs):
    raise AssertionError(f"a text encoder was loaded: {cls.__name__} {args}")

ModelMixin.from_pretrained = classmethod(model_load)
SchedulerMixin.from_pretrained = classmethod(scheduler_load)
transformers.PreTrainedModel.from_pretrained = classmethod(text_encoder_load)
"""


def run_without_asuka(script: str, cwd: Path, hf_cache: Path | None = None) -> subprocess.CompletedProcess:
    """Run `BLOCKED_PRELUDE + script` in a fresh interpreter, offline, with an empty module cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "modules"), OMP_NUM_THREADS="1")
    if hf_cache is not None:
        env["HF_HUB_CACHE"] = str(hf_cache)
    code = BLOCKED_PRELUDE + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def read_loads(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


def run_folder_without_asuka(
    folder: Path, tmp_path: Path, image, mask, pipeline_class: str, steps: int, then: str = "", hf_cache=None
) -> np.ndarray:
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` in a subprocess without `asuka`: checks the
    pipeline's class, runs it on `image`/`mask` (seed 0, numpy output) and returns the output; `then` is more of the
    script (indented by 8, like this one), run afterwards with `pipe` and `out` defined."""
    image.save(tmp_path / "image.png")
    mask.save(tmp_path / "mask.png")
    script = f"""
        import numpy as np, torch, PIL.Image
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(pipe).__name__ == {pipeline_class!r}, type(pipe)
        out = pipe(PIL.Image.open("image.png"), PIL.Image.open("mask.png"), num_inference_steps={steps},
                   generator=torch.Generator().manual_seed(0), output_type="np").images
        np.save("out.npy", out)
        """
    run_without_asuka(script + then, cwd=tmp_path, hf_cache=hf_cache)
    return np.load(tmp_path / "out.npy")


def load_light_repo_without_asuka(
    light: Path, cache: Path, tmp_path: Path, image, mask, pipeline_class: str, denoiser: str, steps: int
) -> np.ndarray:
    """The one documented diffusers call on `light`, in a subprocess without `asuka`: runs it on `image`/`mask`,
    loads it again in fp16 with the fp16 variant, and runs the model card's usage snippet as written.

    Returns the output; `loads.json` / `loads_fp16.json` in `tmp_path` record every component load.
    """
    then = f"""
        json.dump(LOADS, open("loads.json", "w"))
        LOADS.clear()
        half = DiffusionPipeline.from_pretrained(
            {str(light)!r}, trust_remote_code=True, torch_dtype=torch.float16, variant="fp16"
        )
        assert half.{denoiser}.dtype == half.vae.dtype == torch.float16, (half.{denoiser}.dtype, half.vae.dtype)
        json.dump(LOADS, open("loads_fp16.json", "w"))

        # the model card's usage snippet runs as written (on the inputs it names)
        import re
        code = re.search(r"```python\\n(.*?)```", open({str(light / "README.md")!r}).read(), re.S).group(1)
        exec(code.replace('"light"', {repr(str(light))!r}))
        assert PIL.Image.open("inpainted.png").size == PIL.Image.open("image.png").size
        """
    return run_folder_without_asuka(light, tmp_path, image, mask, pipeline_class, steps, then=then, hf_cache=cache)


def run_hub_format_without_asuka(
    pipe, folder: Path, tmp_path: Path, image, mask, steps: int, python_imports: tuple[str, ...] = ()
) -> np.ndarray:
    """Save `pipe` with `hub_format=True` into `folder`, check that none of `python_imports` (files of the folder)
    imports `asuka`, and return its output loaded and run without `asuka` (`run_folder_without_asuka`)."""
    pipe.save_pretrained(folder, hub_format=True)
    for file in python_imports:
        lines = (folder / file).read_text().splitlines()
        imported = [line.split()[1].split(".")[0] for line in lines if line.startswith(("import ", "from "))]
        assert "asuka" not in imported, file
    return run_folder_without_asuka(folder, tmp_path, image, mask, type(pipe).__name__, steps)


def assert_backbone_loaded_from_pointer(
    tmp_path: Path, backbone: str, classes: dict[str, str], light: Path, asuka_parts: tuple[str, ...]
) -> None:
    """The recorded loads: each backbone component from `backbone` at the pinned revision (fp16 and its variant in
    the second load), each ASUKA part from the light repo."""
    loads = {entry["class"]: entry for entry in read_loads(tmp_path / "loads.json")}
    for name, class_name in classes.items():
        assert loads[class_name]["path"] == backbone and loads[class_name]["subfolder"] == name
        assert loads[class_name]["revision"] == BACKBONE_SHA
    entries = read_loads(tmp_path / "loads.json")
    loaded_parts = {Path(entry["path"]).name for entry in entries if str(entry["path"]).startswith(str(light))}
    assert set(asuka_parts) <= loaded_parts, loaded_parts
    half = {entry["class"]: entry for entry in read_loads(tmp_path / "loads_fp16.json")}
    for name, class_name in classes.items():
        if name == "scheduler":
            continue
        assert half[class_name]["torch_dtype"] == "torch.float16" and half[class_name]["variant"] == "fp16"
        assert half[class_name]["revision"] == BACKBONE_SHA


def light_and_full_repos(
    root: Path, kind: str, backbone_id: str, save_backbone, tiny_kwargs: dict | None = None, **full_kwargs
):
    """A tiny pipeline of `kind` (`make_tiny_pipeline(kind, **tiny_kwargs)`), its light repo (pointing to
    `backbone_id` at `BACKBONE_SHA`, fp16 variant) and its full export, with a Hub cache serving the backbone:
    (pipeline, light, full, backbone folder, cache)."""
    backbone = save_backbone(root / "backbone")
    cache = hub_cache(root / "hf_cache", backbone_id, backbone)
    pipe = make_tiny_pipeline(kind, **(tiny_kwargs or {}))
    light, full = root / "light", root / "full"
    pipe.save_pretrained(
        light, light=True, backbone=backbone_id, backbone_revision=BACKBONE_SHA, backbone_variants=("fp16",)
    )
    pipe.save_pretrained(full, **full_kwargs)
    return pipe, light, full, backbone, cache


def assert_light_layout(light: Path, full: Path, backbone_id: str, denoiser: str, asuka_weights: list[str]) -> None:
    """A light repo holds the weights of ASUKA's parts only; the denoiser, VAE and scheduler folders are pointers to
    `backbone_id` at `BACKBONE_SHA` (with an fp16 variant); it is smaller than the full export less its denoiser."""
    assert weight_files(light) == asuka_weights
    for name in (denoiser, "vae", "scheduler"):
        assert sorted(p.name for p in (light / name).iterdir()) == [
            "backbone.fp16.json",
            "backbone.json",
            "backbone_component.py",
        ]
        pointer = json.loads((light / name / "backbone.json").read_text())
        assert pointer["repo"] == backbone_id and pointer["revision"] == BACKBONE_SHA and pointer["subfolder"] == name
    assert (light / "hub_light.py").is_file() and not (light / "hub_export.py").exists()
    assert not (light / "model_card.py").exists()
    index = json.loads((light / "model_index.json").read_text())
    assert index["_asuka_backbone"] == {"repo": backbone_id, "revision": BACKBONE_SHA}
    assert index[denoiser] == ["backbone_component", "BackboneComponent"] and index["mae"] == ["mae", "AsukaMAE"]
    light_size, full_size = folder_bytes(light), folder_bytes(full)
    print(f"light repo {light_size / 1e6:.2f} MB vs full export {full_size / 1e6:.2f} MB")
    assert light_size < full_size - folder_bytes(full / denoiser) + 1


def assert_light_repo_keeps_the_mae_input_order(kind: str, pipeline_class: type, backbone: Path, tmp_path: Path):
    """Both MAE input orders survive a light repo: written into `mae/config.json`, read back by `from_pretrained`."""
    for order in ("visible", "reference"):
        pipe = make_tiny_pipeline(kind)
        pipe.mae.register_to_config(input_preprocessing=order)
        pipe.save_pretrained(tmp_path / order, light=True, backbone=str(backbone))
        assert json.loads((tmp_path / order / "mae" / "config.json").read_text())["input_preprocessing"] == order
        assert pipeline_class.from_pretrained(tmp_path / order).mae.config.input_preprocessing == order


def light_repo_without(pipe, backbone: Path, component: str, tmp_path: Path) -> tuple[Path, Path]:
    """`pipe` saved light against a copy of `backbone` that lacks `component`: (light folder, broken backbone)."""
    broken = tmp_path / f"backbone-without-{component}"
    shutil.copytree(backbone, broken)
    shutil.rmtree(broken / component)
    light = tmp_path / "light"
    pipe.save_pretrained(light, light=True, backbone=str(broken))
    return light, broken


def assert_lora_on_light_repo_without_asuka(
    light: Path, cache: Path, tmp_path: Path, lora: Path, reference, steps: int
) -> None:
    """`light` loaded with the one diffusers call in a subprocess without `asuka`, the LoRA folder `lora` loaded
    into it with `load_lora_weights`: its output (seed 0) on `make_inputs()` equals that of `reference` (the asuka
    pipeline of the same repo) with the same LoRA, and differs from `reference`'s without it."""
    image, mask = make_inputs()
    then = f"""
        pipe.load_lora_weights({str(lora)!r}, adapter_name="tiny")
        assert pipe.get_active_adapters() == ["tiny"]
        out = pipe(PIL.Image.open("image.png"), PIL.Image.open("mask.png"), num_inference_steps={steps},
                   generator=torch.Generator().manual_seed(0), output_type="np").images
        np.save("lora.npy", out)
        """
    run_folder_without_asuka(light, tmp_path, image, mask, type(reference).__name__, steps, then=then, hf_cache=cache)
    out = np.load(tmp_path / "lora.npy")
    reference.set_progress_bar_config(disable=True)

    def run():
        generator = torch.Generator().manual_seed(0)
        return reference(image, mask, num_inference_steps=steps, generator=generator, output_type="np").images

    base = run()
    reference.load_lora_weights(lora)
    np.testing.assert_allclose(out, run(), atol=1e-5)
    assert np.abs(out - base).max() > 1e-3
