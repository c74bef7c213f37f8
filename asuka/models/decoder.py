"""ASUKA's mask-conditioned KL decoder.

The body is diffusers' own VAE `Decoder` (parameter names identical to `AutoencoderKL.decoder`), so any
AutoencoderKL decoder can be copied in (`AsukaDecoder.from_vae`). A small convolutional condition
encoder looks at the known pixels, `cat((1 - mask) * image, mask)`, and its features replace the
decoder state outside the hole before every up level and once more at full resolution. Inside the
hole the plain VAE decoding is kept, so with an all-ones mask the output is exactly `vae.decode`.

Because each blend discards the decoder state outside the hole, the convolution that ends each up level (the
upsampler's) is computed only over the hole's bounding box at that level: the same output for fewer FLOPs, the
more so the smaller the hole.

This module ships to the Hub as remote code: it imports only torch and diffusers.
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder, DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D
from diffusers.models.upsampling import Upsample2D


HoleBox = tuple[int, int, int, int]  # (top, left, bottom, right) in output pixels, bottom/right exclusive
NO_HOLE: HoleBox = (0, 0, 0, 0)


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
    """Mask-conditioned KL decoder (ASUKA, CVPR 2025).

    `forward(latents, image, mask)` decodes UNSCALED latents (SD: `z / scaling_factor`; FLUX:
    `z / 0.3611 + 0.1159`) while copying the known region's appearance from `image` (in [-1, 1], at the
    output resolution); `mask` is (B, 1, H, W) in [0, 1] with 1 = hole (the pipelines pass binary masks). Its
    values are checked in the one device sync that finds the hole's box, skipped when the caller gives `hole_box`.

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

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        """`fn(sample)` for a decoder stage, checkpointed when gradient checkpointing is enabled."""
        if torch.is_grad_enabled() and self.decoder.gradient_checkpointing:
            return self.decoder._gradient_checkpointing_func(fn, sample)
        return fn(sample)

    @staticmethod
    def hole_box(mask: torch.Tensor) -> HoleBox:
        """The smallest `(top, left, bottom, right)` box holding every nonzero pixel of `mask` over the whole batch,
        `(0, 0, 0, 0)` when there is none. One device sync, which also checks that the values lie in [0, 1].
        Meta tensors have no values: their box is the whole map.
        """
        height, width = mask.shape[-2:]
        if mask.device.type == "meta":
            return (0, 0, height, width)
        if mask.numel() == 0:
            return NO_HOLE
        touched = (mask != 0).flatten(0, -3).any(dim=0)
        stats = [((mask < 0) | (mask > 1)).any().long()]
        for flags in (touched.any(dim=1), touched.any(dim=0)):
            index = torch.arange(flags.numel(), device=flags.device)
            stats += [torch.where(flags, index, flags.numel()).min(), torch.where(flags, index, -1).max() + 1]
        out_of_range, top, bottom, left, right = torch.stack(stats).tolist()
        if out_of_range:
            raise ValueError("`mask` values must lie in [0, 1] (1 = hole).")
        return (top, left, bottom, right) if top < bottom else NO_HOLE

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
        hole_box: HoleBox | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decodes `latents`, taking the region outside `mask` from `image` through the condition encoder.

        `hole_box` (`(top, left, bottom, right)` in output pixels, bottom/right exclusive) must hold every nonzero
        pixel of `mask`; it is computed from `mask` (one device sync) when not given, except under `torch.compile`,
        where the box is the whole map (no data-dependent graph break; the box only saves FLOPs, the output is the
        same).
        """
        self._check_shapes(latents, image, mask)
        if hole_box is not None:
            box = _checked_box(hole_box, image.shape[-2:])
        elif torch.compiler.is_compiling():  # no data-dependent box in a graph: the whole map, the same output
            box = (0, 0, *image.shape[-2:])
        else:
            box = self.hole_box(mask)
        latents, image, mask = (t.to(self.dtype) for t in (latents, image, mask))
        if self.use_tiling and max(latents.shape[-2:]) > self.tile_sample_size // self.scale_factor:
            sample = self._tiled_decode(latents, image, mask, box)
        else:
            sample = self._decode(latents, image, mask, box)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def _decode(self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, box: HoleBox) -> torch.Tensor:
        # 1. Condition features, once per call, from full resolution down. Each is popped (smallest first) when
        #    blended, so it is freed before the larger up levels run: lower peak memory, same result.
        features = self.condition_encoder(torch.cat([(1 - mask) * image, mask], dim=1))

        # 2. The body, as diffusers' `AutoencoderKL._decode` + `Decoder.forward` walk it, with the blends. Without a
        #    hole every blend keeps only the condition features, so the body is skipped.
        decoder = self.decoder
        if _is_empty(box):
            sample = features[0]
        else:
            if self.post_quant_conv is not None:
                latents = self.post_quant_conv(latents)
            sample = self._run(decoder.mid_block, decoder.conv_in(latents))
            region = None  # the box of the map that `sample` holds; None: all of it
            for up_block in decoder.up_blocks:
                feature = features.pop()
                sample = _blend(sample, feature, _binary_mask(mask, feature.shape[-2:]), region)
                sample, region = self._up_level(up_block, sample, box, image.shape[-2])
            sample = _blend(sample, features.pop(), mask, region)

        # 3. Post-process, as in diffusers' `Decoder.forward`.
        sample = decoder.conv_norm_out(sample)
        sample = decoder.conv_act(sample)
        return decoder.conv_out(sample)

    def _up_level(
        self, block: nn.Module, sample: torch.Tensor, box: HoleBox, image_height: int
    ) -> tuple[torch.Tensor, HoleBox | None]:
        """Runs an up block; when its upsampler allows, its last convolution only over the hole's `box` (in image
        pixels) at the block's output resolution. Returns the output and the box it covers (None: all of it)."""
        upsampler = _croppable_upsampler(block)
        if upsampler is None:
            return self._run(block, sample), None
        height, width = 2 * sample.shape[-2], 2 * sample.shape[-1]
        level = _scaled_box(box, image_height // height)
        if level == (0, 0, height, width):
            return self._run(block, sample), None
        top, left, bottom, right = level

        def block_in_box(sample: torch.Tensor) -> torch.Tensor:
            for resnet in block.resnets:
                sample = resnet(sample, None)
            # The rows and columns before the 2x nearest upsampling that the 3x3 convolution reads for the box, with
            # one row of margin where the box does not reach the border (its zero padding is dropped below).
            in_top, in_left = max(top - 1, 0) // 2, max(left - 1, 0) // 2
            in_bottom = min(-(-(bottom + 1) // 2), sample.shape[-2])
            in_right = min(-(-(right + 1) // 2), sample.shape[-1])
            out = upsampler(sample[..., in_top:in_bottom, in_left:in_right])
            return out[..., top - 2 * in_top : bottom - 2 * in_top, left - 2 * in_left : right - 2 * in_left]

        return self._run(block_in_box, sample), level

    def _tiled_decode(
        self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, box: HoleBox
    ) -> torch.Tensor:
        """`_decode` over overlapping latent tiles (each with its part of `box`), blended like
        `AutoencoderKL.tiled_decode`."""
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
                tile_box = _box_in_tile(box, i * factor, j * factor, mask[pixels].shape[-2:])
                row.append(
                    self._decode(latents[..., i : i + tile, j : j + tile], image[pixels], mask[pixels], tile_box)
                )
            rows.append(row)
        result_rows = []
        for i, row in enumerate(rows):
            parts = []
            for j, part in enumerate(row):
                if i > 0:
                    part = self.blend_v(a=rows[i - 1][j], b=part, blend_extent=blend_extent)
                if j > 0:
                    part = self.blend_h(a=row[j - 1], b=part, blend_extent=blend_extent)
                parts.append(part[:, :, :row_limit, :row_limit])
            result_rows.append(torch.cat(parts, dim=3))
        return torch.cat(result_rows, dim=2)


def _binary_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-resizes the mask and marks every touched position as hole (any value > 0 becomes 1)."""
    return (F.interpolate(mask, size=tuple(size), mode="area") > 0).to(mask.dtype)


def _blend(
    sample: torch.Tensor, feature: torch.Tensor, mask: torch.Tensor, region: HoleBox | None = None
) -> torch.Tensor:
    """Keeps the decoder state inside the hole and the condition feature outside it. When `sample` holds only the
    `region` box of the map (which contains the hole), the feature is kept everywhere else."""
    if region is None:
        return sample * mask + feature * (1 - mask)
    top, left, bottom, right = region
    inside = (..., slice(top, bottom), slice(left, right))
    blended = feature.clone()
    blended[inside] = sample * mask[inside] + feature[inside] * (1 - mask[inside])
    return blended


def _is_empty(box: HoleBox) -> bool:
    return box[0] >= box[2] or box[1] >= box[3]


def _scaled_box(box: HoleBox, factor: int) -> HoleBox:
    """`box` at a resolution `factor` times coarser: every position that covers a pixel of it."""
    top, left, bottom, right = box
    return (top // factor, left // factor, -(-bottom // factor), -(-right // factor))


def _box_in_tile(box: HoleBox, top: int, left: int, size: tuple[int, int]) -> HoleBox:
    """The part of `box` inside the tile of `size` at (`top`, `left`), in the tile's pixels (empty when none)."""
    return (max(box[0] - top, 0), max(box[1] - left, 0), min(box[2] - top, size[0]), min(box[3] - left, size[1]))


def _checked_box(box: object, size: tuple[int, int]) -> HoleBox:
    """`hole_box` as a tuple of four ints inside the image of `size`."""
    height, width = size
    if (
        not isinstance(box, (tuple, list))
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
        or not (0 <= box[0] <= box[2] <= height and 0 <= box[1] <= box[3] <= width)
    ):
        raise ValueError(
            f"`hole_box` must be (top, left, bottom, right) ints with 0 <= top <= bottom <= {height} and "
            f"0 <= left <= right <= {width} (the image's size), got {box!r}."
        )
    return tuple(box)


def _croppable_upsampler(block: nn.Module) -> Upsample2D | None:
    """The upsampler of a diffusers `UpDecoderBlock2D` whose last step is a plain 2x nearest upsampling and a
    3x3 convolution (padding 1), which can be computed over a box alone; None for any other block."""
    upsamplers = getattr(block, "upsamplers", None)
    if not isinstance(block, UpDecoderBlock2D) or upsamplers is None or len(upsamplers) != 1:
        return None
    upsampler = upsamplers[0]
    conv = getattr(upsampler, "conv", None)
    plain = (
        isinstance(upsampler, Upsample2D)
        and upsampler.use_conv
        and upsampler.interpolate
        and not upsampler.use_conv_transpose
        and upsampler.norm is None
        and isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
    )
    return upsampler if plain else None


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__}"
