"""The benchmarks' models: full-size public architectures (SD-1.5-inpainting, FLUX.1-Fill, their text encoders,
ASUKA's MAE/aligners/decoder) with random weights, built from the public configs written below (no download), or
the tiny test components. Shared by bench_pipelines.py, flops.py, gpu_suite.py and training_budget.py."""

import os
import sys

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    PNDMScheduler,
    UNet2DConditionModel,
)


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this repository's asuka
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE  # noqa: E402
from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING  # noqa: E402
from asuka.testing.flux import (  # noqa: E402
    FLUX_SCHEDULER_CONFIG,
    FLUX_TRANSFORMER_CONFIG,
    FLUX_VAE_CONFIG,
    make_tiny_flux_components,
)
from asuka.testing.sd import make_tiny_sd_components  # noqa: E402


def sd15_inpainting_unet() -> UNet2DConditionModel:
    """The UNet of runwayml/stable-diffusion-inpainting (9 input channels), from its public config."""
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        mid_block_scale_factor=1,
    )


def sd15_vae() -> AutoencoderKL:
    """SD-1.x's KL VAE (f=8, 4 latent channels), from its public config: the architecture FLUX.1's VAE keeps with
    16 latent channels and without the (post-)quant convs."""
    sd = {"latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215, "shift_factor": None}
    return AutoencoderKL(**{**FLUX_VAE_CONFIG, **sd, "use_quant_conv": True, "use_post_quant_conv": True})


def sd15_scheduler() -> PNDMScheduler:
    """The scheduler config shipped with SD-1.5-inpainting."""
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def build_sd_components(tiny: bool, parts: str = "asuka", seed: int = 0) -> dict[str, torch.nn.Module]:
    """`parts="asuka"`: vae, unet, scheduler, mae, aligner, decoder; `"backbone"`: only vae, unet, scheduler."""
    if tiny:
        components = make_tiny_sd_components(seed)
    else:
        torch.manual_seed(seed)
        components = {"scheduler": sd15_scheduler(), "vae": sd15_vae(), "unet": sd15_inpainting_unet()}
        if parts == "asuka":
            # ViT-B/16 MAE with a 512-wide 8-block decoder, a 768-wide 4-block aligner: the defaults.
            components.update(mae=AsukaMAE(), aligner=AsukaAligner(), decoder=AsukaDecoder.from_vae(components["vae"]))
    if parts == "backbone":
        components = {k: components[k] for k in SD15_INPAINTING.components}
    for name, module in components.items():
        if name != "scheduler":
            module.eval().requires_grad_(False)
    return components


def build_flux_components(tiny: bool, num_layers: int, num_single_layers: int, seed: int = 0) -> dict:
    """FLUX.1-Fill's VAE and a FluxTransformer2DModel with its real widths (3072 wide, 24 heads of 128, 384 input
    channels, T5 4096 / CLIP 768 conditioning) but only `num_layers` double and `num_single_layers` single blocks
    (the real model has 19 and 38); the MAE and aligners (4096- and 768-wide, 4 blocks each) of ASUKA-FLUX."""
    if tiny:
        components = make_tiny_flux_components(seed)
    else:
        torch.manual_seed(seed)
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
        depth = {"num_layers": num_layers, "num_single_layers": num_single_layers}
        transformer = FluxTransformer2DModel(**{**FLUX_TRANSFORMER_CONFIG, **depth})
        mae = AsukaMAE()
        components = dict(
            vae=vae,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
            mae=mae,
            token_aligner=AsukaAligner(
                hidden_dim=FLUX_FILL.context_width(transformer.config),
                num_blocks=4,
                head_dim=128,
                num_tokens=mae.num_patches,
                null_embedding="tokens",
                condition_weight=0.5,
            ),
            pooled_aligner=AsukaAligner(
                hidden_dim=transformer.config[FLUX_FILL.pooled_width],
                num_blocks=4,
                num_tokens=mae.num_patches,
                null_embedding="pooled",
                condition_weight=0.5,
            ),
            decoder=AsukaDecoder.from_vae(vae),
        )
    for name, module in components.items():
        if name != "scheduler":
            module.eval().requires_grad_(False)
    return components


def clip_text_encoder() -> torch.nn.Module:
    """The CLIP ViT-L/14 text encoder of SD-1.x (and FLUX.1's second text encoder), from its public config."""
    from transformers import CLIPTextConfig, CLIPTextModel

    # CLIPTextConfig's defaults are the ViT-B/32 text tower (12 layers, 77 positions, quick_gelu); ViT-L/14's is wider.
    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
    return CLIPTextModel(config).eval()


def flux_text_encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    """FLUX.1's T5-XXL encoder (google/t5-v1_1-xxl) and CLIP ViT-L text encoder, from their public configs."""
    from transformers import T5Config, T5EncoderModel

    # T5Config's defaults are t5-small's (vocabulary, 64-wide heads, 32 position buckets); v1.1-XXL is larger, gated.
    xxl = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "feed_forward_proj": "gated-gelu"}
    t5 = T5EncoderModel(T5Config(**xxl, is_encoder_decoder=False, use_cache=False))
    return t5.eval(), clip_text_encoder()
