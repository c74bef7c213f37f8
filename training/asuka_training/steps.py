"""The per-batch steps of the decoder's and the MAE's training that the scripts and the benchmarks both run.

`one_step_x0` and `latent_augmentation` corrupt the decoder's latents (`train_decoder.py`), `masked_patch_l2` is
the MAE's loss (`train_mae.py`); the aligner's loss is `aligner_loss.aligner_loss`. `benchmarks/training_budget.py`
counts and times the same functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn


if TYPE_CHECKING:
    from asuka.pipelines.backbones import BackboneSpec


def one_step_x0(
    denoiser: nn.Module,
    scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: dict[str, torch.Tensor],
    backbone: BackboneSpec | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """The denoiser's x0 estimate from `latents` noised to `timesteps`, with the clean latent as the
    masked-image condition and an all-zero mask (nothing to inpaint) — paper Eq. 1.

    `backbone` (default: the SD-1.5-inpainting spec) says how to noise, how to call the denoiser and how its
    prediction gives x0; `conditioning` is what its denoise call takes (`prompt_embeds`, and
    `pooled_prompt_embeds` where the backbone takes one), `guidance` the embedded guidance scale of a denoiser
    that has one (`None`: the backbone's default, FLUX.1-Fill's 30).
    """
    if backbone is None:
        from asuka.pipelines.backbones import SD15_INPAINTING  # imported here: the pipelines load lazily

        backbone = SD15_INPAINTING
    noisy = backbone.objective.add_noise(scheduler, latents, noise, timesteps)
    zero_mask = torch.zeros_like(latents[:, :1])
    prediction = backbone.denoise(denoiser, noisy, timesteps, conditioning, latents, zero_mask, guidance)
    return backbone.objective.clean_estimate(scheduler, noisy, prediction, timesteps)


def latent_augmentation(
    latents: torch.Tensor,
    denoiser: nn.Module,
    scheduler,
    conditioning: dict[str, torch.Tensor],
    timestep_range: tuple[int, int],
    probability: float = 0.5,
    generator: torch.Generator | None = None,
    backbone: BackboneSpec | None = None,
    guidance: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's (scaled) latent by `one_step_x0` with `probability`, at a timestep drawn
    from `timestep_range` (inclusive). Returns the latents and the boolean (B,) applied-mask."""
    batch_size, device = latents.shape[0], latents.device
    applied = torch.rand(batch_size, generator=generator, device="cpu").to(device) < probability
    if not applied.any():
        return latents, applied
    low, high = timestep_range
    count = int(applied.sum())
    timesteps = torch.randint(low, high + 1, (count,), generator=generator, device="cpu").to(device)
    noise = torch.randn(latents[applied].shape, generator=generator, device="cpu").to(device, latents.dtype)
    chosen = {name: value[applied] for name, value in conditioning.items()}
    with torch.no_grad():
        estimate = one_step_x0(denoiser, scheduler, latents[applied], noise, timesteps, chosen, backbone, guidance)
    out = latents.clone()
    out[applied] = estimate.to(latents.dtype)
    return out, applied


def masked_patch_l2(
    reconstruction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """Mean squared pixel error over the patches holding any hole pixel (the MAE's masked tokens).

    `reconstruction` (B,3,S,S) in [0,1]; `image` (B,3,H,W) in [0,1] and `mask` (B,1,H,W), 1 = hole,
    are resized to S with the MAE's own resizes (OpenCV's area for the image, nearest for the mask).
    """
    from asuka.models.mae import resize_area, resize_nearest  # imported here: the models load when a script starts

    size = tuple(reconstruction.shape[-2:])
    target, hole = resize_area(image, size), resize_nearest(mask, size)
    masked = F.max_pool2d((hole > 0.5).float(), patch_size)  # (B,1,n,n)
    per_patch = F.avg_pool2d((reconstruction.float() - target.float()).pow(2).mean(1, keepdim=True), patch_size)
    return (per_patch * masked).sum() / masked.sum().clamp(min=1.0)
