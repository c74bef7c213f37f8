"""Key mapping from the ASUKA-FLUX release (`yikaiwang/ASUKA-FLUX.1-Fill`) to `AsukaMAE` and `AsukaAligner`.

Each function takes a release state dict, returns one that loads into the project's module with
`load_state_dict(strict=True)`, drops the release keys the forward pass never uses, and raises `ValueError`
naming the key on anything unexpected (unknown key, missing key, non-tensor value, wrong shape). Expected shapes
come from the project's module itself, built on the meta device (no memory, no random init).
"""

import re
from collections.abc import Mapping
from typing import Any

import torch

from asuka.models import AsukaAligner, AsukaMAE


def _check_tensors(state_dict: Mapping[str, Any]) -> None:
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"key {key!r} holds a {type(value).__name__}, not a tensor.")


def _check_against_model(
    converted: Mapping[str, torch.Tensor], model: torch.nn.Module, release_names: Mapping[str, str]
) -> None:
    """Every key of `model` present with its shape; `release_names` maps converted keys back for messages."""
    expected = model.state_dict()
    for key, value in converted.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"key {release_names.get(key, key)!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}."
            )
    missing = [key for key in expected if key not in converted]
    if missing:
        raise ValueError(f"missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}.")


def convert_mae_state_dict(
    state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Map `mae_300.pth` (the checkpoint, or its `"model"` entry) to [`AsukaMAE`] keys.

    `AsukaMAE` keeps the reference's parameter names (timm `Block`/`PatchEmbed` layout), so the mapping is the
    identity and nothing is dropped: every key (including `decoder_norm`/`decoder_pred`, used by
    `reconstruct`) takes part in the forward pass. `config` defaults to the release's (ViT-B/16 at 256).
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    _check_tensors(state_dict)
    with torch.device("meta"):
        model = AsukaMAE(**dict(config or {}))
    known = model.state_dict()
    for key in state_dict:
        if key not in known:
            raise ValueError(f"unexpected key {key!r} in the MAE checkpoint.")
    converted = dict(state_dict)
    _check_against_model(converted, model, {})
    return converted


_BLOCK_KEY = re.compile(r"(\d+)\.(.+)")

# Release block sub-key -> `AsukaAlignerBlock` sub-key.
_ALIGNER_BLOCK_KEYS = {
    "linear1.weight": "linear1.weight",
    "linear1.bias": "linear1.bias",
    "linear2.weight": "linear2.weight",
    "linear2.bias": "linear2.bias",
    "norm.query_norm.scale": "norm_q.weight",
    "norm.key_norm.scale": "norm_k.weight",
}
# The reference block (`SingleStreamBlockAsuka`) builds FLUX's `Modulation` layer but its forward never calls it
# (there is no conditioning vector), so these weights have no effect on the output.
_ALIGNER_UNUSED_BLOCK_KEYS = ("modulation.lin.weight", "modulation.lin.bias")


def convert_aligner_state_dict(
    state_dict: Mapping[str, Any], null_embedding: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Map `asuka_alignment_{clip,t5}.pt` (an `nn.Sequential`: `0` Linear, `1..n` blocks, `n+1` LayerNorm) to
    [`AsukaAligner`] keys.

    Drops each block's `modulation.lin.*` (built but never called by the reference). `null_embedding`, if given,
    becomes `null_embed`: `(1, num_tokens, hidden_dim)` for a token null (`txt_256.pt`) or `(1, hidden_dim)` for a
    pooled one (`vec.pt`); the matching config has `null_embedding="tokens"` or `"pooled"`.
    """
    _check_tensors(state_dict)
    for key in ("0.weight", "1.linear1.weight", "1.norm.query_norm.scale"):
        if key not in state_dict:
            raise ValueError(f"missing key {key!r}; is this an ASUKA alignment checkpoint?")
    if state_dict["0.weight"].ndim != 2:
        raise ValueError(f"key '0.weight' has shape {tuple(state_dict['0.weight'].shape)}, expected (hidden, in).")
    hidden_dim, in_dim = state_dict["0.weight"].shape
    head_dim = state_dict["1.norm.query_norm.scale"].shape[0]
    num_blocks = sum(1 for key in state_dict if key.endswith(".linear1.weight"))
    mlp_ratio = (state_dict["1.linear1.weight"].shape[0] - 3 * hidden_dim) / hidden_dim

    converted, release_names = {}, {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        index, name = (int(match.group(1)), match.group(2)) if match else (None, None)
        if index == 0 and name in ("weight", "bias"):
            new_key = f"proj_in.{name}"
        elif index == num_blocks + 1 and name in ("weight", "bias"):
            new_key = f"norm_out.{name}"
        elif index is not None and 1 <= index <= num_blocks and name in _ALIGNER_UNUSED_BLOCK_KEYS:
            continue
        elif index is not None and 1 <= index <= num_blocks and name in _ALIGNER_BLOCK_KEYS:
            new_key = f"blocks.{index - 1}.{_ALIGNER_BLOCK_KEYS[name]}"
        else:
            raise ValueError(f"unexpected key {key!r} in the aligner checkpoint.")
        converted[new_key] = value
        release_names[new_key] = key

    config = dict(in_dim=in_dim, hidden_dim=hidden_dim, num_blocks=num_blocks, head_dim=head_dim, mlp_ratio=mlp_ratio)
    if null_embedding is not None:
        if not isinstance(null_embedding, torch.Tensor) or null_embedding.ndim not in (2, 3):
            got = tuple(null_embedding.shape) if isinstance(null_embedding, torch.Tensor) else type(null_embedding)
            raise ValueError(
                f"null embedding must be a (1, num_tokens, {hidden_dim}) or (1, {hidden_dim}) tensor, got {got}."
            )
        if null_embedding.ndim == 3:
            config.update(null_embedding="tokens", num_tokens=null_embedding.shape[1])
        else:
            config.update(null_embedding="pooled")
        converted["null_embed"] = null_embedding
        release_names["null_embed"] = "null embedding"
    with torch.device("meta"):
        model = AsukaAligner(**config)
    _check_against_model(converted, model, release_names)
    return converted
