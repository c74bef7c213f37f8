# Copyright 2026 The asuka authors. Apache-2.0.
"""The backbone seam: what ASUKA needs to know about each frozen inpainting backbone, in one `BackboneSpec` each.

ASUKA is a post-training recipe for any inpainting backbone (an MAE prior, an aligner into the backbone's
conditioning space, a mask-conditioned decoder for its VAE). Everything that differs between backbones is a field
of its spec, registered by name: the ASUKA pipeline class that runs it (one class per architecture, on the shared
mixins, as diffusers does), the denoiser and how training calls it, the conditioning it takes, the training
objective, the components a light Hub repo points to and their classes, its Hub repo and licence, and its tiny test
factory. The pipelines, the training scripts, the light Hub format, the ASUKA-FLUX converter, the method registry
and the benchmarks read it here.

Backbones of one architecture (SD-1.5- and SD-2-inpainting) share a pipeline class, and so its architecture facts
(`ARCHITECTURE_FIELDS`); `register_backbone` checks that. See docs/architecture.md, "Adding a backbone".

This module ships to the Hub as remote code (bundled beside the pipeline and `hub_light`), so it imports only torch,
diffusers and the floor's `defaults` (the backbones' Hub ids).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from ..defaults import FLUX_FILL_REPO, SD_INPAINT_REPO


@dataclass(frozen=True)
class Licence:
    """A backbone's licence as a model card names it: the Hub `license` id, its name, a link to its text."""

    id: str
    name: str
    link: str


@dataclass(frozen=True)
class NoisePredictionObjective:
    """DDPM training as SD's: uniform integer timesteps, Gaussian noise, and ε or v as the target, as the
    backbone's scheduler config (`prediction_type`) says."""

    def training_scheduler(self, scheduler_config: dict) -> DDPMScheduler:
        """The DDPM scheduler that noises training latents, from the backbone scheduler's config."""
        return DDPMScheduler.from_config(scheduler_config)

    def noised(
        self, scheduler: DDPMScheduler, latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target) of one training step on `latents`."""
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            return noisy, timesteps, scheduler.get_velocity(latents, noise, timesteps)
        return noisy, timesteps, noise

    def clean_estimate(
        self, scheduler: DDPMScheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The one-step x0 estimate from the denoiser's `prediction` on `noisy` at `timesteps`."""
        alphas = scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1).to(noisy.dtype)
        if scheduler.config.prediction_type == "v_prediction":
            return alphas.sqrt() * noisy - (1 - alphas).sqrt() * prediction
        return (noisy - (1 - alphas).sqrt() * prediction) / alphas.sqrt()


def call_inpainting_unet(
    unet: torch.nn.Module,
    noisy: torch.Tensor,
    mask: torch.Tensor,
    masked_image_latents: torch.Tensor,
    timesteps: torch.Tensor,
    tokens: torch.Tensor,
) -> torch.Tensor:
    """A 9-channel inpainting UNet's prediction: noisy latents, mask and masked-image latents stacked on the
    channels, the tokens as cross-attention context."""
    return unet(torch.cat([noisy, mask, masked_image_latents], dim=1), timesteps, encoder_hidden_states=tokens).sample


