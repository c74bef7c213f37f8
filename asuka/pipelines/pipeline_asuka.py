# Copyright 2026 The asuka authors. Apache-2.0.
"""ASUKA inpainting on a frozen SD-1.5-inpainting backbone.

This module ships to the Hub as remote code, so it imports only torch, diffusers, numpy and PIL.
"""

import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
    retrieve_timesteps,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.dynamic_modules_utils import get_relative_import_files

from .cached_attention import cache_constant_conditioning  # perf: cross-attention K/V once per call


ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | list[Any]


@dataclass
class AsukaPipelineOutput(BaseOutput):
    """Output of the ASUKA pipelines.

    Args:
        images: the inpainted images at the input's size (`pil` list, `np` array or `pt` tensor), or latents.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Input standardisation, shared by the ASUKA pipelines.
# ---------------------------------------------------------------------------------------------


def _load_pil(value: Any, what: str) -> PIL.Image.Image:
    """Open a path or check a PIL image, turning unreadable data into a ValueError."""
    if isinstance(value, (str, os.PathLike)):
        try:
            with PIL.Image.open(value) as img:
                img.load()
                return img.copy()
        except (OSError, PIL.UnidentifiedImageError, SyntaxError) as err:
            raise ValueError(f"`{what}`: could not read an image from {str(value)!r} ({err}).") from err
    try:
        value.load()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"`{what}`: the PIL image could not be decoded ({err}).") from err
    return value


def image_to_tensor(image: ImageInput) -> torch.Tensor:
    """Standardise `image` to a float32 tensor (B, 3, H, W) in [0, 1].

    Accepts a PIL image or path, a numpy array (H, W, C) / (B, H, W, C) as uint8 or float in [0, 1], a tensor
    (C, H, W) / (B, C, H, W) in [0, 1] (values below 0 are read as diffusers' [-1, 1] range), or a list of these.
    """
    accepted = "a PIL image, a path, a numpy array (H,W,C)/(B,H,W,C), a tensor (C,H,W)/(B,C,H,W), or a list of them"
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError(f"`image` is an empty list; expected {accepted}.")
        parts = [image_to_tensor(item) for item in image]
        if len({tuple(p.shape[-2:]) for p in parts}) != 1:
            raise ValueError(
                f"All images of a batch must have the same size; got {[tuple(p.shape[-2:]) for p in parts]}."
            )
        return torch.cat(parts)
    if isinstance(image, (str, os.PathLike, PIL.Image.Image)):
        pil = _load_pil(image, "image")
        if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(pil, dtype=np.float32) / 65535.0
            array = np.repeat(array[..., None], 3, axis=-1)
        else:
            array = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    elif isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"`image` numpy array has shape {image.shape}; expected (H,W,C) or (B,H,W,C) with C in 1, 3, 4."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(array[..., :3] if array.shape[-1] == 4 else array)).permute(
            0, 3, 1, 2
        )
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
            raise ValueError(
                f"`image` tensor has shape {tuple(image.shape)}; expected (C,H,W) or (B,C,H,W) with C in 1, 3."
            )
        if tensor.numel() and tensor.min() < 0:
            tensor = (tensor + 1) / 2
    else:
        raise ValueError(f"`image` has type {type(image).__name__}; expected {accepted}.")
    if tensor.shape[1] == 1:
        tensor = tensor.repeat(1, 3, 1, 1)
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise ValueError(f"`image` has zero size {tuple(tensor.shape[-2:])}; expected at least 1x1 pixels.")
    if not torch.isfinite(tensor).all():
        raise ValueError("`image` contains NaN or infinite values.")
    return tensor.clamp(0, 1)


def mask_to_tensor(mask_image: ImageInput, image_size: tuple[int, int]) -> torch.Tensor:
    """Standardise `mask_image` to a binary float32 tensor (B, 1, H, W) at `image_size` (1 = repaint).

    White (> 0.5) means repaint. A mask of the same aspect ratio but another size is resized (nearest); a mask of a
    different aspect ratio is refused.
    """
    accepted = (
        "a PIL image, a path, a numpy array (H,W)/(B,H,W)/(B,H,W,1), a tensor (H,W)/(1,H,W)/(B,1,H,W), or a list"
    )
    if isinstance(mask_image, (list, tuple)):
        if len(mask_image) == 0:
            raise ValueError(f"`mask_image` is an empty list; expected {accepted}.")
        return torch.cat([mask_to_tensor(m, image_size) for m in mask_image])
    if isinstance(mask_image, (str, os.PathLike, PIL.Image.Image)):
        pil = _load_pil(mask_image, "mask_image")
        tensor = torch.from_numpy(np.asarray(pil.convert("L"), dtype=np.float32) / 255.0)[None, None]
    elif isinstance(mask_image, np.ndarray):
        array = (
            mask_image.astype(np.float32) / 255.0 if mask_image.dtype == np.uint8 else mask_image.astype(np.float32)
        )
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"`mask_image` numpy array has shape {mask_image.shape}; expected {accepted}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))[:, None]
    elif isinstance(mask_image, torch.Tensor):
        tensor = mask_image.detach().float().cpu()
        if tensor.ndim == 2:
            tensor = tensor[None, None]
        elif tensor.ndim == 3:
            tensor = tensor[:, None] if tensor.shape[0] != 1 else tensor[None]
        if tensor.ndim != 4 or tensor.shape[1] != 1:
            raise ValueError(f"`mask_image` tensor has shape {tuple(mask_image.shape)}; expected {accepted}.")
    else:
        raise ValueError(f"`mask_image` has type {type(mask_image).__name__}; expected {accepted}.")
    mh, mw = tensor.shape[-2:]
    ih, iw = image_size
    if mh == 0 or mw == 0:
        raise ValueError(f"`mask_image` has zero size {(mh, mw)}; expected the image's size {image_size}.")
    if (mh, mw) != (ih, iw):
        if abs(mw * ih - mh * iw) > 0.01 * max(mw * ih, mh * iw):
            raise ValueError(
                f"`mask_image` is {mw}x{mh} but `image` is {iw}x{ih}: their aspect ratios differ. "
                "Pass a mask of the image's size (or the same aspect ratio)."
            )
        tensor = F.interpolate(tensor, size=(ih, iw), mode="nearest")
    if not torch.isfinite(tensor).all():
        raise ValueError("`mask_image` contains NaN or infinite values.")
    return (tensor > 0.5).float()


def repeat_to_batch(tensor: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """Expand a batch of 1 to `batch_size`; refuse any other mismatch."""
    if tensor.shape[0] == batch_size:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch_size, *tensor.shape[1:])
    raise ValueError(f"`{what}` has batch size {tensor.shape[0]}; expected 1 or {batch_size} (one per image).")


def standardise_inputs(image: ImageInput, mask_image: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (B, 3, H, W) in [0, 1] and their binary holes (B, 1, H, W), one mask per image."""
    images = image_to_tensor(image)
    holes = mask_to_tensor(mask_image, tuple(images.shape[-2:]))
    return images, repeat_to_batch(holes, images.shape[0], "mask_image")


def unchanged_output(images: torch.Tensor, num_images_per_prompt: int, output_type: str, return_dict: bool):
    """What a pipeline returns for an empty mask: the input itself, in the requested format."""
    result = to_output_type(images.repeat_interleave(num_images_per_prompt, dim=0), output_type)
    return AsukaPipelineOutput(images=result) if return_dict else (result,)


# ---------------------------------------------------------------------------------------------
# Working region: process a crop around the mask at the backbone's resolution, paste back the hole.
# ---------------------------------------------------------------------------------------------


@dataclass
class WorkingRegion:
    """Where the backbone runs: the crop box (x0, y0, x1, y1) in input pixels and the working size (w, h)."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @property
    def is_identity(self) -> bool:
        x0, y0, x1, y1 = self.box
        return (x1 - x0, y1 - y0) == self.size


def plan_working_region(
    hole: torch.Tensor, working_resolution: int, multiple: int, padding_mask_crop: int | None = None
) -> WorkingRegion:
    """Choose the crop and working size for a (B, 1, H, W) hole mask.

    The whole image is used when it fits the working resolution; otherwise (or with `padding_mask_crop`) a crop around
    the union of the holes, with context, of at least the working resolution. The crop is then scaled so that its long
    side equals `working_resolution` and both sides are multiples of `multiple` (as the backbone requires).
    """
    height, width = hole.shape[-2:]
    x0, y0, x1, y1 = 0, 0, width, height
    if padding_mask_crop is not None or max(height, width) > working_resolution:
        ys, xs = torch.nonzero(hole.amax(dim=(0, 1)), as_tuple=True)
        bx0, bx1, by0, by1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        pad = padding_mask_crop if padding_mask_crop is not None else max(bx1 - bx0, by1 - by0) // 2
        cw = min(width, max(bx1 - bx0 + 2 * pad, working_resolution))
        ch = min(height, max(by1 - by0 + 2 * pad, working_resolution))
        x0 = min(max((bx0 + bx1 - cw) // 2, 0), width - cw)
        y0 = min(max((by0 + by1 - ch) // 2, 0), height - ch)
        x1, y1 = x0 + cw, y0 + ch
    crop_w, crop_h = x1 - x0, y1 - y0
    scale = working_resolution / max(crop_w, crop_h)
    if crop_w % multiple == 0 and crop_h % multiple == 0 and max(crop_w, crop_h) <= working_resolution:
        scale = 1.0  # already a valid size: run without resampling
    work_w = max(multiple, int(round(crop_w * scale / multiple)) * multiple)
    work_h = max(multiple, int(round(crop_h * scale / multiple)) * multiple)
    return WorkingRegion(box=(x0, y0, x1, y1), size=(work_w, work_h))


def crop_to_working(
    image: torch.Tensor, hole: torch.Tensor, region: WorkingRegion
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop and resize image ([0, 1]) and hole to the working size; the working hole covers every input hole pixel."""
    x0, y0, x1, y1 = region.box
    image, hole = image[..., y0:y1, x0:x1], hole[..., y0:y1, x0:x1]
    if region.is_identity:
        return image, hole
    work_w, work_h = region.size
    image = F.interpolate(image, size=(work_h, work_w), mode="bicubic", antialias=True, align_corners=False)
    hole = (F.interpolate(hole, size=(work_h, work_w), mode="area") > 0).float()
    return image.clamp(0, 1), hole


def paste_from_working(
    generated: torch.Tensor, image: torch.Tensor, hole: torch.Tensor, region: WorkingRegion, keep_unmasked: bool
) -> torch.Tensor:
    """Resize `generated` ([0, 1], working size) back to its crop and paste it into the full-resolution `image`.

    With `keep_unmasked`, only pixels inside the binary `hole` change, so every other pixel is the input's, exactly.
    """
    x0, y0, x1, y1 = region.box
    if not region.is_identity:
        generated = F.interpolate(
            generated, size=(y1 - y0, x1 - x0), mode="bicubic", antialias=True, align_corners=False
        )
    generated = generated.clamp(0, 1).to(image.dtype)
    out = image.clone()
    if keep_unmasked:
        out[..., y0:y1, x0:x1] = torch.where(hole[..., y0:y1, x0:x1] > 0.5, generated, image[..., y0:y1, x0:x1])
    else:
        out[..., y0:y1, x0:x1] = generated
    return out


def to_output_type(images: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Convert (B, 3, H, W) images in [0, 1] to `pt`, `np` (B, H, W, 3) or a list of PIL images."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).float().cpu().numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def finish_output(
    generated: torch.Tensor,
    images: torch.Tensor,
    holes: torch.Tensor,
    region: WorkingRegion,
    keep_unmasked: bool,
    num_images_per_prompt: int,
    output_type: str,
    return_dict: bool,
):
    """Paste `generated` (working size, [0, 1], `num_images_per_prompt` per input) into the inputs and convert."""
    images = images.repeat_interleave(num_images_per_prompt, dim=0)
    holes = holes.repeat_interleave(num_images_per_prompt, dim=0)
    result = to_output_type(paste_from_working(generated, images, holes, region, keep_unmasked), output_type)
    return AsukaPipelineOutput(images=result) if return_dict else (result,)


class AsukaPipeline(DiffusionPipeline, StableDiffusionMixin):
    r"""ASUKA inpainting with a frozen SD-1.5-inpainting UNet.

    The text conditioning is replaced by `aligner(mae.prior(image, mask))`: an MAE that sees only the unmasked pixels
    gives a prior that tells the backbone what belongs in the hole, without hallucinating objects. The
    mask-conditioned `decoder` blends the real unmasked pixels into the decoding so colours stay consistent.

    Args:
        vae: encodes the masked image (and decodes when `decoder` is None).
        unet: the 9-channel SD-inpainting `UNet2DConditionModel` (frozen).
        scheduler: any diffusers scheduler compatible with the UNet.
        mae: `AsukaMAE`, the masked autoencoder that gives the prior.
        aligner: `AsukaAligner`, maps the prior to the UNet's cross-attention space.
        decoder: `AsukaDecoder`, diffusers' `AsymmetricAutoencoderKL`, or None for the plain VAE decoder.
    """

    model_cpu_offload_seq = "mae->aligner->vae->unet->decoder"
    _optional_components = ["decoder"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "mask", "masked_image_latents"]

    # The latent preparation is diffusers' own, so results match StableDiffusionInpaintPipeline exactly.
    prepare_latents = StableDiffusionInpaintPipeline.prepare_latents
    prepare_mask_latents = StableDiffusionInpaintPipeline.prepare_mask_latents
    _encode_vae_image = StableDiffusionInpaintPipeline._encode_vae_image
    prepare_extra_step_kwargs = StableDiffusionInpaintPipeline.prepare_extra_step_kwargs

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        mae: torch.nn.Module,
        aligner: torch.nn.Module,
        decoder: torch.nn.Module | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, mae=mae, aligner=aligner, decoder=decoder)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def default_working_resolution(self) -> int:
        """The backbone's native resolution (512 for SD-1.5)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def check_inputs(
        self,
        num_inference_steps: int,
        output_type: str,
        guidance_scale: float,
        negative_prompt_embeds: torch.Tensor | None,
        callback_on_step_end_tensor_inputs: list[str],
        working_resolution: int,
    ) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` is {output_type!r}; expected one of {OUTPUT_TYPES}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` is {num_inference_steps!r}; expected a positive integer.")
        if guidance_scale > 1.0 and negative_prompt_embeds is None:
            raise ValueError(
                "`guidance_scale` > 1 needs `negative_prompt_embeds` (ASUKA has no text prompt to negate)."
            )
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {unknown}; expected names in {self._callback_tensor_inputs}."
            )
        if working_resolution < self.vae_scale_factor:
            raise ValueError(
                f"`working_resolution` is {working_resolution}; expected at least {self.vae_scale_factor}."
            )

    @torch.no_grad()
    def encode_prior(
        self, image: torch.Tensor, hole: torch.Tensor, condition_weight: float | None = None
    ) -> torch.Tensor:
        """ASUKA's conditioning: `aligner(mae.prior(image, hole))` for images in [0, 1] and holes (1 = repaint)."""
        prior = self.mae.prior(image.to(self.mae.device, self.mae.dtype), hole.to(self.mae.device, self.mae.dtype))
        tokens = self.aligner(prior.to(self.aligner.dtype), condition_weight=condition_weight).tokens
        return tokens.to(self.unet.dtype)

    def decode_latents(
        self, latents: torch.Tensor, image: torch.Tensor, hole: torch.Tensor, generator=None
    ) -> torch.Tensor:
        """Decode latents to [-1, 1] pixels with the mask-conditioned decoder (or the plain VAE when it is None).

        `image` ([-1, 1]) and `hole` are at the working size; the decoder blends their unmasked pixels in.
        """
        latents = latents / self.vae.config.scaling_factor
        if self.decoder is None:
            return self.vae.decode(latents, return_dict=False, generator=generator)[0]
        image = image.to(latents.device, self.decoder.dtype)
        hole = hole.to(latents.device, self.decoder.dtype)
        if isinstance(self.decoder, AsymmetricAutoencoderKL):
            return self.decoder.decode(latents.to(self.decoder.dtype), image=image, mask=hole, return_dict=False)[0]
        return self.decoder(latents.to(self.decoder.dtype), image, hole, return_dict=False)[0]

    @torch.no_grad()
    def mae_reconstruction(self, image: ImageInput, mask_image: ImageInput) -> list[PIL.Image.Image]:
        """The MAE's own pixel estimate ("what the prior thinks"), pasted into the hole at the input's size."""
        image, hole = standardise_inputs(image, mask_image)
        recon = self.mae.reconstruct(
            image.to(self.mae.device, self.mae.dtype), hole.to(self.mae.device, self.mae.dtype)
        )
        recon = F.interpolate(recon.float().cpu(), size=image.shape[-2:], mode="bicubic", align_corners=False).clamp(
            0, 1
        )
        return to_output_type(torch.where(hole > 0.5, recon, image), "pil")

    @torch.no_grad()
    @cache_constant_conditioning("unet")  # perf: cross-attention K/V once per call, restored afterwards
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        guidance_scale: float = 1.0,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        condition_weight: float | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        keep_unmasked: bool = True,
        working_resolution: int | None = None,
        padding_mask_crop: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""Inpaint `image` where `mask_image` is white.

        Args:
            image: image(s) to inpaint, of any size (PIL, numpy, tensor in [0, 1], or a list).
            mask_image: white = repaint. Same size as `image`, or the same aspect ratio.
            num_inference_steps: denoising steps.
            timesteps: custom timesteps for schedulers that accept them.
            guidance_scale: classifier-free guidance; the paper uses none (1.0). Above 1 needs `negative_prompt_embeds`.
            prompt_embeds: overrides ASUKA's conditioning (e.g. CLIP text embeddings for the SD baselines).
            negative_prompt_embeds: the unconditional embeddings for guidance.
            condition_weight: pulls the aligner output towards its null embedding (aligners that hold one).
            num_images_per_prompt: samples per input image.
            eta: DDIM's eta.
            generator: torch generator(s) for determinism.
            latents: initial noise latents at the working size.
            keep_unmasked: paste only the hole back, so every unmasked pixel equals the input's exactly.
            working_resolution: long side of the size the backbone runs at (default: its native resolution).
                Larger images are processed on a crop around the mask.
            padding_mask_crop: always work on a crop around the mask with this many pixels of context.
            output_type: `pil`, `np`, `pt` or `latent`.
            return_dict: return an `AsukaPipelineOutput` instead of a tuple.
            callback_on_step_end: called as `fn(pipe, step, timestep, tensors)` after each step; may replace tensors.
            callback_on_step_end_tensor_inputs: which tensors the callback receives.
        """
        # 1. Check and standardise the inputs
        working_resolution = working_resolution or self.default_working_resolution
        self.check_inputs(
            num_inference_steps,
            output_type,
            guidance_scale,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
            working_resolution,
        )
        self._guidance_scale = guidance_scale
        self._interrupt = False
        input_image, hole = standardise_inputs(image, mask_image)
        batch_size = input_image.shape[0]
        total = batch_size * num_images_per_prompt
        device = self._execution_device

        # 2. An empty mask has nothing to inpaint: return the input untouched
        if not hole.any() and output_type != "latent":
            self.maybe_free_model_hooks()
            return unchanged_output(input_image, num_images_per_prompt, output_type, return_dict)

        # 3. Cut the working region (the whole image, or a crop around the mask) at the backbone's resolution
        region = plan_working_region(hole, working_resolution, self.vae_scale_factor, padding_mask_crop)
        work_image, work_hole = crop_to_working(input_image, hole, region)
        init_image = (work_image * 2 - 1).to(device)
        work_hole = work_hole.to(device)
        work_w, work_h = region.size

        # 4. Conditioning: the aligned MAE prior, unless embeddings are given
        if prompt_embeds is None:
            prompt_embeds = self.encode_prior(work_image, work_hole.cpu(), condition_weight)
        prompt_embeds = repeat_to_batch(prompt_embeds.to(device, self.unet.dtype), batch_size, "prompt_embeds")
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if self.do_classifier_free_guidance:
            negative = repeat_to_batch(
                negative_prompt_embeds.to(device, self.unet.dtype), batch_size, "negative_prompt_embeds"
            )
            prompt_embeds = torch.cat([negative.repeat_interleave(num_images_per_prompt, dim=0), prompt_embeds])

        # 5. Timesteps
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)

        # 6. Initial noise latents and the mask / masked-image latents (diffusers' own preparation)
        num_channels_latents = self.vae.config.latent_channels
        if latents is not None:
            expected = (total, num_channels_latents, work_h // self.vae_scale_factor, work_w // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"`latents` has shape {tuple(latents.shape)}; expected {expected} for this input.")
        latents = self.prepare_latents(
            total, num_channels_latents, work_h, work_w, prompt_embeds.dtype, device, generator, latents
        )[0]
        masked_image = init_image * (work_hole < 0.5)
        mask, masked_image_latents = self.prepare_mask_latents(
            work_hole, masked_image, batch_size, work_h, work_w, prompt_embeds.dtype, device, generator, False
        )
        mask = mask.repeat_interleave(num_images_per_prompt, dim=0)
        masked_image_latents = masked_image_latents.repeat_interleave(num_images_per_prompt, dim=0)
        if self.unet.config.in_channels != num_channels_latents + mask.shape[1] + masked_image_latents.shape[1]:
            raise ValueError(
                f"`unet` takes {self.unet.config.in_channels} input channels; ASUKA needs a 9-channel inpainting UNet."
            )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 7. Denoising loop
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                cond = torch.cat([mask, masked_image_latents], dim=1)
                if self.do_classifier_free_guidance:
                    cond = torch.cat([cond] * 2)
                latent_model_input = torch.cat([latent_model_input, cond], dim=1)
                noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[
                    0
                ]
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    step_tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "mask": mask,
                        "masked_image_latents": masked_image_latents,
                    }
                    callback_kwargs = {k: step_tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    mask = callback_outputs.pop("mask", mask)
                    masked_image_latents = callback_outputs.pop("masked_image_latents", masked_image_latents)
                progress_bar.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return AsukaPipelineOutput(images=latents) if return_dict else (latents,)

        # 8. Decode with the mask-conditioned decoder
        decoded = self.decode_latents(
            latents,
            init_image.repeat_interleave(num_images_per_prompt, dim=0),
            work_hole.repeat_interleave(num_images_per_prompt, dim=0),
            generator,
        )
        generated = (decoded.float().cpu() / 2 + 0.5).clamp(0, 1)

        # 9. Paste back into the full-resolution input and convert
        self.maybe_free_model_hooks()
        return finish_output(
            generated, input_image, hole, region, keep_unmasked, num_images_per_prompt, output_type, return_dict
        )

    def save_pretrained(self, save_directory: str | os.PathLike, hub_format: bool = False, **kwargs):
        """Save every component; with `hub_format=True`, also the code so the folder loads without `asuka`.

        A hub-format folder loads with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: its
        `model_index.json` names `[file, Class]` for the pipeline and the ASUKA components, and the files sit beside
        the weights.
        """
        super().save_pretrained(save_directory, **kwargs)
        if hub_format:
            write_remote_code(self, save_directory)


def write_remote_code(pipeline: DiffusionPipeline, save_directory: str | os.PathLike) -> None:
    """Copy the pipeline's and its custom components' source files into a saved folder and point
    `model_index.json` at them, so `trust_remote_code=True` can load it anywhere."""
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    pipe_file = inspect.getsourcefile(type(pipeline))
    shutil.copyfile(pipe_file, os.path.join(save_directory, os.path.basename(pipe_file)))
    for sibling in get_relative_import_files(pipe_file):  # modules it imports relatively (cached_attention.py)
        shutil.copyfile(sibling, os.path.join(save_directory, os.path.basename(sibling)))
    index["_class_name"] = [os.path.splitext(os.path.basename(pipe_file))[0], type(pipeline).__name__]
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] in (None, "diffusers", "transformers"):
            continue
        component = getattr(pipeline, name)
        source = inspect.getsourcefile(type(component))
        shutil.copyfile(source, os.path.join(save_directory, name, os.path.basename(source)))
        index[name] = [os.path.splitext(os.path.basename(source))[0], type(component).__name__]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
