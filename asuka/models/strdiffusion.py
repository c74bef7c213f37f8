"""StrDiffusion networks: the IR-SDE noise-predicting UNet (texture variant with SPADE structure guidance,
structure variant without) and the time-dependent discriminator.

Module names mirror the authors' state-dict keys, so their checkpoints load after stripping `module.`
(see `asuka.convert.strdiffusion`). Everything is plain PyTorch: the discriminator's FIR down-sampling
(upfirdn2d, down 2, pad 1/1, [1,3,3,1] kernel) is a padded depthwise stride-2 convolution.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin, cos] embedding of raw integer steps with dim/2 frequencies exp(-k ln(1e4) / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _as_time_tensor(time: int | float | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(time, (int, float)):
        return torch.tensor([time], device=device)
    if not isinstance(time, torch.Tensor) or time.ndim > 1:
        raise ValueError(f"time must be an int or a tensor of shape [B] or [], got {time!r}.")
    return time.reshape(-1).to(device)


class SinusoidalEmbedding(nn.Module):
    """Parameter-free sinusoidal embedding (a module so that the `time_mlp.N` key indices match)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _sinusoidal(t, self.dim)


class ChannelLayerNorm(nn.Module):
    """Per-pixel normalisation over channels (biased variance, eps 1e-5), gain only (key `g`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class ConvBlock(nn.Module):
    """Bias-free 3x3 conv, optional time scale/shift, SiLU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Conv2d(dim_in, dim_out, 3, padding=1, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale_shift: tuple | None = None) -> torch.Tensor:
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResBlock(nn.Module):
    """Two conv blocks with a time-conditioned scale/shift after the first; 1x1 shortcut on width change."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = ConvBlock(dim_in, dim_out)
        self.block2 = ConvBlock(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim_in, dim_out, 1, bias=False) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale_shift = self.mlp(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift=scale_shift))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    """Linear attention (softmax over channels for q, over positions for k); output 1x1 conv + LayerNorm."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.scale = head_dim**-0.5
        hidden = heads * head_dim
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, -1, h * w) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (h * w)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class PreNormResidual(nn.Module):
    """x + fn(LayerNorm(x)); the nesting (`fn.fn`, `fn.norm`) mirrors the authors' Residual(PreNorm(...))."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.fn = nn.Module()
        self.fn.fn = LinearAttention(dim, heads, head_dim)
        self.fn.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.fn(self.fn.norm(x)) + x


class SpectralNormConv2d(nn.Conv2d):
    """Conv2d whose weight is `weight_orig / sigma`, sigma = u^T W v (keys weight_orig, weight_u, weight_v,
    as torch's spectral_norm stores them). In training mode one power iteration refreshes u, v first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        weight = self.weight.detach()
        del self.weight
        self.weight_orig = nn.Parameter(weight)
        out_channels = weight.shape[0]
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer("weight_v", F.normalize(torch.randn(weight[0].numel()), dim=0, eps=1e-12))

    def normalized_weight(self) -> torch.Tensor:
        matrix = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        if self.training:
            with torch.no_grad():
                self.weight_v.copy_(F.normalize(torch.mv(matrix.t(), self.weight_u), dim=0, eps=1e-12))
                self.weight_u.copy_(F.normalize(torch.mv(matrix, self.weight_v), dim=0, eps=1e-12))
        sigma = torch.dot(self.weight_u, torch.mv(matrix, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)


class SPADE(nn.Module):
    """Normalise over channels (unbiased variance, eps 1e-5), modulate with gamma/beta maps computed from
    the structure map S (nearest-resized to the feature size)."""

    def __init__(self, channels: int, structure_channels: int, hidden: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(structure_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        std = x.var(dim=1, keepdim=True).add(1e-5).sqrt()
        normalized = (x - mean) / std
        actv = self.mlp_shared(F.interpolate(structure, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    """x + conv_1(lrelu(SPADE(conv_0(lrelu(SPADE(x, S))), S))) with spectral-normalised convs."""

    def __init__(self, channels: int, structure_channels: int, hidden: int):
        super().__init__()
        self.conv_0 = SpectralNormConv2d(channels, channels, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(channels, channels, 3, padding=1)
        self.norm_0 = SPADE(channels, structure_channels, hidden)
        self.norm_1 = SPADE(channels, structure_channels, hidden)

    def forward(self, x: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, structure), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, structure), 0.2))
        return x + dx


class StrDiffusionUNet(ModelMixin, ConfigMixin):
    """The IR-SDE noise predictor of StrDiffusion.

    `forward(xt, cond, time, structure=None)` sees [xt - cond, cond] and returns the predicted noise
    (score = -noise / sigma_bar_t). With `structure_channels > 0` (texture denoiser) every encoder level
    ends with a SPADE block guided by the structure map; with 0 (structure denoiser) there is none.
    Any H, W: the input is reflect-padded bottom/right to a multiple of 2**depth and cropped back.

    Released configs: texture `in_channels=3, structure_channels=1`; structure `in_channels=1,
    structure_channels=0`; both `base_channels=64, depth=4`.

    Parameters:
        in_channels (`int`, *optional*, defaults to 3): Channels of the state (3 texture, 1 structure).
        out_channels (`int`, *optional*): Channels of the predicted noise; `None` means `in_channels`.
        base_channels (`int`, *optional*, defaults to 64): Width of the first level (doubled per level).
        depth (`int`, *optional*, defaults to 4): Encoder/decoder levels.
        structure_channels (`int`, *optional*, defaults to 1):
            Channels of the SPADE structure guide; 0 builds no SPADE blocks (the structure denoiser).
        spade_hidden_channels (`int`, *optional*, defaults to 16): Hidden width of the SPADE blocks.
        attention_heads (`int`, *optional*, defaults to 4): Heads of the linear attention blocks.
        attention_head_dim (`int`, *optional*, defaults to 32): Width of an attention head.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 64,
        depth: int = 4,
        structure_channels: int = 1,
        spade_hidden_channels: int = 16,
        attention_heads: int = 4,
        attention_head_dim: int = 32,
    ):
        super().__init__()
        nf = base_channels
        out_channels = out_channels or in_channels
        time_dim = nf * 4
        self.init_conv = nn.Conv2d(in_channels * 2, nf, 7, padding=3, bias=False)
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(nf), nn.Linear(nf, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i in range(depth):
            dim_in, dim_out = nf * 2**i, nf * 2 ** (i + 1)
            last = i == depth - 1
            level = [
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                PreNormResidual(dim_in, attention_heads, attention_head_dim),
                nn.Conv2d(dim_in, dim_out, 3, padding=1, bias=False) if last else nn.Conv2d(dim_in, dim_out, 4, 2, 1),
            ]
            if structure_channels:
                level.append(SPADEResBlock(dim_out, structure_channels, spade_hidden_channels))
            self.downs.append(nn.ModuleList(level))
            upsample = (
                nn.Conv2d(dim_out, dim_in, 3, padding=1, bias=False)
                if i == 0
                else nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim_out, dim_in, 3, padding=1)
                )
            )
            self.ups.insert(
                0,
                nn.ModuleList(
                    [
                        ResBlock(dim_out + dim_in, dim_out, time_dim),
                        ResBlock(dim_out + dim_in, dim_out, time_dim),
                        PreNormResidual(dim_out, attention_heads, attention_head_dim),
                        upsample,
                    ]
                ),
            )
        mid = nf * 2**depth
        self.mid_block1 = ResBlock(mid, mid, time_dim)
        self.mid_attn = PreNormResidual(mid, attention_heads, attention_head_dim)
        self.mid_block2 = ResBlock(mid, mid, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_channels, 3, padding=1)

    def forward(
        self,
        xt: torch.Tensor,
        cond: torch.Tensor,
        time: int | torch.Tensor,
        structure: torch.Tensor | None = None,
    ) -> torch.Tensor:
        channels = self.config.in_channels
        if xt.ndim != 4 or xt.shape[1] != channels or cond.shape != xt.shape:
            raise ValueError(
                f"xt and cond must both be [B, {channels}, H, W]; got {tuple(xt.shape)} and {tuple(cond.shape)}."
            )
        if self.config.structure_channels and (structure is None or structure.ndim != 4):
            raise ValueError(
                f"the texture denoiser needs a structure map [B, {self.config.structure_channels}, H, W]."
            )
        time = _as_time_tensor(time, xt.device)
        h_in, w_in = xt.shape[2:]
        multiple = 2**self.config.depth
        pad_h, pad_w = (multiple - h_in % multiple) % multiple, (multiple - w_in % multiple) % multiple
        x = torch.cat([xt - cond, cond], dim=1)
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        x = self.init_conv(x)
        x_init = x.clone()
        temb = self.time_mlp[1:](self.time_mlp[0](time).to(x.dtype))
        skips = []
        for level in self.downs:
            block1, block2, attn, downsample = level[:4]
            x = block1(x, temb)
            skips.append(x)
            x = attn(block2(x, temb))
            skips.append(x)
            x = downsample(x)
            if len(level) == 5:
                x = level[4](x, structure)
        x = self.mid_block2(self.mid_attn(self.mid_block1(x, temb)), temb)
        for block1, block2, attn, upsample in self.ups:
            x = block1(torch.cat([x, skips.pop()], dim=1), temb)
            x = block2(torch.cat([x, skips.pop()], dim=1), temb)
            x = upsample(attn(x))
        x = self.final_res_block(torch.cat([x, x_init], dim=1), temb)
        return self.final_conv(x)[..., :h_in, :w_in]


def _fir_downsample(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, k, down=2, pad=(1, 1)) with standard ops: zero-pad, depthwise conv, stride 2."""
    channels = x.shape[1]
    weight = kernel.flip(0, 1)[None, None].expand(channels, 1, *kernel.shape).to(x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, stride=2, groups=channels)


class DownConvBlock(nn.Module):
    """Pre-activation residual block with additive time projection and optional FIR down-sampling."""

    def __init__(self, dim_in: int, dim_out: int, t_emb_dim: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Sequential(nn.Conv2d(dim_in, dim_out, 3, padding=1))
        self.conv2 = nn.Sequential(nn.Conv2d(dim_out, dim_out, 3, padding=1))
        self.dense_t1 = nn.Linear(t_emb_dim, dim_out)
        self.skip = nn.Sequential(nn.Conv2d(dim_in, dim_out, 1, bias=False))
        kernel = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = kernel[:, None] * kernel[None, :]
        self.register_buffer("fir_kernel", kernel / kernel.sum(), persistent=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.leaky_relu(x, 0.2))
        out = out + self.dense_t1(temb)[..., None, None]
        out = F.leaky_relu(out, 0.2)
        if self.downsample:
            out = _fir_downsample(out, self.fir_kernel)
            x = _fir_downsample(x, self.fir_kernel)
        out = self.conv2(out)
        return (out + self.skip(x)) / math.sqrt(2)


class StrDiffusionDiscriminator(ModelMixin, ConfigMixin):
    """Time-dependent discriminator judging a (texture, structure) pair: `forward(t, x, structure)` -> [B]
    logits (no sigmoid). The sampler feeds x = texture state * mask.

    A StyleGAN minibatch-stddev channel couples samples that share a group (group = min(B, stddev_group)),
    so a sample's output depends on its batch. `stddev_group=1` gives every sample the batch-1 value
    (the constant 1e-4 channel), which is what the reference sampler computes; StrDiffusionPipeline uses it.

    Parameters:
        in_channels (`int`, *optional*, defaults to 4): Texture (3) plus structure (1) channels.
        base_channels (`int`, *optional*, defaults to 64): Width of the first convolution.
        t_emb_dim (`int`, *optional*, defaults to 256): Width of the time embedding.
        stddev_group (`int`, *optional*, defaults to 4):
            Default minibatch-stddev group (the authors' training value); `forward(stddev_group=)` overrides it.
    """

    @register_to_config
    def __init__(self, in_channels: int = 4, base_channels: int = 64, t_emb_dim: int = 256, stddev_group: int = 4):
        super().__init__()
        ngf = base_channels
        self.t_embed = nn.Module()
        self.t_embed.main = nn.Sequential(
            nn.Linear(t_emb_dim, t_emb_dim), nn.LeakyReLU(0.2), nn.Linear(t_emb_dim, t_emb_dim)
        )
        self.start_conv = nn.Conv2d(in_channels, ngf * 2, 1)
        self.conv1 = DownConvBlock(ngf * 2, ngf * 2, t_emb_dim, downsample=False)
        self.conv2 = DownConvBlock(ngf * 2, ngf * 4, t_emb_dim, downsample=True)
        self.conv3 = DownConvBlock(ngf * 4, ngf * 8, t_emb_dim, downsample=True)
        self.conv4 = DownConvBlock(ngf * 8, ngf * 8, t_emb_dim, downsample=True)
        self.final_conv = nn.Conv2d(ngf * 8 + 1, ngf * 8, 3, padding=1)
        self.end_linear = nn.Linear(ngf * 8, 1)

    def forward(
        self, t: int | torch.Tensor, x: torch.Tensor, structure: torch.Tensor, stddev_group: int | None = None
    ) -> torch.Tensor:
        if x.ndim != 4 or structure.ndim != 4 or x.shape[1] + structure.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x and structure must be [B, C, H, W] with {self.config.in_channels} channels together; "
                f"got {tuple(x.shape)} and {tuple(structure.shape)}."
            )
        batch = x.shape[0]
        group = min(batch, stddev_group or self.config.stddev_group)
        if batch % group:
            raise ValueError(f"batch size {batch} must be divisible by the minibatch-stddev group {group}.")
        embedding = _sinusoidal(_as_time_tensor(t, x.device), self.config.t_emb_dim).to(x.dtype)
        temb = F.leaky_relu(self.t_embed.main(embedding), 0.2)
        h = self.start_conv(torch.cat([x, structure], dim=1))
        for block in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = block(h, temb)
        _, channels, height, width = h.shape
        stddev = h.view(group, -1, 1, channels, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2).repeat(group, 1, height, width)
        h = F.leaky_relu(self.final_conv(torch.cat([h, stddev], dim=1)), 0.2)
        return self.end_linear(h.view(h.shape[0], h.shape[1], -1).sum(2)).reshape(-1)
