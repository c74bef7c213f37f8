# Copyright 2026 The asuka authors. Apache-2.0.
"""Decoding scaled latents to pixels: the one home of the unpacking, the unscaling and the choice of decoder.

`decode_scaled_latents` is the decode step of both ASUKA pipelines (`AsukaDecodeMixin.decode_latents`) and of
the drop-in `decode_with_asuka_decoder`: FLUX's packed `(B, (h/2)*(w/2), C*4)` sequences are unpacked with
diffusers' own `FluxFillPipeline._unpack_latents`, SD's `(B, C, h, w)` maps are taken as they are; both are unscaled
`z / scaling_factor (+ shift_factor)` with the VAE's config, then decoded by the mask-conditioned decoder (an
`AsukaDecoder`, or diffusers' `AsymmetricAutoencoderKL`) or, without one, by the plain VAE.

The drop-in runs ASUKA's decoder after any latent inpainting pipeline (the ASUKA release notes that it improves
colour consistency for inpainting models in general). Run a plain diffusers pipeline with `output_type="latent"`:

```py
latents = flux_fill(prompt="", image=image, mask_image=mask, height=h, width=w, output_type="latent").images
result = decode_with_asuka_decoder(latents, image, mask, decoder=asuka_decoder, vae=flux_fill.vae, height=h, width=w)
```

This module ships to the Hub as remote code next to the pipeline files (see `hub_export`), so it imports only
torch, diffusers, numpy, PIL and its relative siblings.
"""

import numpy as np
import PIL.Image
import torch
from diffusers import AsymmetricAutoencoderKL, AutoencoderKL, FluxFillPipeline
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import VaeImageProcessor

from ..models.decoder import AsukaDecoder
from .inpaint_steps import ImageInput, WorkingRegion, crop_to_working, standardise_inputs


def vae_scale_factor_of(vae_config: FrozenDict) -> int:
    """How many pixels one latent pixel spans (8 for the SD and FLUX VAEs)."""
    return 2 ** (len(vae_config.block_out_channels) - 1)


