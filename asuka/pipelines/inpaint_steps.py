# Copyright 2026 The asuka authors. Apache-2.0.
"""The image steps every asuka pipeline shares, in the order a `__call__` runs them: pure functions of tensors.

1. `standardise_inputs`: any image/mask input to float tensors (paths and PIL images through `asuka.imageio`).
2. `unchanged_output`: an empty mask returns the input untouched.
3. `cut_working_region` (`plan_working_region` + `crop_to_working`): the crop around the mask at the backbone's
   resolution.
4. `finish_output`: paste the generated crop back into the full-resolution input and convert to `output_type`.

`mae_reconstruction` pastes an MAE's own estimate into the hole, for previews. The pipelines' call state (step
callbacks, guidance, shared input checks) lives in `pipeline_mixins`.

This module ships to the Hub as remote code next to the pipeline files (see `hub_export`), so it imports only
torch, diffusers, numpy, PIL and its relative siblings.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from ..imageio import load_image, load_mask


ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | str | list[Any]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class AsukaPipelineOutput(BaseOutput):
    """Output of the ASUKA pipelines.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            The inpainted images at the input's size (`pil` list, `np` array or `pt` tensor), or latents.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------
# 1. Input standardisation
# ---------------------------------------------------------------------------------------------


def _read(
    load: Callable[[Any], PIL.Image.Image], value: str | os.PathLike | PIL.Image.Image, what: str
) -> PIL.Image.Image:
    """`load(value)` (`asuka.imageio.load_image` or `load_mask`), its errors naming the argument `what`."""
    try:
        return load(value)
    except ValueError as err:
        source = repr(str(value)) if isinstance(value, (str, os.PathLike)) else "the PIL image"
        raise ValueError(f"`{what}`: could not read an image from {source} ({err}).") from err


def image_to_tensor(image: ImageInput) -> torch.Tensor:
    """Standardise `image` to a float32 tensor (B, 3, H, W) in [0, 1].

    Accepts a PIL image or path (read by `asuka.imageio.load_image`), a numpy array (H, W, C) / (B, H, W, C) as
    uint8 or float in [0, 1], a tensor (C, H, W) / (B, C, H, W) in [0, 1] (values below 0 are read as diffusers'
    [-1, 1] range), or a list of these.
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
        array = np.asarray(_read(load_image, image, "image"), dtype=np.float32) / 255.0
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
        array = np.ascontiguousarray(array[..., :3] if array.shape[-1] == 4 else array)
        tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
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

    White (> 0.5) means repaint; paths and PIL images are read by `asuka.imageio.load_mask`. A mask of the same
    aspect ratio but another size is resized (nearest); a mask of a different aspect ratio is refused.
    """
    accepted = (
        "a PIL image, a path, a numpy array (H,W)/(B,H,W)/(B,H,W,1), a tensor (H,W)/(1,H,W)/(B,1,H,W), or a list"
    )
    if isinstance(mask_image, (list, tuple)):
        if len(mask_image) == 0:
            raise ValueError(f"`mask_image` is an empty list; expected {accepted}.")
        return torch.cat([mask_to_tensor(m, image_size) for m in mask_image])
    if isinstance(mask_image, (str, os.PathLike, PIL.Image.Image)):
        array = np.asarray(_read(load_mask, mask_image, "mask_image"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)[None, None]
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


# ---------------------------------------------------------------------------------------------
# 2. Empty mask
# ---------------------------------------------------------------------------------------------


def unchanged_output(images: torch.Tensor, num_images_per_prompt: int, output_type: str, return_dict: bool):
    """What a pipeline returns for an empty mask: the input itself, in the requested format."""
    result = to_output_type(images.repeat_interleave(num_images_per_prompt, dim=0), output_type)
    return AsukaPipelineOutput(images=result) if return_dict else (result,)


# ---------------------------------------------------------------------------------------------
# 3. Working region: process a crop around the mask at the backbone's resolution
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

    def crop(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (..., H, W) at the input resolution cut to the box, not resampled."""
        x0, y0, x1, y1 = self.box
        return tensor[..., y0:y1, x0:x1]


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
    image, hole = region.crop(image), region.crop(hole)
    if region.is_identity:
        return image, hole
    work_w, work_h = region.size
    image = F.interpolate(image, size=(work_h, work_w), mode="bicubic", antialias=True, align_corners=False)
    hole = (F.interpolate(hole, size=(work_h, work_w), mode="area") > 0).float()
    return image.clamp(0, 1), hole


def cut_working_region(
    image: torch.Tensor,
    hole: torch.Tensor,
    working_resolution: int,
    multiple: int,
    padding_mask_crop: int | None = None,
) -> tuple[WorkingRegion, torch.Tensor, torch.Tensor]:
    """`plan_working_region` and `crop_to_working` in one: the region, and the image and hole cut to it."""
    region = plan_working_region(hole, working_resolution, multiple, padding_mask_crop)
    return region, *crop_to_working(image, hole, region)


# ---------------------------------------------------------------------------------------------
# 4. Paste back and convert
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The MAE's own estimate, for previews
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def mae_reconstruction(
    mae: torch.nn.Module, image: ImageInput, mask_image: ImageInput, mae_input_preprocessing: str | None = None
) -> list[PIL.Image.Image]:
    """The MAE's own pixel estimate ("what the prior thinks"), pasted into the hole at the input's size.

    The MAE reads the input at its own resolution; `mae_input_preprocessing` is its input order (None: its config's),
    so pass a run's value to show that run's prior."""
    image, hole = standardise_inputs(image, mask_image)
    recon = mae.reconstruct(image, hole, mae_input_preprocessing)
    recon = F.interpolate(recon.float().cpu(), size=image.shape[-2:], mode="bicubic", align_corners=False)
    return to_output_type(torch.where(hole > 0.5, recon.clamp(0, 1), image), "pil")
