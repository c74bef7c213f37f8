"""The inpainting MAE of ASUKA: a ViT masked autoencoder whose decoder state is the generation prior.

Ships to the Hub as remote code: imports only torch, diffusers, timm, numpy, PIL and the stdlib.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class AsukaMAE(ModelMixin, ConfigMixin):
    r"""
    ASUKA's inpainting MAE (ViT encoder + ViT decoder, no cls token), as released for ASUKA-FLUX.

    Input handling (done inside the model, so callers pass plain images):
    1. `mask` is binarised (`>= 0.5` is hole) and the hole is zeroed in `image` at the input resolution, so
       nothing downstream can see hole pixels.
    2. Both are resized to `image_size` (area interpolation for the image, nearest for the mask).
    3. The image is ImageNet-normalised and the hole set to 0 again.

    Masking: a patch is masked when its area-averaged mask is > 0. In the encoder no token attends to masked
    tokens (a sample with no visible token attends freely: its encoder output is discarded anyway). The decoder
    replaces masked tokens by `mask_token`; partially masked patches become `t * alpha + e * (1 - alpha)` with
    `e = decoder_patch_embed(cat(x, mask))` on the normalised, hole-zeroed image `x`. The decoder attends to all
    tokens. Hence the prior depends only on visible pixels and is finite for empty and full masks.

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
    """

    # Same shape as the other components' config signatures (boilerplate): the config is these arguments (diffusers).
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
    ):
        super().__init__()
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

    def preprocess(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalised, hole-zeroed image and the binary hole mask, both at `image_size`."""
        self._check_inputs(image, mask)
        image = image.to(device=self.device, dtype=self.dtype)
        hole = (mask.to(device=self.device) >= 0.5).to(self.dtype)
        image = image * (1 - hole)
        size = (self.config.image_size, self.config.image_size)
        if image.shape[2:] != size:
            image = F.interpolate(image, size=size, mode="area")
            hole = F.interpolate(hole, size=size, mode="nearest")
        mean = image.new_tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
        std = image.new_tensor(IMAGENET_STD).view(1, -1, 1, 1)
        return (image - mean) / std * (1 - hole), hole

    def _unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        p, c = self.config.patch_size, self.config.in_channels
        g = self.config.image_size // p
        patches = patches.reshape(patches.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(patches.shape[0], c, g * p, g * p)

    def _run(
        self, image: torch.Tensor, mask: torch.Tensor, reconstruct: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, hole = self.preprocess(image, mask)
        grid = self.config.image_size // self.config.patch_size
        coverage = F.interpolate(hole, size=(grid, grid), mode="area").flatten(1)  # hole fraction per patch
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
        embedded = self.decoder_patch_embed(torch.cat([x, hole], dim=1))
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

    @apply_forward_hook  # so `enable_model_cpu_offload` moves the MAE to the accelerator for this non-forward entry
    def prior(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The generation prior `(B, num_patches, decoder_embed_dim)` of `image` (B, 3, H, W) in [0, 1] and
        `mask` (B, 1, H, W), 1 = hole. Any H, W; depends only on pixels outside the hole."""
        return self._run(image, mask, reconstruct=False)[0]

    @apply_forward_hook
    def reconstruct(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The MAE's pixel estimate `(B, 3, image_size, image_size)` in [0, 1] pixel space (not clamped)."""
        return self._run(image, mask, reconstruct=True)[1]

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, return_dict: bool = True
    ) -> AsukaMAEOutput | tuple[torch.Tensor, torch.Tensor]:
        """Prior and reconstruction in one pass; see [`~AsukaMAE.prior`] and [`~AsukaMAE.reconstruct`]."""
        prior, reconstruction = self._run(image, mask, reconstruct=True)
        if not return_dict:
            return prior, reconstruction
        return AsukaMAEOutput(prior=prior, reconstruction=reconstruction)
