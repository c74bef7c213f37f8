"""The aligner's per-batch loss on any backbone whose spec trains (`BackboneSpec.denoise` and `objective`).

`aligner_loss` is the one place the loss is computed: `train_aligner.py` calls it on the latents and MAE prior it
computes, and precomputed-input training or the budget counts call it the same way on theirs:

    loss = aligner_loss(spec, denoiser, scheduler, aligner, prior, latents, masked_image_latents, mask)

The aligner is an `AsukaAligner` (SD: its tokens are the UNet's context) or an `AlignerPair` (FLUX: the token
aligner's tokens and the pooled aligner's pooled vector), called as the ASUKA pipelines' `encode_prior` calls them:
each aligner's own `condition_weight` pulls its output towards its null embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .checkpoints import ComponentGroup


if TYPE_CHECKING:
    from asuka.models import AsukaAligner
    from asuka.pipelines.backbones import BackboneSpec, FlowMatchingObjective, NoisePredictionObjective


class AlignerPair(ComponentGroup):
    """The token and pooled aligners of a backbone that takes a pooled vector (FLUX.1-Fill), trained as one model
    and stored as `token_aligner/` and `pooled_aligner/`. Called like one `AsukaAligner`: its tokens are the token
    aligner's, its pooled vector the pooled aligner's (`AsukaFluxPipeline.encode_prior`)."""

    def __init__(self, token_aligner: AsukaAligner, pooled_aligner: AsukaAligner):
        super().__init__(token_aligner=token_aligner, pooled_aligner=pooled_aligner)

    def forward(self, prior: torch.Tensor, condition_weight: float | None = None, return_dict: bool = True):
        """(tokens, pooled) of the two aligners on `prior`; an `AsukaAlignerOutput` unless `return_dict=False`."""
        from asuka.models.aligner import AsukaAlignerOutput

        tokens = self["token_aligner"](prior, condition_weight=condition_weight).tokens
        pooled = self["pooled_aligner"](prior, condition_weight=condition_weight).pooled
        return AsukaAlignerOutput(tokens=tokens, pooled=pooled) if return_dict else (tokens, pooled)


def aligned_conditioning(
    backbone: BackboneSpec, aligner: torch.nn.Module, prior: torch.Tensor, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The denoiser's conditioning from the (prepared) `aligner` on the MAE `prior`, as the backbone's pipeline takes
    it: `prompt_embeds`, and `pooled_prompt_embeds` where the backbone takes a pooled vector; cast to `dtype`."""
    tokens, pooled = aligner(prior.float(), return_dict=False)  # tuples survive accelerate's fp32 output cast
    conditioning = {"prompt_embeds": tokens}
    if backbone.pooled_width is not None:
        conditioning["pooled_prompt_embeds"] = pooled
    return {name: value.to(dtype or value.dtype) for name, value in conditioning.items()}


def aligner_loss(
    backbone: BackboneSpec,
    denoiser: torch.nn.Module,
    scheduler,
    aligner: torch.nn.Module,
    prior: torch.Tensor,
    latents: torch.Tensor,
    masked_image_latents: torch.Tensor,
    mask: torch.Tensor,
    *,
    objective: NoisePredictionObjective | FlowMatchingObjective | None = None,
    guidance: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The MSE of the frozen denoiser's prediction against the objective's target, conditioned on the aligned prior.

    Args:
        backbone (`BackboneSpec`):
            The backbone's spec (its `denoise` call; its `objective` unless `objective` is given).
        denoiser (`torch.nn.Module`):
            The frozen denoiser.
        scheduler:
            The objective's `training_scheduler`.
        aligner (`torch.nn.Module`):
            The trained `AsukaAligner` or `AlignerPair` (prepared or not).
        prior (`torch.Tensor` of shape `(B, N, D)`):
            MAE prior of each sample (from the masked image, or from the whole image with the reconstructed-prior
            probability).
        latents (`torch.Tensor` of shape `(B, C, h, w)`):
            Scaled VAE latents of the image; the denoiser runs in their dtype.
        masked_image_latents (`torch.Tensor` of shape `(B, C, h, w)`):
            Scaled VAE latents of the masked image.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`):
            1 = hole, at pixel (or latent) resolution.
        objective (`NoisePredictionObjective` or `FlowMatchingObjective`, *optional*):
            Replaces the spec's objective, e.g. the spec's with the training flags' density.
        guidance (`float` or `torch.Tensor`, *optional*):
            The embedded guidance scale (a float or per sample) where the denoiser embeds one; `None` the
            backbone's default (FLUX.1-Fill: 30).
        generator (`torch.Generator`, *optional*):
            Draws the noise, then the timesteps (default: the global RNG).
    """
    objective = objective or backbone.objective
    with torch.no_grad():
        noisy, timesteps, target = objective.noised(scheduler, latents, generator=generator)
    conditioning = aligned_conditioning(backbone, aligner, prior, latents.dtype)
    prediction = backbone.denoise(denoiser, noisy, timesteps, conditioning, masked_image_latents, mask, guidance)
    return F.mse_loss(prediction.float(), target.float())
