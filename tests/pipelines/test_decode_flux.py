"""ASUKA's decoder as a drop-in for plain diffusers pipelines (`asuka.decode.decode_with_asuka_decoder`)."""

import numpy as np
import PIL.Image
import pytest
import torch

from asuka.decode import decode_with_asuka_decoder
from asuka.models import AsukaDecoder
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image


def inputs(height: int, width: int):
    mask = box_mask(height, width, rows=(height // 4, height // 2), cols=(width // 4, width // 2))
    return random_image(height, width), mask


def run_both(pipe, **kwargs):
    """The same run twice: decoded by the pipeline itself, and as latents."""
    images = pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="np").images
    latents = pipe(**kwargs, generator=torch.Generator().manual_seed(0), output_type="latent").images
    return images, latents


def test_flux_fill_packed_latents():
    pipe = make_tiny_pipeline(kind="flux-backbone")
    image, mask = inputs(32, 48)
    kwargs = dict(
        image=image,
        mask_image=mask,
        prompt_embeds=torch.randn(1, 5, 32),
        pooled_prompt_embeds=torch.randn(1, 24),
        height=32,
        width=48,
        num_inference_steps=2,
    )
    images, latents = run_both(pipe, **kwargs)
    assert latents.ndim == 3  # packed

    # A decoder copied from the VAE, with nothing known (mask all ones), must reproduce the pipeline's own decode:
    # this pins the unpacking and FLUX's unscaling (z / 0.3611 + 0.1159).
    identity = AsukaDecoder.from_vae(pipe.vae)
    full_mask = PIL.Image.new("L", (48, 32), 255)
    decoded = decode_with_asuka_decoder(
        latents, image, full_mask, identity, pipe.vae, height=32, width=48, output_type="np"
    )
    assert decoded.shape == images.shape and np.abs(decoded - images).max() <= 1e-5

    # With the real mask the condition encoder takes part, and PIL output works.
    with_mask = decode_with_asuka_decoder(
        latents, image, mask, identity, pipe.vae, height=32, width=48, output_type="np"
    )
    assert not np.allclose(with_mask, images, atol=1e-3)
    pil = decode_with_asuka_decoder(latents, image, mask, identity, pipe.vae, height=32, width=48)
    assert pil[0].size == (48, 32)


def test_stable_diffusion_inpaint_latents():
    pipe = make_tiny_pipeline(kind="sd-backbone")
    image, mask = inputs(32, 32)
    embeds = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(3))
    images, latents = run_both(
        pipe,
        image=image,
        mask_image=mask,
        prompt_embeds=embeds,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=1.0,
    )
    assert latents.ndim == 4
    identity = AsukaDecoder.from_vae(pipe.vae)
    decoded = decode_with_asuka_decoder(
        latents, image, PIL.Image.new("L", (32, 32), 255), identity, pipe.vae, output_type="np"
    )
    assert decoded.shape == images.shape and np.abs(decoded - images).max() <= 1e-5


def test_mismatched_decoder_and_latents_are_refused():
    flux = make_tiny_pipeline(kind="flux-backbone")
    sd_decoder = AsukaDecoder.from_vae(make_tiny_pipeline(kind="sd-backbone").vae)
    image, mask = inputs(32, 32)
    with pytest.raises(ValueError, match="latent channels"):
        decode_with_asuka_decoder(torch.zeros(1, 4, 64), image, mask, sd_decoder, flux.vae)
    with pytest.raises(ValueError, match="height/width"):
        decode_with_asuka_decoder(torch.zeros(1, 7, 64), image, mask, AsukaDecoder.from_vae(flux.vae), flux.vae)