def latent_maps(latents: torch.Tensor, vae_config: FrozenDict, height: int, width: int) -> torch.Tensor:
    """Latents as `(B, C, h, w)` maps: packed FLUX latents of a `height` x `width` run unpacked, maps as they are.

    Anything else (a packed sequence of another size, maps with other channels than the VAE's) raises `ValueError`.
    """
    channels = vae_config.latent_channels
    if latents.ndim == 3:
        patch = vae_scale_factor_of(vae_config) * 2
        patches = (height // patch) * (width // patch)
        if latents.shape[1] != patches or latents.shape[2] != channels * 4:
            raise ValueError(
                f"Packed latents of shape {tuple(latents.shape)} do not fit a {height}x{width} FLUX run "
                f"(expected (B, {patches}, {channels * 4})); pass the run's height/width."
            )
        return FluxFillPipeline._unpack_latents(
            latents=latents, height=height, width=width, vae_scale_factor=vae_scale_factor_of(vae_config)
        )
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(
            f"Latents of shape {tuple(latents.shape)} are neither packed FLUX latents (B, N, C*4) nor "
            f"latent maps (B, {channels}, h, w)."
        )
    return latents


def decode_scaled_latents(
    latents: torch.Tensor,
    image: torch.Tensor,
    hole: torch.Tensor,
    vae: AutoencoderKL,
    decoder: AsukaDecoder | AsymmetricAutoencoderKL | None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Scaled latents (packed FLUX latents or latent maps) to pixels in [-1, 1], on the latents' device.

    `image` ([-1, 1]) and `hole` (1 = repaint) are at the decoded size: the packed latents are of a run at that size,
    and the decoder blends their unmasked pixels in. With `decoder=None` the plain `vae` decodes (the paper's decoder
    ablation); `vae`'s config gives the unscaling in every case.
    """
    config = vae.config
    latents = latent_maps(latents, config, height=image.shape[-2], width=image.shape[-1])
    latents = latents / config.scaling_factor
    if config.get("shift_factor") is not None:
        latents = latents + config.shift_factor
    if decoder is None:
        return vae.decode(latents.to(vae.dtype), return_dict=False, generator=generator)[0]
    image = image.to(latents.device, decoder.dtype)
    hole = hole.to(latents.device, decoder.dtype)
    if isinstance(decoder, AsymmetricAutoencoderKL):
        return decoder.decode(latents.to(decoder.dtype), image=image, mask=hole, return_dict=False)[0]
    return decoder(latents.to(decoder.dtype), image, hole, return_dict=False)[0]


class AsukaDecodeMixin:
    """The decode step of the ASUKA pipelines, `decode_latents`, over their `vae` and optional `decoder`."""

    def decode_latents(
        self,
        latents: torch.Tensor,
        image: torch.Tensor,
        hole: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Scaled latents (FLUX's packed ones, or latent maps) to [-1, 1] pixels with the mask-conditioned decoder, or
        the plain VAE when it is None (see `decode_scaled_latents`).

        `image` ([-1, 1]) and `hole` (1 = repaint) are at the working size; the decoder blends their unmasked pixels
        in.
        """
        return decode_scaled_latents(latents, image, hole, vae=self.vae, decoder=self.decoder, generator=generator)


@torch.no_grad()
def decode_with_asuka_decoder(
    latents: torch.Tensor,
    image: ImageInput,
    mask_image: ImageInput,
    decoder: AsukaDecoder,
    vae: AutoencoderKL,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Decode a pipeline's scaled latents with an `AsukaDecoder` instead of `vae.decode`.

    Args:
        latents (`torch.Tensor`):
            The `images` of a `FluxFillPipeline` / `StableDiffusionInpaintPipeline` run with `output_type="latent"`
            (packed FLUX latents or SD latent maps, still scaled).
        image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
            The image input of that run (PIL, path, numpy or tensors in [0,1], as the asuka pipelines take them);
            resized to the decoded size.
        mask_image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str` or a `list` of them):
            The mask input of that run (white = hole), in the same forms; resized to the decoded size.
        decoder ([`AsukaDecoder`]):
            A decoder whose latent channels match `vae` (16 for FLUX, 4 for SD).
        vae ([`AutoencoderKL`]):
            The run's VAE; only its config is read (scaling/shift factor, downsampling).
        height (`int`, *optional*):
            The pixel height the FLUX run used (needed only for packed latents; default: the image's).
        width (`int`, *optional*):
            The pixel width the FLUX run used (needed only for packed latents; default: the image's).
        output_type (`str`, *optional*, defaults to `"pil"`):
            `"pil"`, `"np"` or `"pt"` (images in [0,1]).
    """
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"Unknown output_type {output_type!r}; accepted: 'pil', 'np', 'pt'.")
    config = vae.config
    if decoder.config.latent_channels != config.latent_channels:
        raise ValueError(
            f"The decoder takes {decoder.config.latent_channels} latent channels but the VAE has "
            f"{config.latent_channels}; use a decoder built for this VAE (AsukaDecoder.from_vae)."
        )
    pixels, hole = standardise_inputs(image, mask_image)  # [0, 1]; paths and PIL images read by asuka.imageio

    # 1. Latents to (B, C, h, w), on the decoder's device
    latents = latent_maps(latents, config, height=height or pixels.shape[-2], width=width or pixels.shape[-1])
    latents = latents.to(decoder.device)

    # 2. Image and mask at the decoded size
    scale = vae_scale_factor_of(config)
    size = (latents.shape[-2] * scale, latents.shape[-1] * scale)
    whole_image = WorkingRegion(box=(0, 0, pixels.shape[-1], pixels.shape[-2]), size=(size[1], size[0]))
    pixels, hole = crop_to_working(pixels, hole, whole_image)
    pixels = VaeImageProcessor.normalize(images=pixels)
    batch = latents.shape[0]
    if pixels.shape[0] not in (1, batch) or hole.shape[0] not in (1, batch):
        raise ValueError(f"`image`/`mask_image` batch must be 1 or {batch} (the latents' batch).")
    pixels = pixels.expand(batch, -1, -1, -1)
    hole = hole.expand(batch, -1, -1, -1)

    # 3. Unscale and decode
    sample = decode_scaled_latents(latents, pixels, hole, vae=vae, decoder=decoder)
    return VaeImageProcessor(vae_scale_factor=scale).postprocess(sample.float(), output_type=output_type)
