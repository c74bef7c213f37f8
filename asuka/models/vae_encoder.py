"""The VAE encoder that ASUKA-FLUX encodes the masked image with.

The authors' inference loads the `encoder.*` tensors of their decoder checkpoint into the autoencoder that encodes
`image * (1 - mask)` for FLUX.1-Fill's conditioning. Where those differ from the backbone VAE's encoder, the
pipeline holds them in this component. It is diffusers' VAE `Encoder` (parameter names identical to
`AutoencoderKL.encoder`), and `encode` returns what `AutoencoderKL.encode` returns, so the pipeline samples it
exactly as diffusers samples the VAE. FLUX's VAE has no `quant_conv`, so neither has this.

This module ships to the Hub as remote code: it imports only torch and diffusers.
"""

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook


class AsukaVAEEncoder(ModelMixin, ConfigMixin):
    """The encoder half of a KL autoencoder: pixels in [-1, 1] to the (unscaled) latent distribution.

    The defaults are FLUX.1's VAE encoder. The latents are unscaled, as `AutoencoderKL.encode` gives them: the
    pipeline applies its VAE's `shift_factor` and `scaling_factor`.

    Parameters:
        in_channels (`int`, *optional*, defaults to 3): Image channels.
        latent_channels (`int`, *optional*, defaults to 16): Latent channels (the encoder outputs twice as many:
            mean and log-variance).
        down_block_types (`tuple[str, ...]`, *optional*, defaults to `("DownEncoderBlock2D",) * 4`):
            One down block per level, as in `AutoencoderKL`.
        block_out_channels (`tuple[int, ...]`, *optional*, defaults to `(128, 256, 512, 512)`): Widths of the levels.
        layers_per_block (`int`, *optional*, defaults to 2): ResNet layers per down block.
        norm_num_groups (`int`, *optional*, defaults to 32): GroupNorm groups.
        act_fn (`str`, *optional*, defaults to `"silu"`): Activation.
        mid_block_add_attention (`bool`, *optional*, defaults to `True`): Attention in the mid block.
    """

    # `encode` calls `encoder` directly, not `forward`: group offloading then onloads the encoder's own groups, as
    # for `AutoencoderKL` (whose list this is).
    _group_offload_block_modules = ["encoder"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        # Built exactly as AutoencoderKL builds its encoder, so the state-dict names match.
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            double_z=True,
            mid_block_add_attention=mid_block_add_attention,
        )

    @staticmethod
    def config_from_vae(vae_config: Mapping[str, Any]) -> dict[str, Any]:
        """The config of an encoder shaped like the encoder of the `AutoencoderKL` with `vae_config`.

        A VAE with a `quant_conv` (SD's) is refused: this encoder has none.
        """
        if vae_config.get("use_quant_conv", True):
            raise ValueError(
                "AsukaVAEEncoder has no quant_conv, so it can stand in only for a VAE without one (FLUX's, "
                "`use_quant_conv=False`); got a VAE config with `use_quant_conv=True`."
            )
        names = ("in_channels", "latent_channels", "layers_per_block", "norm_num_groups", "act_fn")
        config = {name: vae_config[name] for name in names}
        config.update(
            down_block_types=tuple(vae_config["down_block_types"]),
            block_out_channels=tuple(vae_config["block_out_channels"]),
            mid_block_add_attention=vae_config.get("mid_block_add_attention", True),
        )
        return config

    @apply_forward_hook  # so `enable_model_cpu_offload` moves the encoder to the accelerator for this entry point
    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        """`x` (B, C, H, W) in [-1, 1] to its latent distribution, as `AutoencoderKL.encode` returns it."""
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(self.encoder(x)))
