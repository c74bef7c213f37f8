"""AsukaVAEEncoder: the encoder half of an AutoencoderKL, for the masked image of ASUKA-FLUX."""

import pytest
import torch
from diffusers import AutoencoderKL

from asuka.models import AsukaVAEEncoder
from asuka.testing.configs import FLUX_VAE_CONFIG
from asuka.testing.flux import make_tiny_flux_components, make_tiny_masked_image_encoder


def test_encode_is_autoencoder_kl_encode_with_the_same_weights():
    vae = make_tiny_flux_components()["vae"]
    encoder = make_tiny_masked_image_encoder(vae)
    assert sorted(encoder.encoder.state_dict()) == sorted(vae.encoder.state_dict())  # diffusers' names
    encoder.encoder.load_state_dict(vae.encoder.state_dict())
    image = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected, actual = vae.encode(image).latent_dist, encoder.encode(image).latent_dist
    assert torch.equal(actual.mean, expected.mean) and torch.equal(actual.std, expected.std)
    assert actual.mean.shape == (2, 16, 4, 6)


def test_defaults_are_flux_vae_encoder():
    with torch.device("meta"):  # configs only
        flux_vae, default = AutoencoderKL(**FLUX_VAE_CONFIG), AsukaVAEEncoder()
    expected = {key: value for key, value in default.config.items() if not key.startswith("_")}
    assert AsukaVAEEncoder.config_from_vae(flux_vae.config) == expected


def test_a_vae_with_quant_conv_is_refused():
    with pytest.raises(ValueError, match="quant_conv"):
        AsukaVAEEncoder.config_from_vae({**FLUX_VAE_CONFIG, "use_quant_conv": True})
