"""Registry entries for FLUX.1-Fill: "asuka-flux" (AsukaFluxPipeline) and "flux-fill" (the plain backbone).

Imported lazily by `asuka.registry` (see its `PROVIDER_MODULES`).

`asuka-flux` accepts as `model`: a folder saved with `AsukaFluxPipeline.save_pretrained`; a folder or Hub
repo of converted ASUKA components (`python -m asuka.convert asuka-flux`); or the authors' release
(`yikaiwang/ASUKA-FLUX.1-Fill`, the default, or a local copy), which is converted once into the
asuka cache. The FLUX backbone comes from `ASUKA_FLUX_BASE` (default `black-forest-labs/FLUX.1-Fill-dev`,
gated: accept its licence and log in).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from asuka.registry import (
    InpaintRequest,
    InpaintResult,
    MethodSpec,
    ProgressCallback,
    _generator,
    backbone_result,
    register_method,
    step_callback,
)


FLUX_FILL_REPO = "black-forest-labs/FLUX.1-Fill-dev"
ASUKA_FLUX_RELEASE = "yikaiwang/ASUKA-FLUX.1-Fill"
#: Long side the plain FLUX-Fill backbone works at; bigger inputs are downscaled and the hole pasted back.
FLUX_MAX_SIDE = 1024
#: FLUX.1-Fill's default guidance (the ASUKA release uses it too).
FLUX_GUIDANCE = 30.0


def _cache_dir() -> Path:
    from huggingface_hub.constants import HF_HOME

    return Path(os.environ.get("ASUKA_CACHE", Path(HF_HOME) / "asuka"))


def _converted_release(model: str) -> Path:
    """The release at `model` (Hub repo or folder) converted into the cache, once."""
    from asuka.convert.release import convert_asuka_flux

    out = _cache_dir() / f"asuka-flux-{hashlib.sha256(str(model).encode()).hexdigest()[:12]}"
    if not (out / "decoder" / "config.json").is_file():
        convert_asuka_flux(model, out, overwrite=True)
    return out


def _is_release(model: str) -> bool:
    return model == ASUKA_FLUX_RELEASE or (Path(model) / "mae_300.pth").is_file()


def _load_asuka_flux(model: str | None, device: str, dtype: torch.dtype, tiny: bool) -> Any:
    if tiny:
        from asuka.testing import make_tiny_pipeline

        pipeline = make_tiny_pipeline("flux")
    else:
        from asuka import AsukaFluxPipeline

        if (Path(model) / "model_index.json").is_file():
            pipeline = AsukaFluxPipeline.from_pretrained(model, torch_dtype=dtype)
        else:
            asuka = _converted_release(model) if _is_release(model) else model
            base = os.environ.get("ASUKA_FLUX_BASE", FLUX_FILL_REPO)
            pipeline = AsukaFluxPipeline.from_pretrained(base, asuka=asuka, torch_dtype=dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _run_asuka_flux(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    output = pipeline(
        image=request.image,
        mask_image=request.mask,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else FLUX_GUIDANCE,
        generator=_generator(request.seed),
        condition_weight=request.condition_weight,
        keep_unmasked=request.keep_unmasked,
        callback_on_step_end=step_callback(progress, request.steps),
    )
    reconstruction = pipeline.mae_reconstruction(request.image, request.mask)
    if isinstance(reconstruction, list):
        reconstruction = reconstruction[0]
    return InpaintResult(image=output.images[0], reconstruction=reconstruction)


def _load_flux_fill(model: str | None, device: str, dtype: torch.dtype, tiny: bool) -> Any:
    if tiny:
        from asuka.testing import make_tiny_pipeline

        pipeline = make_tiny_pipeline("flux-backbone")
    else:
        from diffusers import FluxFillPipeline

        pipeline = FluxFillPipeline.from_pretrained(model, torch_dtype=dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _run_flux_fill(pipeline: Any, request: InpaintRequest, progress: ProgressCallback | None) -> InpaintResult:
    """The plain FLUX.1-Fill backbone with an empty prompt (the release's "FLUX-Fill" baseline)."""
    width, height = request.image.size
    multiple = pipeline.vae_scale_factor * 2
    scale = min(1.0, FLUX_MAX_SIDE / max(width, height))
    work_w, work_h = (
        max(multiple, int(width * scale) // multiple * multiple),
        max(multiple, int(height * scale) // multiple * multiple),
    )
    if pipeline.text_encoder is None:  # the tiny backbone has no text encoders: an all-zero "empty prompt"
        transformer = pipeline.transformer.config
        prompt = dict(
            prompt_embeds=torch.zeros(1, 1, transformer.joint_attention_dim),
            pooled_prompt_embeds=torch.zeros(1, transformer.pooled_projection_dim),
        )
    else:
        prompt = dict(prompt="")
    output = pipeline(
        **prompt,
        image=request.image,
        mask_image=request.mask,
        height=work_h,
        width=work_w,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else FLUX_GUIDANCE,
        generator=_generator(request.seed),
        callback_on_step_end=step_callback(progress, request.steps),
    )
    return backbone_result(output, request)


register_method(
    MethodSpec(
        name="asuka-flux",
        label="ASUKA-FLUX",
        default_model=ASUKA_FLUX_RELEASE,
        load=_load_asuka_flux,
        run=_run_asuka_flux,
        uses_guidance=True,
        uses_condition_weight=True,
        default_steps=50,
        default_guidance=FLUX_GUIDANCE,
        backbone="flux-fill",
        description="ASUKA on FLUX.1-Fill-dev (the authors' release): MAE prior instead of T5/CLIP, mask-conditioned decoder.",
    )
)
register_method(
    MethodSpec(
        name="flux-fill",
        label="FLUX.1-Fill (backbone)",
        default_model=FLUX_FILL_REPO,
        load=_load_flux_fill,
        run=_run_flux_fill,
        uses_guidance=True,
        uses_condition_weight=False,
        default_steps=50,
        default_guidance=FLUX_GUIDANCE,
        description="The frozen FLUX.1-Fill-dev backbone alone, with an empty prompt.",
    )
)
