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

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxFillPipeline
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift

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

    def add_noise(
        self, scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """`latents` noised with `noise` to the integer `timesteps` (the scheduler's `add_noise`)."""
        return scheduler.add_noise(latents, noise, timesteps)

    def noised(
        self, scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target) of one training step on `latents`; `generator` draws the noise, then
        the timesteps (default: the global RNG)."""
        noise = torch.empty_like(latents).normal_(generator=generator)  # as randn_like: in the latents' layout
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device, generator=generator
        ).long()
        noisy = self.add_noise(scheduler, latents, noise, timesteps)
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


# The timestep densities of `FlowMatchingObjective` (diffusers' `compute_density_for_timestep_sampling`).
TIMESTEP_DENSITIES = ("logit_normal", "mode", "uniform")
# Its timestep shifts: none, the scheduler config's static `shift`, or the resolution-dependent shift of inference.
TIMESTEP_SHIFTS = ("none", "static", "resolution")


@dataclass(frozen=True)
class FlowMatchingObjective:
    """Rectified-flow training as FLUX's (diffusers' FLUX and SD3 training examples): σ in (0, 1) drawn from a
    density, `noisy = (1 - σ) x0 + σ noise`, the velocity `noise - x0` as the target, timesteps `1000 σ` (the
    scheduler's `num_train_timesteps` scale, which the denoise call divides back as the pipeline does).

    Args:
        weighting_scheme (`str`, *optional*, defaults to `"logit_normal"`):
            The density σ is drawn from, one of `TIMESTEP_DENSITIES`: `"logit_normal"` (SD3's default, σ =
            sigmoid(N(logit_mean, logit_std))), `"mode"` (SD3's mode sampling with `mode_scale`) or `"uniform"`.
        logit_mean (`float`, *optional*, defaults to 0.0):
            The logit-normal density's mean.
        logit_std (`float`, *optional*, defaults to 1.0):
            The logit-normal density's standard deviation.
        mode_scale (`float`, *optional*, defaults to 1.29):
            The mode density's scale.
        shift (`str`, *optional*, defaults to `"none"`):
            One of `TIMESTEP_SHIFTS`: `"none"`, `"static"` (σ' = sσ / (1 + (s - 1)σ) with the scheduler config's
            `shift`, 3 for FLUX.1) or `"resolution"` (the exponential shift with FLUX's resolution-dependent `mu`,
            as the inference schedule at the latents' size).
        latent_packing (`int`, *optional*, defaults to 2):
            The latent patch side the denoiser packs into one token (the resolution shift counts tokens).
    """

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: str = "none"
    latent_packing: int = 2

    def __post_init__(self):
        if self.weighting_scheme not in TIMESTEP_DENSITIES:
            raise ValueError(
                f"Unknown timestep density {self.weighting_scheme!r}; accepted: {list(TIMESTEP_DENSITIES)}."
            )
        if self.shift not in TIMESTEP_SHIFTS:
            raise ValueError(f"Unknown timestep shift {self.shift!r}; accepted: {list(TIMESTEP_SHIFTS)}.")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0; got {self.logit_std}.")

    def training_scheduler(self, scheduler_config: dict) -> FlowMatchEulerDiscreteScheduler:
        """The flow-matching scheduler of the backbone's config (its timestep scale and shift settings)."""
        return FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)

    def sigmas(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        batch_size: int,
        latent_size: tuple[int, int],
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B,) noise levels σ drawn from the density, shifted as `shift` says, for latents of `latent_size`."""
        from diffusers.training_utils import compute_density_for_timestep_sampling  # heavy: only when training

        sigmas = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting_scheme,
            batch_size=batch_size,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            device=device,
            generator=generator,
        )
        config = scheduler.config
        if self.shift == "static":
            return config.shift * sigmas / (1 + (config.shift - 1) * sigmas)
        if self.shift == "resolution":
            tokens = (latent_size[0] // self.latent_packing) * (latent_size[1] // self.latent_packing)
            mu = calculate_shift(
                image_seq_len=tokens,
                base_seq_len=config.get("base_image_seq_len", 256),
                max_seq_len=config.get("max_image_seq_len", 4096),
                base_shift=config.get("base_shift", 0.5),
                max_shift=config.get("max_shift", 1.15),
            )
            return scheduler.time_shift(mu=mu, sigma=1.0, t=sigmas)
        return sigmas

    def add_noise(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """`latents` noised with `noise` to `timesteps` (σ = t / num_train_timesteps): (1 - σ) x0 + σ noise."""
        sigmas = self._sigmas_of(scheduler, timesteps, latents)
        return (1 - sigmas) * latents + sigmas * noise

    def noised(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, target) of one training step on `latents`; `generator` draws the noise, then
        σ (default: the global RNG). The timesteps are `σ * num_train_timesteps`, floats; the target `noise - x0`."""
        noise = torch.empty_like(latents).normal_(generator=generator)  # as randn_like: in the latents' layout
        sigmas = self.sigmas(scheduler, latents.shape[0], latents.shape[-2:], latents.device, generator)
        timesteps = sigmas * scheduler.config.num_train_timesteps
        return self.add_noise(scheduler, latents, noise, timesteps), timesteps, noise - latents

    def clean_estimate(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        noisy: torch.Tensor,
        prediction: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """The one-step x0 estimate from the predicted velocity on `noisy` at `timesteps`: noisy - σ v."""
        return noisy - self._sigmas_of(scheduler, timesteps, noisy) * prediction

    @staticmethod
    def _sigmas_of(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ of `timesteps`, shaped to broadcast over the (B, C, h, w) tensor `like`."""
        sigmas = timesteps.to(like.device, torch.float32) / scheduler.config.num_train_timesteps
        return sigmas.view(-1, *[1] * (like.ndim - 1)).to(like.dtype)


class DenoiserCall(Protocol):
    """How training calls a backbone's denoiser (`BackboneSpec.denoise`).

    Args:
        denoiser (`torch.nn.Module`):
            The frozen UNet or transformer.
        noisy (`torch.Tensor` of shape `(B, C, h, w)`):
            Noisy latents, scaled as the VAE's config says.
        timesteps (`torch.Tensor` of shape `(B,)`):
            Timesteps as the spec's objective draws them.
        conditioning (`dict[str, torch.Tensor]`):
            The conditioning as the backbone's diffusers pipeline takes it: `prompt_embeds` (B, T, D) and, for a
            backbone with a pooled vector (`pooled_width`), `pooled_prompt_embeds` (B, P).
        masked_image_latents (`torch.Tensor` of shape `(B, C, h, w)`):
            Scaled latents of the masked image.
        mask (`torch.Tensor` of shape `(B, 1, H, W)`):
            1 = hole, at any resolution (pixels, or the latents'); each call resizes it (nearest) to what its
            denoiser takes.
        guidance (`float` or `torch.Tensor` of shape `(B,)`, *optional*):
            The embedded guidance scale of a denoiser that embeds one; `None` the backbone's default. Ignored by a
            denoiser that embeds none.

    Returns:
        `torch.Tensor` of shape `(B, C, h, w)`: the prediction as latent maps.
    """

    def __call__(
        self,
        denoiser: torch.nn.Module,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        masked_image_latents: torch.Tensor,
        mask: torch.Tensor,
        guidance: float | torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def call_inpainting_unet(
    unet: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: dict[str, torch.Tensor],
    masked_image_latents: torch.Tensor,
    mask: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """A 9-channel inpainting UNet's prediction (a `DenoiserCall`): noisy latents, the mask at the latents'
    size and masked-image latents stacked on the channels, `prompt_embeds` as the cross-attention context.
    `guidance` is ignored: the UNet embeds no guidance scale (classifier-free guidance is the pipeline's)."""
    mask = F.interpolate(mask, size=noisy.shape[-2:])
    sample = torch.cat([noisy, mask, masked_image_latents], dim=1)
    return unet(sample, timesteps, encoder_hidden_states=conditioning["prompt_embeds"]).sample


# FLUX.1-Fill's embedded guidance scale in the release (ASUKA-FLUX's and FluxFillPipeline's default is 30).
FLUX_GUIDANCE = 30.0


def call_flux_fill_transformer(
    transformer: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    conditioning: dict[str, torch.Tensor],
    masked_image_latents: torch.Tensor,
    mask: torch.Tensor,
    guidance: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """A FLUX.1-Fill transformer's prediction (a `DenoiserCall`), called as `AsukaFluxPipeline` calls it.

    The latents and masked-image latents are packed into 2x2 patch tokens, the mask into 8x8 pixel blocks per latent
    pixel (diffusers' `FluxFillPipeline` packing; the block side is read from the transformer's input channels), the
    image ids built for the latents' grid, the timesteps divided by 1000, the guidance (default `FLUX_GUIDANCE`)
    embedded where the transformer embeds one; the packed prediction is unpacked to (B, C, h, w).
    """
    batch, channels, height, width = noisy.shape
    block = round(math.sqrt((transformer.config.in_channels - 8 * channels) / 4))  # pixels per latent pixel
    mask = F.interpolate(mask, size=(height * block, width * block)).to(noisy.dtype)
    # diffusers' packing of the mask and of (already scaled: no shift, unit scale) masked-image latents
    packing = SimpleNamespace(
        vae=SimpleNamespace(config=SimpleNamespace(shift_factor=0.0, scaling_factor=1.0)),
        vae_scale_factor=block,
        _pack_latents=FluxFillPipeline._pack_latents,
    )
    packed_mask, packed_masked = FluxFillPipeline.prepare_mask_latents(
        self=packing,
        mask=mask,
        masked_image=masked_image_latents,
        batch_size=batch,
        num_channels_latents=channels,
        num_images_per_prompt=1,
        height=height * block,
        width=width * block,
        dtype=noisy.dtype,
        device=noisy.device,
        generator=None,
    )
    packed = FluxFillPipeline._pack_latents(
        latents=noisy, batch_size=batch, num_channels_latents=channels, height=height, width=width
    )
    image_ids = FluxFillPipeline._prepare_latent_image_ids(
        batch_size=batch, height=height // 2, width=width // 2, device=noisy.device, dtype=noisy.dtype
    )
    tokens = conditioning["prompt_embeds"]
    text_ids = torch.zeros(tokens.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    embedded_guidance = None
    if transformer.config.guidance_embeds:
        guidance = FLUX_GUIDANCE if guidance is None else guidance
        embedded_guidance = torch.as_tensor(guidance, device=noisy.device, dtype=torch.float32).expand(batch)
    prediction = transformer(
        hidden_states=torch.cat((packed, torch.cat((packed_masked, packed_mask), dim=-1)), dim=2),
        timestep=timesteps.to(noisy.dtype) / 1000,
        guidance=embedded_guidance,
        pooled_projections=conditioning["pooled_prompt_embeds"],
        encoder_hidden_states=tokens,
        txt_ids=text_ids,
        img_ids=image_ids,
        return_dict=False,
    )[0]
    return FluxFillPipeline._unpack_latents(latents=prediction, height=height, width=width, vae_scale_factor=1)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything ASUKA needs to know about one frozen inpainting backbone.

    Args:
        name (`str`):
            The registry name.
        repo (`str`):
            The backbone's Hub repo.
        licence (`Licence`):
            Its licence (a light repo's model card names it).
        pipeline_class (`str`):
            The ASUKA pipeline class that runs it (a folder of it is a starting point for training).
        base_pipeline_class (`str`):
            The diffusers pipeline of the plain backbone (a folder of it is a starting point for training too).
        denoiser (`str`):
            The denoiser's component name.
        denoiser_class (`str`):
            The denoiser's diffusers class.
        denoiser_in_channels (`int`):
            The denoiser's input channels (the noisy latents and the inpainting inputs; training checks them).
        components (`tuple[str, ...]`):
            The backbone's components an ASUKA pipeline takes (a light repo points to them).
        scheduler_class (`str`):
            The scheduler its Hub repo ships (the checkpoint's choice: not an architecture fact).
        token_width (`str`):
            The denoiser config key of the conditioning tokens' width (the aligner's `hidden_dim`).
        text_tokens (`int`):
            The sequence length of the text encoder the conditioning replaces (the baselines' prompts).
        vae_class (`str`, *optional*, defaults to `"AutoencoderKL"`):
            The diffusers class of the VAE.
        pooled_width (`str`, *optional*):
            The denoiser config key of the pooled vector's width, for a backbone that takes one.
        pooled_text_tokens (`int`, *optional*):
            The sequence length of the text encoder whose pooled vector the pooled conditioning replaces.
        null_embeddings (`tuple[str, ...]`, *optional*, defaults to `()`):
            What the aligners' null embeddings stand for (`AsukaAligner(null_embedding=...)`), one per aligner;
            empty where the aligner holds none.
        latent_packing (`int`, *optional*, defaults to 1):
            Side of the latent patches the denoiser packs into one token (1: none).
        denoise (`DenoiserCall`, *optional*):
            How training calls the denoiser. None where training on this backbone is not written yet.
        objective (`NoisePredictionObjective` or `FlowMatchingObjective`, *optional*):
            The training objective. None where training on this backbone is not written yet.
        tiny_factory (`str`, *optional*):
            `"module:function"` of its tiny random ASUKA pipeline (`asuka.testing.make_tiny_pipeline`).
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
    objective: NoisePredictionObjective | FlowMatchingObjective | None = None
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


# The fields every backbone of one pipeline class shares (the architecture; the rest is the checkpoint's).
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


# The built-in backbones; each declaration states one backbone's own values.
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
        denoise=call_flux_fill_transformer,
        objective=FlowMatchingObjective(latent_packing=2),
        tiny_factory="asuka.testing.flux:make_tiny_flux_pipeline",
    )
)
