"""What the FLUX training tests compare with: the transformer called as `AsukaFluxPipeline.__call__` calls it."""

import torch
from diffusers import FluxFillPipeline


def pipeline_transformer_call(pipe, noisy, raw_masked_latents, mask, timesteps, tokens, pooled, guidance):
    """The transformer's output as `AsukaFluxPipeline.__call__` steps 6-7 compute it, unpacked to latent maps."""
    batch, channels, height, width = noisy.shape
    dtype, device = noisy.dtype, noisy.device
    latents = pipe._pack_latents(noisy, batch, channels, height, width)
    latent_image_ids = pipe._prepare_latent_image_ids(batch, height // 2, width // 2, device, dtype)
    packed_mask, masked_image_latents = pipe.prepare_mask_latents(
        mask=mask,
        masked_image=raw_masked_latents,  # latent channels: taken as VAE latents, then shifted and scaled
        batch_size=batch,
        num_channels_latents=channels,
        num_images_per_prompt=1,
        height=height * pipe.vae_scale_factor,
        width=width * pipe.vae_scale_factor,
        dtype=dtype,
        device=device,
        generator=None,
    )
    masked_image_latents = torch.cat((masked_image_latents, packed_mask), dim=-1)
    text_ids = torch.zeros(tokens.shape[1], 3, device=device, dtype=dtype)
    prediction = pipe.transformer(
        hidden_states=torch.cat((latents, masked_image_latents), dim=2),
        timestep=timesteps.to(dtype) / 1000,
        guidance=guidance,
        pooled_projections=pooled,
        encoder_hidden_states=tokens,
        txt_ids=text_ids,
        img_ids=latent_image_ids,
        return_dict=False,
    )[0]
    return FluxFillPipeline._unpack_latents(
        prediction, height * pipe.vae_scale_factor, width * pipe.vae_scale_factor, pipe.vae_scale_factor
    )
