"""ASUKA's mask-conditioned KL decoder.

The body is diffusers' own VAE `Decoder` (parameter names identical to `AutoencoderKL.decoder`), so any
AutoencoderKL decoder can be copied in (`AsukaDecoder.from_vae`). A small convolutional condition
encoder looks at the known pixels, `cat((1 - mask) * image, mask)`, and its features replace the
decoder state outside the hole before every up level and once more at full resolution. Inside the
hole the plain VAE decoding is kept, so with an all-ones mask the output is exactly `vae.decode`.

This module ships to the Hub as remote code: it imports only torch and diffusers.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin


class AsukaConditionEncoder(nn.Module):
    """Convolutions over the masked image that give one feature map per blend point.

    For `block_out_channels = (b0, ..., b_{n-1})` the features are, from full resolution down,
    `[b0, b1, ..., b_{n-1}, b_{n-1}]`: the first two at full resolution (3x3 convs), each later one at
    half the previous resolution (4x4 stride-2 convs). These are exactly the decoder's state shapes
    before its last blend (b0, full resolution) and at the entry of each up level (the last level
    first). For the FLUX.1-Fill release's decoder this is its `encoder.layers.{0..4}`; its golden output
    shows that each feature is taken before the ReLU that feeds the next layer.
    """

    def __init__(self, in_channels: int, block_out_channels: tuple[int, ...]):
        super().__init__()
        channels = [*block_out_channels, block_out_channels[-1]]
        layers = []
        previous = in_channels
        for index, out_channels in enumerate(channels):
            if index < 2:
                layers.append(nn.Conv2d(previous, out_channels, kernel_size=3, stride=1, padding=1))
            else:
                layers.append(nn.Conv2d(previous, out_channels, kernel_size=4, stride=2, padding=1))
            previous = out_channels
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns the features from full resolution down; each is taken before its ReLU."""
        features = []
        for index, layer in enumerate(self.layers):
            x = layer(x if index == 0 else F.relu(x))
            features.append(x)
        return features


