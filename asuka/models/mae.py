"""The inpainting MAE of ASUKA: a ViT masked autoencoder whose decoder state is the generation prior.

Ships to the Hub as remote code: imports only torch, diffusers, timm, numpy, PIL and the stdlib.
"""

import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


logger = logging.get_logger(name=__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The orders in which `AsukaMAE` makes its input at `image_size` (see its docstring).
INPUT_PREPROCESSING = ("visible", "reference")


def _check_resize_inputs(images: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    """`size` as a (height, width) pair, after checking that `images` is a (B, C, H, W) float tensor."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a float tensor of shape (B, C, H, W), got {got}.")
    if images.shape[-2] == 0 or images.shape[-1] == 0:
        raise ValueError(f"`images` must be non-empty, got shape {tuple(images.shape)}.")
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ValueError(f"`size` must be (height, width), two positive integers, got {size!r}.")
    return int(size[0]), int(size[1])


def _two_tap_table(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV's `INTER_AREA` rule along an axis of an image that grows on some axis: output pixel `d` blends source
    pixels `low` and `high` (clamped to the border), the latter by the float32 `fraction` of the output pixel that its
    cell spends past `low`."""
    inv_scale = dst / src
    scale = 1 / inv_scale  # from the inverse, in double precision, as OpenCV computes it
    out = torch.arange(dst, dtype=torch.float64)
    left = (out * scale).floor()
    fraction = ((out + 1) - (left + 1) * inv_scale).float()  # float32 in OpenCV, then wrapped to [0, 1)
    fraction = torch.where(fraction <= 0, 0.0, fraction - fraction.floor())
    return left.clamp(0, src - 1).long(), (left + 1).clamp(0, src - 1).long(), fraction


def _area_weights(src: int, dst: int, shrink: bool) -> torch.Tensor:
    """The (dst, src) float32 weights of OpenCV's `INTER_AREA` along one axis (computed in float64, stored in float32
    as OpenCV stores them).

    With `shrink` (no axis of the image grows), output pixel `d` is the mean of the source cell `[d * scale,
    (d + 1) * scale)`, the pixels cut by its edges weighted by the part they cover (an edge within 1e-3 of a pixel
    border counts as on it); otherwise `_two_tap_table`'s blend of two neighbours.
    """
    if not shrink:
        low, high, fraction = _two_tap_table(src, dst)
        return (1 - fraction)[:, None] * F.one_hot(low, src) + fraction[:, None] * F.one_hot(high, src)
    scale = 1 / (dst / src)
    start = torch.arange(dst, dtype=torch.float64)[:, None] * scale
    source = torch.arange(src, dtype=torch.float64)[None, :]
    end = start + scale
    cell = (src - start).clamp(max=scale)
    last = end.floor().clamp(max=src - 1)
    first = torch.minimum(start.ceil(), last)
    head = torch.where(first - start > 1e-3, (first - start) / cell, 0.0)
    tail = torch.where(end - last > 1e-3, (end - last).clamp(max=1).minimum(cell) / cell, 0.0)
    inner = ((source >= first) & (source < last)) / cell
    return (inner + head * (source == first - 1) + tail * (source == last)).float()


def resize_area(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize `images` (B, C, H, W) to `size` (height, width) as `cv2.resize(..., interpolation=cv2.INTER_AREA)` does
    on float images.

    The reference prepares the MAE input with OpenCV, so this is OpenCV's rule, for any size and aspect ratio: area
    averaging when no side grows, else OpenCV's two-tap area interpolation on both axes (also when only one side
    grows). Two weight matrices applied by matrix products: any device and float dtype, differentiable. An image
    already at `size` is returned as is (OpenCV copies it).
    """
    height, width = _check_resize_inputs(images, size)
    if tuple(images.shape[-2:]) == (height, width):
        return images
    shrink = height <= images.shape[-2] and width <= images.shape[-1]
    rows = _area_weights(images.shape[-2], height, shrink).to(images.device, images.dtype)
    cols = _area_weights(images.shape[-1], width, shrink).to(images.device, images.dtype)
    return rows @ images @ cols.T


def resize_nearest(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize `images` (B, C, H, W) to `size` (height, width) as `cv2.resize(..., interpolation=cv2.INTER_NEAREST)`:
    output pixel `d` of an axis takes source pixel `min(floor(d * src / dst), src - 1)`, the ratio computed as
    OpenCV does."""
    height, width = _check_resize_inputs(images, size)
    if tuple(images.shape[-2:]) == (height, width):
        return images

    def index(src: int, dst: int) -> torch.Tensor:
        positions = torch.arange(dst, dtype=torch.float64) * (1 / (dst / src))
        return positions.floor().clamp(max=src - 1).long().to(images.device)

    rows, cols = index(images.shape[-2], height), index(images.shape[-1], width)
    return images.index_select(-2, rows).index_select(-1, cols)


def _opencv_integer_factor(src: int, dst: int) -> int | None:
    """`src / dst` when OpenCV takes it as an integer shrink factor (its `is_area_fast` test), else None."""
    scale = 1 / (dst / src)
    return round(scale) if abs(scale - round(scale)) < sys.float_info.epsilon else None


def _sum_area_taps(values: torch.Tensor, dim: int, src: int, dst: int) -> torch.Tensor:
    """`values` shrunk along `dim` (-1 or -2) by OpenCV's area weights, the taps of each output pixel added one after
    the other in float32, in OpenCV's order, so that sums that tie at .5 land where OpenCV's do."""
    weights = _area_weights(src, dst, shrink=True)
    taps = weights != 0
    count, first = taps.sum(dim=1), taps.int().argmax(dim=1)
    shape = (-1,) if dim == -1 else (-1, 1)
    total = values.new_zeros(())
    for k in range(int(count.max())):
        index = (first + k).clamp(max=src - 1)
        weight = weights.gather(1, index[:, None])[:, 0] * (k < count)  # 0 once a pixel's taps are used up
        total = total + values.index_select(dim, index.to(values.device)) * weight.view(shape).to(values.device)
    return total


def _fixed_point_taps(src: int, dst: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`_two_tap_table` with the weights in OpenCV's 11-bit fixed point: low, high, low weight, high weight."""
    low, high, fraction = _two_tap_table(src, dst)
    weights = [((1 - fraction) * 2048).round().long(), (fraction * 2048).round().long()]
    return tuple(t.to(device) for t in (low, high, *weights))


def _area_uint8(levels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's `INTER_AREA` of 8-bit levels (a float tensor of integers in [0, 255]) computed with OpenCV's 8-bit
    arithmetic, so the result is OpenCV's bytes. OpenCV has three paths:

    - integer factors on both axes: block sums times `1 / area` in float32, rounded to even; halving both sides of
      1, 3 or 4 channels (its vector path) rounds `(sum + 2) >> 2` instead;
    - other shrinks: float32 sums of the taps in OpenCV's order, horizontal first, rounded to even;
    - an axis grows: 11-bit fixed-point taps, the horizontal pass exact, the vertical blend at the precision of
      OpenCV's vector code (`((h >> 4) * beta) >> 16` per tap, then `(sum + 2) >> 2`).
    """
    (src_h, src_w), (height, width) = levels.shape[-2:], size
    if height <= src_h and width <= src_w:
        factor_y, factor_x = _opencv_integer_factor(src_h, height), _opencv_integer_factor(src_w, width)
        if factor_y is not None and factor_x is not None:
            sums = levels.unflatten(-1, (width, factor_x)).unflatten(-3, (height, factor_y)).sum(dim=(-3, -1))
            if factor_y == factor_x == 2 and levels.shape[-3] in (1, 3, 4):
                return ((sums + 2) / 4).floor()
            return (sums * torch.tensor(1 / (factor_y * factor_x), dtype=torch.float32)).round()
        return _sum_area_taps(_sum_area_taps(levels, -1, src_w, width), -2, src_h, height).round()
    ints = levels.long()
    low, high, w_low, w_high = _fixed_point_taps(src_w, width, ints.device)
    rows = ints.index_select(-1, low) * w_low + ints.index_select(-1, high) * w_high
    low, high, w_low, w_high = _fixed_point_taps(src_h, height, ints.device)
    blend = (((rows.index_select(-2, low) >> 4) * w_low[:, None]) >> 16) + (
        ((rows.index_select(-2, high) >> 4) * w_high[:, None]) >> 16
    )
    return ((blend + 2) >> 2).clamp(0, 255).to(levels.dtype)


def resize_area_8bit(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize `images` (B, C, H, W) in [0, 1] to `size` (height, width) as `cv2.resize(..., cv2.INTER_AREA)` resizes
    the `uint8` image they were read from.

    An image counts as 8-bit when every value lies within 1e-3 of a 1/255 step (as `uint8 / 255` in float32 does);
    its levels are then resized with OpenCV's own 8-bit arithmetic and rounding, so the result is OpenCV's bytes
    divided by 255. Any other image (decided per image) is resized as it is, by `resize_area`. Rounding stops
    gradients: this is for inference. An image already at `size` is returned as is.
    """
    height, width = _check_resize_inputs(images, size)
    if tuple(images.shape[-2:]) == (height, width):
        return images
    levels = images * 255
    on_grid = ((levels - levels.round()).abs() < 1e-3).flatten(1).all(dim=1).view(-1, 1, 1, 1)
    opencv_bytes = _area_uint8(levels.round().float(), (height, width)).to(images.dtype)
    return torch.where(on_grid, opencv_bytes / 255, resize_area(images, (height, width)))


@dataclass
class AsukaMAEOutput(BaseOutput):
    """Output of [`AsukaMAE`].

    Args:
        prior (`torch.Tensor` of shape `(batch_size, num_patches, decoder_embed_dim)`):
            Decoder hidden state after `prior_layer` blocks (no final norm): the conditioning the aligner maps.
        reconstruction (`torch.Tensor` of shape `(batch_size, 3, image_size, image_size)`):
            The MAE's own pixel estimate in [0, 1] pixel space (not clamped).
    """

    prior: torch.Tensor = None
    reconstruction: torch.Tensor = None


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of MAE (no cls token), shape `(1, grid_size**2, embed_dim)`.

    The first half of the channels encodes the column index, the second half the row index; each half is
    `[sin(pos * omega), cos(pos * omega)]` with `omega_i = 10000 ** (-i / (embed_dim / 4))`.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"`embed_dim` must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}.")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float().unsqueeze(0)


def _check_input_preprocessing(value: str, name: str) -> None:
    if value not in INPUT_PREPROCESSING:
        raise ValueError(f"`{name}` is {value!r}; accepted: {', '.join(map(repr, INPUT_PREPROCESSING))}.")


class AsukaMAE(ModelMixin, ConfigMixin):
    r"""
    ASUKA's inpainting MAE (ViT encoder + ViT decoder, no cls token), as released for ASUKA-FLUX.

    Input handling (done inside the model, so callers pass plain images in [0, 1] of any size), in one of two orders
    named by `input_preprocessing` (a call may override it):
    - `"visible"`: `mask` is binarised (`>= 0.5` is hole) and the hole zeroed at the input resolution, so nothing
      downstream sees hole pixels; image and mask are resized to `image_size` (`resize_area`, `resize_nearest`), the
      image ImageNet-normalised and the hole zeroed again. The prior depends on visible pixels only. What this
      project's training makes.
    - `"reference"`: the authors' release (`prepare_data`): the image is resized with its hole content present
      (`resize_area_8bit`: OpenCV's bytes for an image on the 1/255 grid, as read from a `uint8` file), the mask is
      resized nearest and kept as given (not binarised), the normalised image is zeroed where the resized mask is
      `>= 0.5`, and the resized mask is what the model goes on with. The release's numbers come from this order.
    Both resizes are OpenCV's (`INTER_AREA`, `INTER_NEAREST`), in torch; an input at `image_size` is not resized.

    Masking: a patch is masked when its area-averaged mask is > 0. In the encoder no token attends to masked
    tokens (a sample with no visible token attends freely: its encoder output is discarded anyway). The decoder
    replaces masked tokens by `mask_token`; partially masked patches become `t * alpha + e * (1 - alpha)` with
    `e = decoder_patch_embed(cat(x * (1 - mask), mask))` on the normalised, hole-zeroed image `x`. The decoder
    attends to all tokens. The prior is finite for empty and full masks.

    Parameters:
        image_size (`int`, *optional*, defaults to 256): Working resolution of the ViT.
        patch_size (`int`, *optional*, defaults to 16): Patch size.
        in_channels (`int`, *optional*, defaults to 3): Image channels.
        embed_dim (`int`, *optional*, defaults to 768): Encoder width.
        depth (`int`, *optional*, defaults to 12): Encoder blocks.
        num_heads (`int`, *optional*, defaults to 12): Encoder attention heads.
        decoder_embed_dim (`int`, *optional*, defaults to 512): Decoder width (= prior width).
        decoder_depth (`int`, *optional*, defaults to 8): Decoder blocks.
        decoder_num_heads (`int`, *optional*, defaults to 16): Decoder attention heads.
        mlp_ratio (`float`, *optional*, defaults to 4.0): MLP expansion of every block.
        norm_eps (`float`, *optional*, defaults to 1e-6): LayerNorm epsilon.
        prior_layer (`int`, *optional*, defaults to 6): Number of decoder blocks run before the prior is read.
        input_preprocessing (`str`, *optional*, defaults to `"visible"`): How the input is made, `"visible"` or
            `"reference"` (see above). A saved config without it loads as `"visible"`, with a warning.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 256,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        prior_layer: int = 6,
        input_preprocessing: str = "visible",
    ):
        super().__init__()
        _check_input_preprocessing(input_preprocessing, "input_preprocessing")
        if image_size % patch_size != 0:
            raise ValueError(f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size}).")
        if not 0 <= prior_layer <= decoder_depth:
            raise ValueError(f"`prior_layer` must be in [0, decoder_depth={decoder_depth}], got {prior_layer}.")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        grid_size = image_size // patch_size

        # encoder
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, embed_dim)
        self.register_buffer("pos_embed", get_2d_sincos_pos_embed(embed_dim, grid_size))
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_embed_dim) * 0.02)
        self.decoder_patch_embed = PatchEmbed(image_size, patch_size, in_channels + 1, decoder_embed_dim)
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("decoder_pos_embed", get_2d_sincos_pos_embed(decoder_embed_dim, grid_size))
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_channels)

    @property
    def num_patches(self) -> int:
        """Number of tokens N of the prior."""
        return (self.config.image_size // self.config.patch_size) ** 2

    def _check_inputs(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        channels = self.config.in_channels
        if (
            not isinstance(image, torch.Tensor)
            or not image.is_floating_point()
            or image.ndim != 4
            or image.shape[1] != channels
        ):
            got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"`image` must be a float tensor of shape (B, {channels}, H, W) in [0, 1], got {got}.")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"`mask` must be a tensor of shape (B, 1, H, W) with 1 = hole, got {got}.")
        if mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"`mask` {tuple(mask.shape)} must match `image` {tuple(image.shape)} in batch size, height and width."
            )
        if image.shape[0] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
            raise ValueError(f"`image` must be non-empty, got shape {tuple(image.shape)}.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "AsukaMAE":
        """`ModelMixin.from_pretrained`, warning when the saved config predates `input_preprocessing`."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        if "input_preprocessing" in model.config.get("_use_default_values", ()):
            logger.warning(
                f"The AsukaMAE config of {pretrained_model_name_or_path} has no `input_preprocessing`; it loads as "
                '"visible". A folder converted from the ASUKA-FLUX release wants "reference": convert it again with '
                "`python -m asuka.convert asuka-flux --release yikaiwang/ASUKA-FLUX.1-Fill --out DIR`."
            )
        return loaded

    def resolve_input_preprocessing(self, mae_input_preprocessing: str | None = None) -> str:
        """The input order of a call given `mae_input_preprocessing`: that value, or the config's when it is None; a
        `ValueError` for any other value (the pipelines check their argument with it)."""
        if mae_input_preprocessing is None:
            return self.config.input_preprocessing
        _check_input_preprocessing(mae_input_preprocessing, "mae_input_preprocessing")
        return mae_input_preprocessing

    def preprocess(
        self, image: torch.Tensor, mask: torch.Tensor, mae_input_preprocessing: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MAE input at `image_size`: the normalised image with the hole zeroed, and the mask the model goes on
        with (binary for `"visible"`, as given for `"reference"`); `mae_input_preprocessing=None` uses the config's
        order. Resized in float32 at least, then cast to the model's dtype."""
        preprocessing = self.resolve_input_preprocessing(mae_input_preprocessing)
        self._check_inputs(image, mask)
        dtype = torch.promote_types(self.dtype, torch.float32)
        image, mask = image.to(self.device, dtype), mask.to(self.device, dtype)
        size = (self.config.image_size, self.config.image_size)
        if preprocessing == "visible":
            mask = (mask >= 0.5).to(dtype)
            image = resize_area(image * (1 - mask), size)
        else:
            image = resize_area_8bit(image, size)
        mask = resize_nearest(mask, size)
        mean = image.new_tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
        std = image.new_tensor(IMAGENET_STD).view(1, -1, 1, 1)
        return ((image - mean) / std * (mask < 0.5)).to(self.dtype), mask.to(self.dtype)

    def _unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.in_channels
        g = self.config.image_size // p
        patches = patches.reshape(patches.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(patches.shape[0], c, g * p, g * p)

    def _run(
        self, image: torch.Tensor, mask: torch.Tensor, mae_input_preprocessing: str | None, reconstruct: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = self.preprocess(image, mask, mae_input_preprocessing)
        return self._network(x, mask, reconstruct)

    def _network(
        self, x: torch.Tensor, mask: torch.Tensor, reconstruct: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network on the preprocessed input (`image_size` square, whatever the image's size)."""
        grid = self.config.image_size // self.config.patch_size
        coverage = F.interpolate(mask, size=(grid, grid), mode="area").flatten(1)  # hole fraction per patch
        masked = coverage > 0
        partial_masked = masked & (coverage < 1)

        # 1. encoder: nobody attends to masked tokens; a sample without visible tokens attends freely
        visible = ~masked
        visible = visible | ~visible.any(dim=1, keepdim=True)
        attn_mask = visible[:, None, None, :]
        h = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            h = block(h, attn_mask=attn_mask)
        h = self.decoder_embed(self.norm(h))

        # 2. decoder entry: mask tokens, partial patches blended with a 4-channel embedding of the visible pixels
        h = torch.where(masked[..., None], self.mask_token.to(h.dtype), h)
        alpha = self.alpha.clamp(0.0, 1.0)
        embedded = self.decoder_patch_embed(torch.cat([x * (1 - mask), mask], dim=1))
        h = torch.where(partial_masked[..., None], h * alpha + embedded * (1 - alpha), h)
        h = h + self.decoder_pos_embed

        # 3. decoder blocks; the prior is read after `prior_layer` of them
        prior_layer = self.config.prior_layer
        for block in self.decoder_blocks[:prior_layer]:
            h = block(h)
        prior = h
        if not reconstruct:
            return prior, None
        for block in self.decoder_blocks[prior_layer:]:
            h = block(h)
        reconstruction = self._unpatchify(self.decoder_pred(self.decoder_norm(h)))
        mean = reconstruction.new_tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
        std = reconstruction.new_tensor(IMAGENET_STD).view(1, -1, 1, 1)
        return prior, reconstruction * std + mean

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """`torch.compile` (its arguments) of the network after the resize to `image_size`, which `forward`,
        `prior` and `reconstruct` all run: its input is always `image_size` square, so a new image size compiles
        nothing (the resize, `preprocess`, runs eagerly, and `forward` stays a plain call for the offloading hooks)."""
        self._network = torch.compile(self._network, *args, **kwargs)

    def prior(
        self, image: torch.Tensor, mask: torch.Tensor, mae_input_preprocessing: str | None = None
    ) -> torch.Tensor:
        """The generation prior `(B, num_patches, decoder_embed_dim)` of `image` (B, 3, H, W) in [0, 1] and
        `mask` (B, 1, H, W), 1 = hole, of any H, W. `mae_input_preprocessing` (`"visible"`, `"reference"`) overrides
        the config's order of input handling for this call.

        It runs through `forward` (without the reconstruction), so the offloading hooks of `enable_model_cpu_offload`,
        `enable_sequential_cpu_offload` and `enable_group_offload` load the MAE's own weights for it."""
        return self(
            image, mask, return_dict=False, mae_input_preprocessing=mae_input_preprocessing, reconstruct=False
        )[0]

    def reconstruct(
        self, image: torch.Tensor, mask: torch.Tensor, mae_input_preprocessing: str | None = None
    ) -> torch.Tensor:
        """The MAE's pixel estimate `(B, 3, image_size, image_size)` in [0, 1] pixel space (not clamped); arguments
        as [`~AsukaMAE.prior`]."""
        return self(image, mask, return_dict=False, mae_input_preprocessing=mae_input_preprocessing)[1]

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        return_dict: bool = True,
        mae_input_preprocessing: str | None = None,
        reconstruct: bool = True,
    ) -> AsukaMAEOutput | tuple[torch.Tensor, torch.Tensor | None]:
        """Prior and reconstruction in one pass (the reconstruction `None` with `reconstruct=False`, which skips the
        decoder blocks after the prior); see [`~AsukaMAE.prior`] and [`~AsukaMAE.reconstruct`]."""
        prior, reconstruction = self._run(image, mask, mae_input_preprocessing, reconstruct=reconstruct)
        if not return_dict:
            return prior, reconstruction
        return AsukaMAEOutput(prior=prior, reconstruction=reconstruction)
