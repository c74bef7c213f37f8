"""Tiny random ASUKA-FLUX pipeline for tests, the app's offline mode and benchmarks.

Shapes follow FLUX.1-Fill exactly, only narrower (its real configs: `asuka.testing.configs`): a 4-level
AutoencoderKL with 16 latent channels and no (post-)quant conv (so 8x downsampling and 2x2 packing as in the real
model), and a FLUX transformer whose `x_embedder` takes packed noise (16*4) + packed masked-image latents (16*4) +
the packed 8x8 pixel mask (8*8*4) = 384 channels, like the real one.
"""

from __future__ import annotations

import functools

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from asuka.models import AsukaAligner, AsukaDecoder, AsukaVAEEncoder
from asuka.pipelines.backbones import FLUX_FILL
from asuka.testing.configs import FLUX_SCHEDULER_CONFIG, FLUX_TRANSFORMER_CONFIG, FLUX_VAE_CONFIG
from asuka.testing.mae import make_tiny_mae


TOKEN_DIM = 32  # stands in for T5's 4096
POOLED_DIM = 24  # stands in for CLIP's 768 (deliberately different from TOKEN_DIM)


def make_tiny_flux_components(seed: int = 0) -> dict:
    """The seven components of a tiny `AsukaFluxPipeline`, deterministic from `seed`."""
    torch.manual_seed(seed)
    narrow = {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 32}
    vae = AutoencoderKL(**{**FLUX_VAE_CONFIG, **narrow})
    transformer = FluxTransformer2DModel(
        **{
            **FLUX_TRANSFORMER_CONFIG,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": TOKEN_DIM,
            "pooled_projection_dim": POOLED_DIM,
            "axes_dims_rope": (4, 6, 6),
        }
    )
    mae = make_tiny_mae(decoder_embed_dim=16)
    tiny_aligner = functools.partial(
        AsukaAligner, in_dim=16, num_blocks=1, num_tokens=mae.num_patches, condition_weight=0.5
    )
    token_null, pooled_null = FLUX_FILL.null_embeddings  # one null embedding per aligner, as the backbone takes them
    token_aligner = tiny_aligner(hidden_dim=TOKEN_DIM, head_dim=16, null_embedding=token_null)
    pooled_aligner = tiny_aligner(hidden_dim=POOLED_DIM, head_dim=8, null_embedding=pooled_null)
    # Null embeddings start at zero in a fresh aligner; random ones make `condition_weight` observable.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for aligner in (token_aligner, pooled_aligner):
            for name, tensor in aligner.state_dict().items():
                if "null" in name:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
    models = {
        "vae": vae,
        "transformer": transformer,
        "mae": mae,
        "token_aligner": token_aligner,
        "pooled_aligner": pooled_aligner,
        "decoder": AsukaDecoder.from_vae(vae),
    }
    for model in models.values():
        model.eval()  # as from_pretrained leaves them, so a save/load round trip is bit-exact
    return {"scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG), **models}


def make_tiny_masked_image_encoder(vae: AutoencoderKL, seed: int = 1) -> AsukaVAEEncoder:
    """An `AsukaVAEEncoder` shaped like `vae`'s encoder with other random weights: a release encoder that differs."""
    torch.manual_seed(seed)
    return AsukaVAEEncoder(**AsukaVAEEncoder.config_from_vae(vae.config)).eval()


# Default long side of the tiny pipeline's working region (the real one uses FLUX's 1024).
TINY_WORKING_RESOLUTION = 64


def make_tiny_flux_pipeline(seed: int = 0, with_masked_image_encoder: bool = False, **kwargs):
    """A complete tiny `AsukaFluxPipeline`; `kwargs` replace components (e.g. `decoder=None`).

    `with_masked_image_encoder` adds a `masked_image_encoder` that differs from the VAE's encoder, as where the
    release's encoder is stored.
    """
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxPipeline

    components = make_tiny_flux_components(seed)
    unknown = set(kwargs) - set(components) - {"working_resolution"}
    if unknown:
        raise ValueError(f"Unknown argument(s) {sorted(unknown)}; accepted: {sorted(components)}, working_resolution.")
    if with_masked_image_encoder:
        components["masked_image_encoder"] = make_tiny_masked_image_encoder(components["vae"], seed + 1)
    components["working_resolution"] = TINY_WORKING_RESOLUTION
    components.update(kwargs)
    pipe = AsukaFluxPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_fill_pipeline(components: dict):
    """diffusers' plain `FluxFillPipeline` on `components`' VAE, transformer and scheduler, without text encoders
    (pass `prompt_embeds` and `pooled_prompt_embeds`)."""
    from diffusers import FluxFillPipeline

    pipe = FluxFillPipeline(
        scheduler=components["scheduler"],
        vae=components["vae"],
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=components["transformer"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_flux_backbone_pipeline(seed: int = 0):
    """diffusers' plain `FluxFillPipeline` on the same tiny VAE, transformer and scheduler (no text encoders)."""
    pipe = flux_fill_pipeline(make_tiny_flux_components(seed))
    # Its default size is the tiny AsukaFluxPipeline's working resolution, as FLUX's 1024 is for the real pair.
    pipe.default_sample_size = TINY_WORKING_RESOLUTION // pipe.vae_scale_factor
    return pipe