DenoiserCall = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything ASUKA needs to know about one frozen inpainting backbone.

    Args:
        name: the registry name.
        repo: the backbone's Hub repo; `licence` its licence (a light repo's model card names it).
        pipeline_class: the ASUKA pipeline class that runs it; `base_pipeline_class` the diffusers pipeline of the
            plain backbone (a folder of either is a starting point for training).
        denoiser: the denoiser's component name, `denoiser_class` its diffusers class; `vae_class` that of the VAE.
        denoiser_in_channels: the denoiser's input channels (the noisy latents and the inpainting inputs; training
            checks them).
        components: the backbone's components an ASUKA pipeline takes (a light repo points to them).
        scheduler_class: the scheduler its Hub repo ships (the checkpoint's choice: not an architecture fact).
        token_width: the denoiser config key of the conditioning tokens' width (the aligner's `hidden_dim`);
            `pooled_width` that of the pooled vector, for a backbone that takes one.
        text_tokens: the sequence length of the text encoder the conditioning replaces (the baselines' prompts);
            `pooled_text_tokens` that of the one whose pooled vector the pooled conditioning replaces.
        null_embeddings: what the aligners' null embeddings stand for (`AsukaAligner(null_embedding=...)`), one per
            aligner; empty where the aligner holds none.
        latent_packing: side of the latent patches the denoiser packs into one token (1: none).
        denoise: how training calls the denoiser (`call_inpainting_unet`'s signature); `objective` the training
            objective. None where training on this backbone is not written yet.
        tiny_factory: `"module:function"` of its tiny random ASUKA pipeline (`asuka.testing.make_tiny_pipeline`).
    """

    name: str
    repo: str
    licence: Licence
    pipeline_class: str
    base_pipeline_class: str
    denoiser: str
    denoiser_class: str
    denoiser_in_channels: int
    components: tuple[str, ...]
    scheduler_class: str
    token_width: str
    text_tokens: int
    vae_class: str = "AutoencoderKL"
    pooled_width: str | None = None
    pooled_text_tokens: int | None = None
    null_embeddings: tuple[str, ...] = ()
    latent_packing: int = 1
    denoise: DenoiserCall | None = None
    objective: NoisePredictionObjective | None = None
    tiny_factory: str | None = None

    def component_classes(self) -> dict[str, str]:
        """The diffusers class of each of `components` in the backbone's Hub repo (a light repo's pointers)."""
        classes = {"vae": self.vae_class, self.denoiser: self.denoiser_class, "scheduler": self.scheduler_class}
        return {name: classes[name] for name in self.components}

    def context_width(self, denoiser_config) -> int:
        """The width of the conditioning tokens the denoiser of `denoiser_config` takes."""
        return denoiser_config[self.token_width]

    def zero_conditioning(
        self,
        denoiser_config,
        tokens: int,
        batch: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """All-zero conditioning of `tokens` tokens (and a pooled vector where the backbone takes one), as the
        keyword arguments of the backbone's diffusers pipeline: the "empty prompt" of a backbone without text
        encoders."""
        shape = (batch, tokens, self.context_width(denoiser_config))
        conditioning = {"prompt_embeds": torch.zeros(shape, device=device, dtype=dtype)}
        if self.pooled_width is not None:
            pooled = (batch, denoiser_config[self.pooled_width])
            conditioning["pooled_prompt_embeds"] = torch.zeros(pooled, device=device, dtype=dtype)
        return conditioning

    def check_trainable(self) -> None:
        """Raise `ValueError` unless the training scripts know how to train on this backbone."""
        if self.denoise is None or self.objective is None:
            raise ValueError(
                f"Training on the {self.name!r} backbone ({self.pipeline_class}) is not supported yet: its "
                "BackboneSpec has no `denoise` call or training `objective`; trainable backbones: "
                f"{sorted(spec.name for spec in _BACKBONES.values() if spec.objective is not None)}."
            )


#: The fields every backbone of one pipeline class shares (the architecture; the rest is the checkpoint's).
ARCHITECTURE_FIELDS = (
    "base_pipeline_class",
    "denoiser",
    "denoiser_class",
    "vae_class",
    "denoiser_in_channels",
    "components",
    "token_width",
    "pooled_width",
    "null_embeddings",
    "latent_packing",
    "denoise",
    "objective",
)

_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` to the registry (again: replaced); returns it.

    A spec whose pipeline class is already registered must agree with those specs on `ARCHITECTURE_FIELDS`.
    """
    for other in _BACKBONES.values():
        if other.name == spec.name or other.pipeline_class != spec.pipeline_class:
            continue
        differ = [field for field in ARCHITECTURE_FIELDS if getattr(other, field) != getattr(spec, field)]
        if differ:
            raise ValueError(
                f"Backbone {spec.name!r} runs on {spec.pipeline_class} like {other.name!r} but differs in {differ}; "
                "backbones of one pipeline class share its architecture: give it its own pipeline class."
            )
    _BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """The backbone registered as `name`; `ValueError` lists the known names otherwise."""
    if name not in _BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; known backbones: {sorted(_BACKBONES)}.")
    return _BACKBONES[name]


def backbone_names() -> list[str]:
    """The registered backbones' names, in registration order."""
    return list(_BACKBONES)


def backbone_for_repo(repo: str) -> BackboneSpec | None:
    """The backbone whose Hub repo is `repo`, if one is registered."""
    return next((spec for spec in _BACKBONES.values() if spec.repo == repo), None)


def backbone_for_pipeline(pipeline_class_name: str) -> BackboneSpec:
    """The (first registered) backbone run by the ASUKA pipeline `pipeline_class_name` or by its diffusers base
    pipeline: its architecture facts, which every backbone of that class shares.

    `ValueError` names the accepted classes otherwise.
    """
    for spec in _BACKBONES.values():
        if pipeline_class_name in (spec.pipeline_class, spec.base_pipeline_class):
            return spec
    classes = [name for spec in _BACKBONES.values() for name in (spec.pipeline_class, spec.base_pipeline_class)]
    raise ValueError(
        f"No backbone is registered for the pipeline class {pipeline_class_name!r}; accepted: {sorted(set(classes))}."
    )


# The two declarations have the same shape (duplicates lists the pair): each states one backbone's own values.
SD15_INPAINTING = register_backbone(
    BackboneSpec(
        name="sd-1.5-inpainting",
        repo=SD_INPAINT_REPO,
        licence=Licence(
            "creativeml-openrail-m",
            "CreativeML Open RAIL-M",
            f"https://huggingface.co/{SD_INPAINT_REPO}/blob/main/LICENSE.md",
        ),
        pipeline_class="AsukaPipeline",
        base_pipeline_class="StableDiffusionInpaintPipeline",
        denoiser="unet",
        denoiser_class="UNet2DConditionModel",
        denoiser_in_channels=9,  # latents, mask, masked-image latents
        components=("vae", "unet", "scheduler"),
        scheduler_class="PNDMScheduler",
        token_width="cross_attention_dim",
        text_tokens=77,  # CLIP's
        denoise=call_inpainting_unet,
        objective=NoisePredictionObjective(),
        tiny_factory="asuka.testing.sd:make_tiny_sd_pipeline",
    )
)

# Training on FLUX (flow matching, packed latents, token + pooled conditioning) is not written yet: `denoise` and
# `objective` are the seam to fill in.
FLUX_FILL = register_backbone(
    BackboneSpec(
        name="flux.1-fill",
        repo=FLUX_FILL_REPO,
        licence=Licence(
            "other",
            "FLUX.1 [dev] Non-Commercial License",
            f"https://huggingface.co/{FLUX_FILL_REPO}/blob/main/LICENSE.md",
        ),
        pipeline_class="AsukaFluxPipeline",
        base_pipeline_class="FluxFillPipeline",
        denoiser="transformer",
        denoiser_class="FluxTransformer2DModel",
        denoiser_in_channels=384,  # packed latents, masked-image latents and the 8x8 pixel mask
        components=("vae", "transformer", "scheduler"),
        scheduler_class="FlowMatchEulerDiscreteScheduler",
        token_width="joint_attention_dim",
        pooled_width="pooled_projection_dim",
        text_tokens=512,  # FluxFillPipeline's default max_sequence_length of T5
        pooled_text_tokens=77,  # CLIP's
        null_embeddings=("tokens", "pooled"),
        latent_packing=2,
        tiny_factory="asuka.testing.flux:make_tiny_flux_pipeline",
    )
)
