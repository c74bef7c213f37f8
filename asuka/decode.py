"""ASUKA's mask-conditioned decoder as a drop-in for any latent inpainting pipeline.

The ASUKA release notes that its decoder improves colour consistency for inpainting models in
general. Run a plain diffusers pipeline with `output_type="latent"` and decode its latents here:

```py
latents = flux_fill(prompt="", image=image, mask_image=mask, height=h, width=w, output_type="latent").images
result = decode_with_asuka_decoder(latents, image, mask, decoder=asuka_decoder, vae=flux_fill.vae, height=h, width=w)
```

Both latent layouts are understood: FLUX's packed `(B, (h/2)*(w/2), C*4)` sequences (unpacked with
diffusers' own `FluxFillPipeline._unpack_latents`, then unscaled `z / scaling_factor + shift_factor`)
and SD's `(B, C, h, w)` maps (`z / scaling_factor`).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, FluxFillPipeline
from diffusers.image_processor import VaeImageProcessor

from asuka.models import AsukaDecoder
from asuka.pipelines.inpaint_steps import ImageInput, WorkingRegion, crop_to_working, standardise_inputs


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
        latents: the `images` of a `FluxFillPipeline` / `StableDiffusionInpaintPipeline` run with
            `output_type="latent"` (packed FLUX latents or SD latent maps, still scaled).
        image, mask_image: the inputs of that run (PIL, path, numpy or tensors in [0,1], as the asuka
            pipelines take them; white = hole); they are resized to the decoded size.
        decoder: an `AsukaDecoder` whose latent channels match `vae` (16 for FLUX, 4 for SD).
        vae: the run's VAE; only its config is read (scaling/shift factor, downsampling).
        height, width: the pixel size the FLUX run used (needed only for packed latents; default:
            the image's size).
        output_type: "pil", "np" or "pt" (images in [0,1]).
    """
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"Unknown output_type {output_type!r}; accepted: 'pil', 'np', 'pt'.")
    config = vae.config
    vae_scale_factor = 2 ** (len(config.block_out_channels) - 1)
    if decoder.config.latent_channels != config.latent_channels:
        raise ValueError(
            f"The decoder takes {decoder.config.latent_channels} latent channels but the VAE has "
            f"{config.latent_channels}; use a decoder built for this VAE (AsukaDecoder.from_vae)."
        )
    pixels, hole = standardise_inputs(image, mask_image)  # [0, 1]; paths and PIL images read by asuka.imageio

    # 1. Latents to (B, C, h, w), unscaled
    if latents.ndim == 3:
        height = height or pixels.shape[-2]
        width = width or pixels.shape[-1]
        grid = (2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2)))
        if latents.shape[1] != (grid[0] // 2) * (grid[1] // 2) or latents.shape[2] != config.latent_channels * 4:
            raise ValueError(
                f"Packed latents of shape {tuple(latents.shape)} do not fit a {height}x{width} FLUX run "
                f"(expected (B, {(grid[0] // 2) * (grid[1] // 2)}, {config.latent_channels * 4})); "
                "pass the run's height/width."
            )
        latents = FluxFillPipeline._unpack_latents(
            latents=latents, height=height, width=width, vae_scale_factor=vae_scale_factor
        )
    elif latents.ndim != 4 or latents.shape[1] != config.latent_channels:
        raise ValueError(
            f"Latents of shape {tuple(latents.shape)} are neither packed FLUX latents (B, N, C*4) nor "
            f"latent maps (B, {config.latent_channels}, h, w)."
        )
    shift = config.shift_factor if config.get("shift_factor") is not None else 0.0
    latents = latents / config.scaling_factor + shift

    # 2. Image and mask at the decoded size
    size = (latents.shape[-2] * vae_scale_factor, latents.shape[-1] * vae_scale_factor)
    whole_image = WorkingRegion(box=(0, 0, pixels.shape[-1], pixels.shape[-2]), size=(size[1], size[0]))
    pixels, hole = crop_to_working(pixels, hole, whole_image)
    pixels = VaeImageProcessor.normalize(images=pixels)
    batch = latents.shape[0]
    if pixels.shape[0] not in (1, batch) or hole.shape[0] not in (1, batch):
        raise ValueError(f"`image`/`mask_image` batch must be 1 or {batch} (the latents' batch).")
    pixels = pixels.expand(batch, -1, -1, -1)
    hole = hole.expand(batch, -1, -1, -1)

    # 3. Decode
    dtype, device = decoder.dtype, decoder.device
    sample = decoder(latents.to(device, dtype), pixels.to(device, dtype), hole.to(device, dtype), return_dict=False)[0]
    return VaeImageProcessor(vae_scale_factor=vae_scale_factor).postprocess(sample.float(), output_type=output_type)
