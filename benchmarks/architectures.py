"""The benchmarks' models: full-size public architectures (SD-1.5-inpainting, FLUX.1-Fill, their text encoders,
ASUKA's MAE/aligners/decoder) with random weights, built from their public configs (`asuka.testing.configs`, no
download), or the tiny test components. Shared by bench_pipelines.py, flops.py, gpu_suite.py and training_budget.py."""

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    PNDMScheduler,
    UNet2DConditionModel,
)

from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE
from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING
from asuka.testing.configs import (
    CLIP_VIT_L_TEXT_CONFIG,
    FLUX_SCHEDULER_CONFIG,
    FLUX_TRANSFORMER_CONFIG,
    FLUX_VAE_CONFIG,
    SD15_SCHEDULER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    T5_XXL_ENCODER_CONFIG,
)
from asuka.testing.flux import make_tiny_flux_components
from asuka.testing.sd import make_tiny_sd_components


def sd15_inpainting_unet() -> UNet2DConditionModel:
    """The UNet of runwayml/stable-diffusion-inpainting (9 input channels), from its public config."""
    return UNet2DConditionModel(**SD15_UNET_CONFIG)


def sd15_vae() -> AutoencoderKL:
    """SD-1.x's KL VAE (f=8, 4 latent channels), from its public config."""
    return AutoencoderKL(**SD15_VAE_CONFIG)


def sd15_scheduler() -> PNDMScheduler:
    """The scheduler config shipped with SD-1.5-inpainting."""
    return PNDMScheduler(**SD15_SCHEDULER_CONFIG)


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

    return CLIPTextModel(CLIPTextConfig(**CLIP_VIT_L_TEXT_CONFIG)).eval()


def flux_text_encoders() -> tuple[torch.nn.Module, torch.nn.Module]:
    """FLUX.1's T5-XXL encoder (google/t5-v1_1-xxl) and CLIP ViT-L text encoder, from their public configs."""
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(**T5_XXL_ENCODER_CONFIG))
    return t5.eval(), clip_text_encoder()
