"""Tiny random SD-1.5-inpainting components and the ASUKA pipeline built from them."""

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

from asuka.models import AsukaAligner, AsukaDecoder
from asuka.pipelines import AsukaPipeline
from asuka.testing.mae import make_tiny_mae


CROSS_ATTENTION_DIM = 32


def make_tiny_sd_components(
    seed: int = 0, context_width: int = CROSS_ATTENTION_DIM, prediction_type: str = "epsilon", **unet_config
) -> dict[str, torch.nn.Module]:
    """The backbone (9-channel UNet, VAE, scheduler) and ASUKA parts, shaped like diffusers' own tiny test models.

    The VAE has a scale factor of 2 and the UNet a sample size of 32, so the native working size is 64x64.
    `context_width` (the UNet's cross-attention width and the aligner's output), `prediction_type` (the
    scheduler's) and `unet_config` (UNet config values) give other backbones of SD's architecture, e.g. SD-2's.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        cross_attention_dim=context_width,
        **unet_config,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1, prediction_type=prediction_type)
    mae = make_tiny_mae()
    aligner = AsukaAligner(in_dim=32, hidden_dim=context_width, num_blocks=1, head_dim=16, num_tokens=16)
    decoder = AsukaDecoder.from_vae(vae)
    models = {"vae": vae, "unet": unet, "mae": mae, "aligner": aligner, "decoder": decoder}
    for model in models.values():
        model.eval()  # as from_pretrained leaves them, so a save/load round trip is bit-exact
    return {"scheduler": scheduler, **models}


def make_tiny_sd_pipeline(seed: int = 0, **overrides) -> AsukaPipeline:
    """A complete tiny `AsukaPipeline`; keyword arguments replace components (e.g. `decoder=None`)."""
    components = make_tiny_sd_components(seed)
    components.update(overrides)
    pipe = AsukaPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_inpaint_pipeline(components: dict) -> StableDiffusionInpaintPipeline:
    """diffusers' plain inpainting pipeline on `components`' VAE, UNet and scheduler, without text encoder or safety
    checker (pass `prompt_embeds`)."""
    pipe = StableDiffusionInpaintPipeline(
        vae=components["vae"],
        text_encoder=None,
        tokenizer=None,
        unet=components["unet"],
        scheduler=components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_sd_backbone_pipeline(seed: int = 0, **overrides) -> StableDiffusionInpaintPipeline:
    """diffusers' plain inpainting pipeline on the same tiny backbone weights (no text encoder: pass embeddings)."""
    components = make_tiny_sd_components(seed)
    components.update(overrides)
    return sd_inpaint_pipeline(components)