class AsukaDecoder(ModelMixin, ConfigMixin):
    """Mask-conditioned KL decoder (ASUKA, ECCV 2024).

    `forward(latents, image, mask)` decodes UNSCALED latents (SD: `z / scaling_factor`; FLUX:
    `z / 0.3611 + 0.1159`) while copying the known region's appearance from `image` (in [-1, 1], at the
    output resolution); `mask` is (B, 1, H, W) in [0, 1] with 1 = hole. Like a diffusers model, the forward
    does not inspect values: the pipelines pass binary masks.

    Parameters:
        latent_channels (`int`, *optional*, defaults to 4): Latent channels (4 for SD-1.5, 16 for FLUX).
        out_channels (`int`, *optional*, defaults to 3): Image channels.
        up_block_types (`tuple[str, ...]`, *optional*, defaults to `("UpDecoderBlock2D",) * 4`):
            One up block per level, as in `AutoencoderKL`.
        block_out_channels (`tuple[int, ...]`, *optional*, defaults to `(128, 256, 512, 512)`):
            Widths of the levels (also the condition encoder's, one feature map per level).
        layers_per_block (`int`, *optional*, defaults to 2): ResNet layers per up block.
        norm_num_groups (`int`, *optional*, defaults to 32): GroupNorm groups.
        act_fn (`str`, *optional*, defaults to `"silu"`): Activation.
        mid_block_add_attention (`bool`, *optional*, defaults to `True`): Attention in the mid block.
        use_post_quant_conv (`bool`, *optional*, defaults to `True`):
            Apply the VAE's 1x1 `post_quant_conv` first (SD's VAE has one, FLUX's does not).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        use_post_quant_conv: bool = True,
    ):
        super().__init__()
        if len(up_block_types) != len(block_out_channels):
            raise ValueError(
                f"up_block_types ({len(up_block_types)}) and block_out_channels ({len(block_out_channels)}) "
                "must have the same length: one up level per entry."
            )
        # Built exactly as AutoencoderKL builds its decoder, so the state-dict names match.
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.condition_encoder = AsukaConditionEncoder(out_channels + 1, tuple(block_out_channels))
        self.use_tiling = False
        self.tile_sample_size = 512
        self.tile_overlap = 0.25

    @property
    def scale_factor(self) -> int:
        """Output pixels per latent pixel (each up level but the last doubles the resolution)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @classmethod
    def from_vae(cls, vae: nn.Module) -> "AsukaDecoder":
        """Copies the decoder (and post_quant_conv) of an `AutoencoderKL`; the condition encoder is fresh."""
        config = getattr(vae, "config", None)
        if config is None or not isinstance(getattr(vae, "decoder", None), Decoder):
            raise ValueError(
                f"from_vae expects a diffusers AutoencoderKL (with a `Decoder`), got {type(vae).__name__}."
            )
        post_quant_conv = getattr(vae, "post_quant_conv", None)
        model = cls(
            latent_channels=config.latent_channels,
            out_channels=config.out_channels,
            up_block_types=tuple(config.up_block_types),
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            act_fn=config.act_fn,
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            use_post_quant_conv=post_quant_conv is not None,
        )
        model.decoder.load_state_dict(vae.decoder.state_dict())
        if post_quant_conv is not None:
            model.post_quant_conv.load_state_dict(post_quant_conv.state_dict())
        parameter = next(vae.decoder.parameters())
        model.to(device=parameter.device)
        if parameter.dtype != model.dtype:  # diffusers logs a warning on every dtype cast, so only when needed
            model.to(dtype=parameter.dtype)
        # Same mode as the source VAE: in training diffusers' ResnetBlock2D makes its shortcut input contiguous,
        # which changes the conv kernels used, so train- and eval-mode decodes differ in the last bits.
        return model.train(vae.training)

    def _check_shapes(self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> None:
        """Pure-Python shape checks (no device sync): a mismatched batch or an unbatched input would otherwise
        broadcast silently. The mask's values (binary, 1 = hole) are the calling pipeline's to guarantee."""
        config = self.config
        for name, tensor in (("latents", latents), ("image", image), ("mask", mask)):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
                raise ValueError(f"`{name}` must be a 4-D tensor (B, C, H, W), got {_describe(tensor)}.")
        if latents.shape[1] != config.latent_channels:
            raise ValueError(
                f"`latents` must have {config.latent_channels} channels, got shape {tuple(latents.shape)}."
            )
        if image.shape[1] != config.out_channels:
            raise ValueError(f"`image` must have {config.out_channels} channels, got shape {tuple(image.shape)}.")
        if mask.shape[1] != 1:
            raise ValueError(f"`mask` must have 1 channel (B, 1, H, W), got shape {tuple(mask.shape)}.")
        expected = (latents.shape[2] * self.scale_factor, latents.shape[3] * self.scale_factor)
        if tuple(image.shape[2:]) != expected:
            raise ValueError(
                f"`image` must be {expected[0]}x{expected[1]} (latent size x {self.scale_factor}) for latents of "
                f"shape {tuple(latents.shape)}, got shape {tuple(image.shape)}."
            )
        if tuple(mask.shape[2:]) != tuple(image.shape[2:]):
            raise ValueError(
                f"`mask` must have the image's size {tuple(image.shape[2:])}, got shape {tuple(mask.shape)}."
            )
        if not latents.shape[0] == image.shape[0] == mask.shape[0]:
            raise ValueError(
                "`latents`, `image` and `mask` must have the same batch size, got "
                f"{latents.shape[0]}, {image.shape[0]} and {mask.shape[0]}."
            )

    def _run(self, block: nn.Module, sample: torch.Tensor) -> torch.Tensor:
        """Calls a decoder block the way diffusers' `Decoder.forward` does, checkpointed when enabled."""
        if torch.is_grad_enabled() and self.decoder.gradient_checkpointing:
            return self.decoder._gradient_checkpointing_func(block, sample, None)
        return block(sample, None)

    def enable_tiling(self, tile_sample_size: int = 512, tile_overlap: float = 0.25) -> None:
        """Decode large latents in overlapping tiles, each with its own image and mask crop, to bound memory.

        As `AutoencoderKL.enable_tiling`: tiles of `tile_sample_size` output pixels overlap by `tile_overlap` and
        are blended linearly. The mid-block attention then sees one tile at a time, so results differ slightly.
        """
        if tile_sample_size <= 0 or tile_sample_size % self.scale_factor:
            raise ValueError(
                f"`tile_sample_size` must be a positive multiple of {self.scale_factor}, got {tile_sample_size}."
            )
        if not 0 <= tile_overlap < 1:
            raise ValueError(f"`tile_overlap` must lie in [0, 1), got {tile_overlap}.")
        self.use_tiling = True
        self.tile_sample_size = tile_sample_size
        self.tile_overlap = tile_overlap

    def disable_tiling(self) -> None:
        """Decode in one pass again."""
        self.use_tiling = False

    # diffusers' linear seam blending, as `AutoencoderKL.tiled_decode` uses it.
    blend_v = AutoencoderKL.blend_v
    blend_h = AutoencoderKL.blend_h

    def forward(
        self,
        latents: torch.Tensor,
        image: torch.Tensor,
        mask: torch.Tensor,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decodes `latents`, taking the region outside `mask` from `image` through the condition encoder."""
        self._check_shapes(latents, image, mask)
        latents, image, mask = (t.to(self.dtype) for t in (latents, image, mask))
        if self.use_tiling and max(latents.shape[-2:]) > self.tile_sample_size // self.scale_factor:
            sample = self._tiled_decode(latents, image, mask)
        else:
            sample = self._decode(latents, image, mask)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def _decode(self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # 1. Condition features, once per call, from full resolution down. Each is popped (smallest first) when
        #    blended, so it is freed before the larger up levels run: lower peak memory, same result.
        features = self.condition_encoder(torch.cat([(1 - mask) * image, mask], dim=1))

        # 2. The body, as diffusers' `AutoencoderKL._decode` + `Decoder.forward` walk it, with the blends.
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        decoder = self.decoder
        sample = decoder.conv_in(latents)
        sample = self._run(decoder.mid_block, sample)
        for up_block in decoder.up_blocks:
            sample = _blend(sample, features.pop(), _binary_mask(mask, sample.shape[-2:]))
            sample = self._run(up_block, sample)
        sample = _blend(sample, features.pop(), mask)

        # 3. Post-process, as in diffusers' `Decoder.forward`.
        sample = decoder.conv_norm_out(sample)
        sample = decoder.conv_act(sample)
        return decoder.conv_out(sample)

    def _tiled_decode(self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`_decode` over overlapping latent tiles, blended like `AutoencoderKL.tiled_decode`."""
        factor = self.scale_factor
        tile = self.tile_sample_size // factor
        stride = max(1, int(tile * (1 - self.tile_overlap)))
        row_limit = stride * factor
        blend_extent = self.tile_sample_size - row_limit
        rows = []
        for i in range(0, latents.shape[2], stride):
            row = []
            for j in range(0, latents.shape[3], stride):
                pixels = (..., slice(i * factor, (i + tile) * factor), slice(j * factor, (j + tile) * factor))
                row.append(self._decode(latents[..., i : i + tile, j : j + tile], image[pixels], mask[pixels]))
            rows.append(row)
        result_rows = []
        for i, row in enumerate(rows):
            parts = []
            for j, part in enumerate(row):
                if i > 0:
                    part = self.blend_v(rows[i - 1][j], part, blend_extent)
                if j > 0:
                    part = self.blend_h(row[j - 1], part, blend_extent)
                parts.append(part[:, :, :row_limit, :row_limit])
            result_rows.append(torch.cat(parts, dim=3))
        return torch.cat(result_rows, dim=2)


def _binary_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resizes the mask and marks every touched position as hole (any value > 0 becomes 1)."""
    return (F.interpolate(mask, size=tuple(size), mode="area") > 0).to(mask.dtype)


def _blend(sample: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keeps the decoder state inside the hole and the condition feature outside it."""
    return sample * mask + feature * (1 - mask)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
