"""FLUX.1-Fill methods: "asuka-flux" (AsukaFluxPipeline) and "flux-fill" (the plain backbone, the release's baseline).

`asuka-flux` accepts as `model`: a light repo or folder (docs/hub.md: `python -m asuka.convert asuka-flux` writes
one), whose backbone comes from the FLUX repo it points to; a folder saved with `AsukaFluxPipeline.save_pretrained`;
a folder or Hub repo of ASUKA components alone; or the authors' release (`yikaiwang/ASUKA-FLUX.1-Fill`, the
default, or a local copy), which is converted once into the asuka cache. For the last two the FLUX backbone comes
from `ASUKA_FLUX_BASE` (default `black-forest-labs/FLUX.1-Fill-dev`, gated: accept its licence and log in).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from asuka.defaults import ASUKA_FLUX_RELEASE_REPO, FLUX_FILL_REPO
from asuka.methods import registry
from asuka.methods.baseline import run_baseline
from asuka.methods.loading import ready_pipeline
from asuka.methods.memory import Configuration, loading_kwargs, place_pipeline
from asuka.methods.running import InpaintRequest, InpaintResult, ProgressCallback, seeded_generator, step_callback
from asuka.methods.sd import ASUKA_PAPER


# FLUX.1-Fill's default guidance (the ASUKA release uses it too).
FLUX_GUIDANCE = 30.0
FLUX_REQUIREMENTS = (
    "~35 GB of downloads; a CUDA GPU: 28.4 GB in bfloat16, 8 GB and up with --quantize/--offload (docs/flux.md)"
)


def asuka_cache_dir() -> Path:
    """Where converted checkpoints are kept: `$ASUKA_CACHE`, else `$HF_HOME/asuka`."""
    from huggingface_hub.constants import HF_HOME

    return Path(os.environ.get("ASUKA_CACHE", Path(HF_HOME) / "asuka"))


def converted_release(model: str, base: str) -> Path:
    """The authors' release at `model` (Hub repo or folder) converted into the cache, once for each FLUX repo `base`
    (the converter compares the release's masked-image encoder with the encoder of `base`'s VAE); again when the
    cached conversion predates the MAE's `input_preprocessing` (it would load as "visible", not the release's).
    """
    from asuka.convert.asuka_flux import convert_asuka_flux

    key = hashlib.sha256(f"{model}\n{base}".encode()).hexdigest()[:12]
    out = asuka_cache_dir() / f"asuka-flux-{key}"
    mae_config = out / "mae" / "config.json"
    current = (out / "decoder" / "config.json").is_file() and mae_config.is_file()
    if not current or "input_preprocessing" not in json.loads(mae_config.read_text()):
        convert_asuka_flux(model, out, overwrite=True, backbone=base)
    return out


def is_release(model: str) -> bool:
    """Whether `model` is the authors' release (its Hub id, or a folder holding its `mae_300.pth`)."""
    return model == ASUKA_FLUX_RELEASE_REPO or (Path(model) / "mae_300.pth").is_file()


def load_asuka_flux(model: str, device: str, dtype: torch.dtype, memory: Configuration | None = None) -> Any:
    """AsukaFluxPipeline from any form of `model` the module docstring lists, each form checked once (a Hub repo
    is asked for its `model_index.json` once); with `memory`, its transformer's weight format and the offloading
    (`asuka.methods.memory`)."""
    from asuka import AsukaFluxPipeline
    from asuka.pipelines.hub_light import is_light_repo, load_light_pipeline

    base = os.environ.get("ASUKA_FLUX_BASE", FLUX_FILL_REPO)
    memory = memory or Configuration()
    kwargs = {"torch_dtype": dtype, **loading_kwargs(memory, dtype, base)}
    if is_release(model):
        pipeline = AsukaFluxPipeline.from_pretrained(base, asuka=converted_release(model, base), **kwargs)
    elif is_light_repo(model):
        pipeline = load_light_pipeline(AsukaFluxPipeline, model, **kwargs)
    elif (Path(model) / "model_index.json").is_file():  # saved with save_pretrained
        pipeline = AsukaFluxPipeline.from_pretrained(model, **kwargs)
    else:  # ASUKA's components alone, on the FLUX backbone
        pipeline = AsukaFluxPipeline.from_pretrained(base, asuka=model, **kwargs)
    return place_pipeline(pipeline, memory, device)


def run_asuka_flux(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        generator=seeded_generator(request.seed),
        condition_weight=request.condition_weight,
        keep_unmasked=request.keep_unmasked,
        mae_input_preprocessing=request.mae_input_preprocessing,
        callback_on_step_end=step_callback(progress, request.steps),
    )
    reconstruction = (
        pipeline.mae_reconstruction(request.image, request.mask, request.mae_input_preprocessing)[0]
        if request.reconstruction
        else None
    )
    return InpaintResult(image=output.images[0], reconstruction=reconstruction)


def load_flux_fill(model: str, device: str, dtype: torch.dtype) -> Any:
    from diffusers import FluxFillPipeline

    return ready_pipeline(FluxFillPipeline.from_pretrained(model, torch_dtype=dtype), device)


def run_flux_fill(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    """The plain FLUX.1-Fill backbone with an empty prompt, on AsukaFluxPipeline's working region.

    The working resolution is the backbone's default size (1024 for FLUX.1-Fill, as AsukaFluxPipeline's
    `working_resolution`).
    """
    from asuka.pipelines.backbones import FLUX_FILL as spec

    if pipeline.text_encoder is None:  # the tiny backbone has no text encoders: an all-zero "empty prompt"
        prompt = spec.zero_conditioning(pipeline.transformer.config, 1)
    else:
        prompt = dict(prompt="")

    working_resolution = pipeline.default_sample_size * pipeline.vae_scale_factor
    return run_baseline(
        pipeline,
        request,
        progress,
        prompt=prompt,
        working_resolution=working_resolution,
        multiple=pipeline.vae_scale_factor * spec.latent_packing,  # whole latent patches
    )


# The FLUX.1-Fill-dev backbone alone (declared like sd.py's "sd" backbone: the same fields, its own values), and ASUKA
# on it: the same guidance, GPU and gated backbone; its own name, text, weights and code.
FLUX_FILL = registry.MethodSpec(
    name="flux-fill",
    label="FLUX.1-Fill (backbone)",
    default_model=FLUX_FILL_REPO,
    load=load_flux_fill,
    run=run_flux_fill,
    tiny_kind="flux-backbone",
    description="The frozen FLUX.1-Fill-dev backbone alone, with an empty prompt.",
    uses_guidance=True,
    default_steps=50,
    default_guidance=FLUX_GUIDANCE,
    needs_gpu=True,
    gated_repo=FLUX_FILL_REPO,
    requirements=FLUX_REQUIREMENTS,
    gpu_seconds_per_step=0.5,
)
registry.register_method(
    dataclasses.replace(
        FLUX_FILL,
        name="asuka-flux",
        label="ASUKA-FLUX",
        description="ASUKA on FLUX.1-Fill-dev (the authors' release): MAE prior instead of T5/CLIP, "
        "mask-conditioned decoder.",
        backbone=FLUX_FILL.name,
        uses_condition_weight=True,
        default_model=ASUKA_FLUX_RELEASE_REPO,
        load=load_asuka_flux,
        run=run_asuka_flux,
        tiny_kind="flux",
        paper=ASUKA_PAPER,
        gpu_seconds_per_step=0.6,  # the backbone's step and the decoder's larger pass
    )
)
registry.register_method(FLUX_FILL)
