"""The public configs of the backbones' models, written out so nothing is downloaded: SD-1.5-inpainting's UNet,
VAE and scheduler, FLUX.1-Fill-dev's transformer, VAE and scheduler, and their text encoders. The tiny factories
(`asuka.testing.flux`) narrow them; the benchmarks (`benchmarks/architectures.py`) build the full-size models.
"""

# Scheduler settings of black-forest-labs/FLUX.1-Fill-dev (resolution-dependent shift).
FLUX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

# black-forest-labs/FLUX.1-Fill-dev's VAE (f=8, 16 latent channels, no (post-)quant conv), from its public config.
FLUX_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# FLUX.1-Fill-dev's transformer: FluxTransformer2DModel's defaults are FLUX.1-dev's (19 double and 38 single blocks,
# 24 heads of 128, T5 4096 / CLIP 768 inputs); Fill takes packed noise (16*4) + packed masked-image latents (16*4) +
# the packed 8x8 pixel mask (8*8*4) = 384 input channels, and embeds the guidance scale.
FLUX_TRANSFORMER_CONFIG = dict(in_channels=384, out_channels=64, guidance_embeds=True)

# runwayml/stable-diffusion-inpainting's UNet: 9 input channels (noisy latents, mask, masked-image latents).
SD15_UNET_CONFIG = dict(
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

# SD-1.x's KL VAE (f=8, 4 latent channels): the architecture FLUX.1's VAE keeps with 16 latent channels and without
# the (post-)quant convs.
SD15_VAE_CONFIG = {
    **FLUX_VAE_CONFIG,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}

# The scheduler config shipped with SD-1.5-inpainting (PNDM).
SD15_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
)

# The CLIP ViT-L/14 text encoder of SD-1.x (and FLUX.1's second text encoder). CLIPTextConfig's defaults are the
# ViT-B/32 text tower (12 layers, 77 positions, quick_gelu); ViT-L/14's is wider.
CLIP_VIT_L_TEXT_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)

# FLUX.1's T5-XXL encoder (google/t5-v1_1-xxl). T5Config's defaults are t5-small's (vocabulary, 64-wide heads, 32
# position buckets); v1.1-XXL is larger.
T5_XXL_ENCODER_CONFIG = dict(
    d_model=4096,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)
