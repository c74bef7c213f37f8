"""The ASUKA aligner: maps the MAE prior to the conditioning space of the frozen inpainting backbone.

Ships to the Hub as remote code: imports only torch, diffusers, timm, numpy, PIL and the stdlib.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import RMSNorm
from diffusers.utils import BaseOutput
from torch import nn


NULL_EMBEDDING_KINDS = (None, "tokens", "pooled")


@dataclass
class AsukaAlignerOutput(BaseOutput):
    """Output of [`AsukaAligner`].

    Args:
        tokens (`torch.Tensor` of shape `(batch_size, num_tokens, hidden_dim)`): Token conditioning.
        pooled (`torch.Tensor` of shape `(batch_size, hidden_dim)`): Pooled conditioning.
    """

    tokens: torch.Tensor = None
    pooled: torch.Tensor = None


class AsukaAlignerBlock(nn.Module):
    """Parallel attention + MLP block (FLUX single-stream layout without modulation or positional encoding).

    `x + linear2(cat(attention(q, k, v), gelu_tanh(mlp)))` where `qkv, mlp = linear1(layer_norm(x))` and q, k get
    a per-head RMSNorm.
    """

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        self.dim = dim
        self.head_dim = head_dim
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear1 = nn.Linear(dim, 3 * dim + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.norm_q = RMSNorm(head_dim, eps=1e-6)
        self.norm_k = RMSNorm(head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        qkv, mlp = torch.split(self.linear1(self.norm(x)), [3 * self.dim, self.mlp_hidden_dim], dim=-1)
        q, k, v = qkv.view(batch_size, length, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.norm_q(q).to(v.dtype), self.norm_k(k).to(v.dtype)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch_size, length, self.dim)
        return x + self.linear2(torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=-1))


class AsukaAligner(ModelMixin, ConfigMixin):
    r"""
    Linear(in_dim -> hidden_dim), `num_blocks` [`AsukaAlignerBlock`]s, LayerNorm: prior tokens -> conditioning.

    With `null_embedding="tokens"` or `"pooled"` the model holds a learned null conditioning `null_embed` (shape
    `(1, num_tokens, hidden_dim)` or `(1, hidden_dim)`) and returns `null + w * (cond - null)` for that output, with
    `w = condition_weight` (the ASUKA-FLUX release uses the unconditional T5/CLIP embeddings and w = 0.5).

    Parameters:
        in_dim (`int`, *optional*, defaults to 512): Width of the MAE prior.
        hidden_dim (`int`, *optional*, defaults to 768): Width of the conditioning.
        num_blocks (`int`, *optional*, defaults to 4): Transformer blocks.
        head_dim (`int`, *optional*, defaults to 64): Attention head width.
        mlp_ratio (`float`, *optional*, defaults to 4.0): MLP expansion.
        num_tokens (`int`, *optional*, defaults to 256): Number of prior tokens (shape of a token null embedding).
        null_embedding (`str`, *optional*): `None` (no null conditioning), `"tokens"` or `"pooled"`.
        condition_weight (`float`, *optional*, defaults to 1.0): Default interpolation weight towards the conditioning.
    """

    @register_to_config
    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 768,
        num_blocks: int = 4,
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        num_tokens: int = 256,
        null_embedding: str | None = None,
        condition_weight: float = 1.0,
    ):
        super().__init__()
        if hidden_dim % head_dim != 0:
            raise ValueError(f"`hidden_dim` ({hidden_dim}) must be a multiple of `head_dim` ({head_dim}).")
        if null_embedding not in NULL_EMBEDDING_KINDS:
            raise ValueError(f"`null_embedding` must be one of {NULL_EMBEDDING_KINDS}, got {null_embedding!r}.")
        self.proj_in = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.ModuleList([AsukaAlignerBlock(hidden_dim, head_dim, mlp_ratio) for _ in range(num_blocks)])
        self.norm_out = nn.LayerNorm(hidden_dim)
        if null_embedding == "tokens":
            self.null_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_dim))
        elif null_embedding == "pooled":
            self.null_embed = nn.Parameter(torch.zeros(1, hidden_dim))
        else:
            self.null_embed = None

    def forward(
        self, prior: torch.Tensor, condition_weight: float | None = None, return_dict: bool = True
    ) -> AsukaAlignerOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            prior (`torch.Tensor` of shape `(batch_size, num_tokens, in_dim)`): The MAE prior.
            condition_weight (`float`, *optional*): Weight towards the conditioning; defaults to
                `config.condition_weight`. Only meaningful with a null embedding.
            return_dict (`bool`, defaults to `True`): Return an [`AsukaAlignerOutput`] instead of a tuple.
        """
        in_dim, kind = self.config.in_dim, self.config.null_embedding
        if not isinstance(prior, torch.Tensor) or prior.ndim != 3 or prior.shape[-1] != in_dim:
            got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
            raise ValueError(f"`prior` must be a tensor of shape (B, N, {in_dim}), got {got}.")
        if kind == "tokens" and prior.shape[1] != self.config.num_tokens:
            raise ValueError(
                f"`prior` must have {self.config.num_tokens} tokens to match the token null embedding, "
                f"got {prior.shape[1]}."
            )
        if condition_weight is not None and kind is None:
            raise ValueError("`condition_weight` needs an aligner with a null embedding (`null_embedding` is None).")
        weight = self.config.condition_weight if condition_weight is None else condition_weight

        tokens = self.proj_in(prior.to(device=self.device, dtype=self.dtype))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm_out(tokens)
        if kind == "tokens":
            tokens = self.null_embed + weight * (tokens - self.null_embed)
        pooled = tokens.mean(dim=1)
        if kind == "pooled":
            pooled = self.null_embed + weight * (pooled - self.null_embed)

        if not return_dict:
            return tokens, pooled
        return AsukaAlignerOutput(tokens=tokens, pooled=pooled)
