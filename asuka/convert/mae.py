"""Convert facebook's MAE into an `AsukaMAE` folder: a starting MAE for ASUKA on any backbone (the MAE sees only
pixels and the mask).

`python -m asuka.convert mae --from <ViTMAE folder | Hub id | MAE .pth> --out DIR`

Sources: a transformers `ViTMAEForPreTraining` folder (`config.json` and `model.safetensors`, sharded safetensors or
`pytorch_model.bin`; a Hub id such as `facebook/vit-mae-base` is downloaded first), or the MAE repository's
checkpoint (`{"model": state_dict}` in its own names; its `mae_pretrain_vit_*.pth` hold the encoder only and are
refused, its `mae_visualize_vit_*.pth` hold the decoder too). Files are read through `asuka.convert.safe_loading`
(safetensors, or `torch.load(weights_only=True)` and nothing but tensors); the keys are read strictly: a missing,
unexpected or wrong-shape key is an error naming it.

What becomes of the MAE:
- Every encoder and decoder weight is kept. transformers' names map to the MAE repository's (timm `Block`), which
  are `AsukaMAE`'s: `query`/`key`/`value` fuse into `attn.qkv`, `layernorm_before`/`_after` are `norm1`/`norm2`, the
  attention output and MLP layers are `attn.proj`, `mlp.fc1`, `mlp.fc2`.
- Dropped: the cls token (`AsukaMAE` has none, so its encoder attends over the patch tokens only: the same encoder
  as the source's with the cls token kept out of attention) and both position tables. These are MAE's fixed 2-D
  sin-cos tables (checked: any other table is an error, as dropping it would change the model); `AsukaMAE` builds
  the same tables for its grid, `--image-size` (default the source's).
- Added, chosen so that the converted MAE starts as the source does: `alpha = 1.0`, so a partially masked patch
  enters the decoder as a plain mask token (the source masks any patch the hole touches), and a zero 4-channel
  `decoder_patch_embed`, which `alpha = 1` multiplies by zero until training lowers `alpha`; it is then learnt from
  zero, rather than starting from a projection of the raw patch embedding the decoder never saw.
- Config read from the source: widths, depths, MLP ratio, patch and image size from the weights; heads and
  LayerNorm eps from transformers' config (a `.pth` stores neither: the heads are the MAE models' own for their
  width unless given, the eps MAE's 1e-6). `input_preprocessing="visible"` (what training makes); the prior is read
  after three quarters of the decoder (`--prior-layer`, ASUKA's 6 of 8).

The folder is `AsukaMAE.save_pretrained`'s (safetensors), written atomically, with `conversion.json`: the source,
the sha256 of each file read, what was dropped and initialised, and the source's `norm_pix_loss` (None for a `.pth`,
which does not say): an MAE trained with it predicts per-patch normalised pixels, so its `reconstruct` is not in
pixel space until stage 1 retrains the head (the prior is unaffected).
"""

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from asuka.convert.output import (
    add_output_arguments,
    check_output_folder,
    file_sha256,
    push_folder,
    unshare,
    write_atomically,
)
from asuka.convert.safe_loading import build_strict, check_state_dict, load_checkpoint, tensor_state_dict
from asuka.models.mae import AsukaMAE, get_2d_sincos_pos_embed


PathLike = str | Path
StateDict = dict[str, torch.Tensor]

# The MAE models' attention heads by width, for a `.pth`: the ViT-B/L/H encoders, and the 512-wide decoder of all.
MAE_NUM_HEADS = {"encoder": {768: 12, 1024: 16, 1280: 16}, "decoder": {512: 16}}
# MAE's LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`), for a `.pth`.
MAE_NORM_EPS = 1e-6
# What `AsukaMAE` adds to the MAE, as initialised here (see the module docstring).
ALPHA_INIT = 1.0

# transformers' ViTMAE block prefixes (the Hub's and transformers 5's spellings) -> the MAE repository's.
_HF_BLOCK = re.compile(
    r"(?:(?P<encoder>vit\.encoder\.layer|vit\.layers)|(?P<decoder>decoder\.decoder_layers|decoder\.decoder_encoder"
    r"\.layer))\.(?P<index>\d+)\.(?P<module>.+)\.(?P<param>weight|bias)"
)
# transformers' block sub-modules (both spellings) -> timm `Block` sub-modules; q, k, v fuse into `attn.qkv`.
_HF_BLOCK_MODULES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_HF_KEYS = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight",
    "vit.layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    **{f"decoder.{name}.{param}": f"{name}.{param}" for name in ("decoder_embed", "decoder_norm", "decoder_pred")
       for param in ("weight", "bias")},
}  # fmt: skip
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def vitmae_to_mae_names(state_dict: Mapping[str, torch.Tensor], source: str = "") -> tuple[StateDict, dict[str, str]]:
    """A transformers `ViTMAEForPreTraining` state dict in the MAE repository's names, and each new key's source
    key(s) for the messages. An unknown key or an incomplete q/k/v triple is a `ValueError` naming it."""
    prefix = f"{source}: " if source else ""
    converted, names, qkv = {}, {}, {}
    for key, value in state_dict.items():
        match = _HF_BLOCK.fullmatch(key)
        if key in _HF_KEYS:
            converted[_HF_KEYS[key]], names[_HF_KEYS[key]] = value, key
        elif match and match["module"] in _HF_BLOCK_MODULES:
            block = f"{'blocks' if match['encoder'] else 'decoder_blocks'}.{match['index']}"
            new_key = f"{block}.{_HF_BLOCK_MODULES[match['module']]}.{match['param']}"
            converted[new_key], names[new_key] = value, key
        elif match and match["module"] in _HF_QKV:
            block = f"{'blocks' if match['encoder'] else 'decoder_blocks'}.{match['index']}"
            qkv.setdefault(f"{block}.attn.qkv.{match['param']}", {})[_HF_QKV[match["module"]]] = key
        else:
            raise ValueError(f"{prefix}Unexpected key {key!r}: not a ViTMAEForPreTraining weight.")
    for new_key, parts in qkv.items():
        if len(parts) != 3:
            raise ValueError(f"{prefix}key(s) {sorted(parts.values())} without the rest of their query/key/value.")
        converted[new_key] = torch.cat([state_dict[parts[i]] for i in range(3)])
        names[new_key] = " + ".join(parts[i] for i in range(3))
    return converted, names


def _tensor(
    state_dict: Mapping[str, torch.Tensor], key: str, ndim: int, names: Mapping[str, str], source: str
) -> torch.Tensor:
    """`state_dict[key]`, which must have `ndim` dimensions; a `ValueError` naming the key otherwise."""
    name = names.get(key, key)
    if key not in state_dict:
        hint = ""
        if key.startswith("decoder"):
            hint = (
                " The MAE needs its decoder: the MAE repository's mae_pretrain_vit_*.pth hold the encoder only; "
                "use mae_visualize_vit_*.pth or a transformers ViTMAEForPreTraining (facebook/vit-mae-*)."
            )
        raise ValueError(f"{source}: missing key {name!r}.{hint}")
    if state_dict[key].ndim != ndim:
        raise ValueError(f"{source}: key {name!r} has shape {tuple(state_dict[key].shape)}, expected {ndim} dims.")
    return state_dict[key]


def _grid(table: torch.Tensor, key: str, source: str) -> int:
    """The side of the square patch grid of a `(1, 1 + grid**2, width)` position table (the first row the cls's)."""
    side = round((table.shape[1] - 1) ** 0.5)
    if table.shape[0] != 1 or side * side != table.shape[1] - 1:
        raise ValueError(f"{source}: key {key!r} of shape {tuple(table.shape)} is not a cls + square-grid table.")
    return side


def _num_heads(width: int, given: int | None, what: str) -> int:
    if given is not None:
        return given
    if width not in MAE_NUM_HEADS[what]:
        raise ValueError(
            f"the checkpoint's {what} is {width} wide, not an MAE model's ({sorted(MAE_NUM_HEADS[what])}), so its "
            f"heads are unknown: pass {'--num-heads' if what == 'encoder' else '--decoder-num-heads'}."
        )
    return MAE_NUM_HEADS[what][width]


def mae_config(
    state_dict: Mapping[str, torch.Tensor],
    names: Mapping[str, str] | None = None,
    source: str = "checkpoint",
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_eps: float = MAE_NORM_EPS,
    image_size: int | None = None,
    prior_layer: int | None = None,
) -> dict[str, Any]:
    """The `AsukaMAE` config of an MAE state dict (MAE names): sizes from the weights, heads as given or the MAE
    models' for their width, `image_size` the source's unless given, `prior_layer` three quarters of the decoder
    unless given, `input_preprocessing="visible"`."""
    names = names or {}
    patch = _tensor(state_dict, "patch_embed.proj.weight", 4, names, source)
    grid = _grid(_tensor(state_dict, "pos_embed", 3, names, source), names.get("pos_embed", "pos_embed"), source)
    decoder_embed = _tensor(state_dict, "decoder_embed.weight", 2, names, source)
    embed_dim, decoder_embed_dim = patch.shape[0], decoder_embed.shape[0]
    depth = len({m[1] for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key))})
    decoder_depth = len({m[1] for key in state_dict if (m := re.match(r"decoder_blocks\.(\d+)\.", key))})
    ratios = []
    for block, width in (("blocks.0", embed_dim), ("decoder_blocks.0", decoder_embed_dim)):
        ratios.append(_tensor(state_dict, f"{block}.mlp.fc1.weight", 2, names, source).shape[0] / width)
    if ratios[0] != ratios[1]:
        raise ValueError(
            f"{source}: the encoder's MLP ratio is {ratios[0]}, the decoder's {ratios[1]}; AsukaMAE has one "
            "`mlp_ratio` for both."
        )
    if image_size is not None and (image_size <= 0 or image_size % patch.shape[-1]):
        raise ValueError(
            f"--image-size is {image_size}; accepted: a positive multiple of the patch size {patch.shape[-1]}."
        )
    return {
        "image_size": grid * patch.shape[-1] if image_size is None else image_size,
        "patch_size": patch.shape[-1],
        "in_channels": patch.shape[1],
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": _num_heads(embed_dim, num_heads, "encoder"),
        "decoder_embed_dim": decoder_embed_dim,
        "decoder_depth": decoder_depth,
        "decoder_num_heads": _num_heads(decoder_embed_dim, decoder_num_heads, "decoder"),
        "mlp_ratio": ratios[0],
        "norm_eps": norm_eps,
        "prior_layer": 3 * decoder_depth // 4 if prior_layer is None else prior_layer,
        "input_preprocessing": "visible",
    }


def convert_mae_to_asuka(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    names: Mapping[str, str] | None = None,
    source: str = "checkpoint",
) -> AsukaMAE:
    """An `AsukaMAE` (float32, eval mode) of `config` from an MAE state dict (MAE names): the cls token dropped, the
    sin-cos position tables checked and rebuilt for the config's grid, `alpha` and `decoder_patch_embed` added."""
    names = dict(names or {})
    state = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
    state.pop("cls_token", None)
    grid = config["image_size"] // config["patch_size"]
    for key in ("pos_embed", "decoder_pos_embed"):
        table = _tensor(state, key, 3, names, source)
        name = names.get(key, key)
        expected = get_2d_sincos_pos_embed(table.shape[-1], _grid(table, name, source))
        if not torch.allclose(table[:, 1:], expected, atol=1e-4):
            raise ValueError(
                f"{source}: key {name!r} is not MAE's fixed 2-D sin-cos table (max difference "
                f"{(table[:, 1:] - expected).abs().max():.3g}); AsukaMAE rebuilds its tables, so only that one "
                "converts."
            )
        state[key] = get_2d_sincos_pos_embed(table.shape[-1], grid)
    patch_size, decoder_embed_dim = config["patch_size"], config["decoder_embed_dim"]
    state["alpha"] = torch.tensor(ALPHA_INIT)
    state["decoder_patch_embed.proj.weight"] = torch.zeros(
        decoder_embed_dim, config["in_channels"] + 1, patch_size, patch_size
    )
    state["decoder_patch_embed.proj.bias"] = torch.zeros(decoder_embed_dim)
    with torch.device("meta"):
        model = AsukaMAE(**config)
    check_state_dict(state, model, source, names=names, what="MAE")
    return build_strict(AsukaMAE, config, state, source, checked=True)


def _hub_folder(repo_id: str) -> Path:
    """A local copy of a Hub model repo's config and weights (the files `read_vitmae_folder` reads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", *_HF_WEIGHT_FILES]))
    except Exception as error:  # offline, unknown repo, no access: all reported the same way
        raise ValueError(
            f"--from {repo_id}: no such file or folder, and no Hub model repo that could be downloaded "
            f"({type(error).__name__}: {error})."
        ) from None


def read_vitmae_folder(folder: Path) -> tuple[StateDict, Any, list[Path]]:
    """The state dict and `ViTMAEConfig` of a `ViTMAEForPreTraining` folder, and the files read."""
    from transformers import ViTMAEConfig

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder}: no config.json; expected a transformers ViTMAEForPreTraining folder.")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "vit_mae":
        raise ValueError(f"{config_file}: model_type is {model_type!r}; accepted: 'vit_mae' (ViTMAEForPreTraining).")
    weights = next((folder / name for name in _HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder}: no weights; expected one of {', '.join(_HF_WEIGHT_FILES)}.")
    files = [weights]
    if weights.name.endswith(".index.json"):
        files = [folder / name for name in sorted(set(json.loads(weights.read_text()).get("weight_map", {}).values()))]
    state_dict = {}
    for path in files:
        state_dict.update(tensor_state_dict(load_checkpoint(path), str(path)))
    return state_dict, ViTMAEConfig.from_json_file(config_file), [config_file, *files]


def _read_vitmae(folder: Path) -> tuple[StateDict, dict[str, str], Any, list[Path]]:
    """A ViTMAE folder's state dict in MAE names, the source names, its `ViTMAEConfig` (checked for what
    `AsukaMAE`'s blocks can hold) and the files read."""
    hf_state_dict, hf_config, files = read_vitmae_folder(folder)
    if hf_config.hidden_act != "gelu" or not hf_config.qkv_bias:
        raise ValueError(
            f"{folder}: hidden_act {hf_config.hidden_act!r}, qkv_bias {hf_config.qkv_bias}; accepted: 'gelu' and "
            "qkv_bias true (MAE's, and all AsukaMAE's blocks hold)."
        )
    return *vitmae_to_mae_names(hf_state_dict, str(folder)), hf_config, files


def convert_mae(
    source: PathLike,
    image_size: int | None = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    prior_layer: int | None = None,
) -> tuple[AsukaMAE, dict[str, Any]]:
    """An `AsukaMAE` from a `ViTMAEForPreTraining` folder or Hub id, or an MAE `.pth`, and its `conversion.json`
    record. `num_heads`/`decoder_num_heads` are for a `.pth` only (a folder's config has them)."""
    path, name = Path(source), str(source)
    sizes = {"image_size": image_size, "prior_layer": prior_layer}
    if path.is_file():
        obj = load_checkpoint(path)
        entry = "model" if isinstance(obj, Mapping) and "model" in obj else None
        state_dict, names, files = tensor_state_dict(obj, name, entry), {}, [path]
        config = mae_config(state_dict, {}, name, num_heads, decoder_num_heads, MAE_NORM_EPS, **sizes)
        source_format, norm_pix_loss = "MAE repository checkpoint", None
    elif path.is_dir() or (re.fullmatch(r"[\w.-]+/[\w.-]+", name) and path.suffix not in (".pth", ".pt", ".bin")):
        if num_heads is not None or decoder_num_heads is not None:
            raise ValueError("--num-heads/--decoder-num-heads are for a .pth only; a ViTMAE folder's config has them.")
        folder = path if path.is_dir() else _hub_folder(name)
        state_dict, names, hf_config, files = _read_vitmae(folder)
        heads = (hf_config.num_attention_heads, hf_config.decoder_num_attention_heads, hf_config.layer_norm_eps)
        config = mae_config(state_dict, names, str(folder), *heads, **sizes)
        source_format, norm_pix_loss = "transformers ViTMAEForPreTraining", hf_config.norm_pix_loss
    else:
        raise ValueError(f"--from {source}: no such file or folder.")
    model = convert_mae_to_asuka(state_dict, config, names, name)
    record = {
        "source": name,
        "source_format": source_format,
        "sha256": {file.name: file_sha256(file) for file in files},
        "dropped": ["cls_token", "pos_embed", "decoder_pos_embed (rebuilt: fixed 2-D sin-cos for AsukaMAE's grid)"],
        "initialised": {"alpha": ALPHA_INIT, "decoder_patch_embed": "zeros"},
        "norm_pix_loss": norm_pix_loss,
        "config": config,
    }
    return model, record


def save_mae(model: AsukaMAE, record: Mapping[str, Any], out: PathLike, overwrite: bool = False) -> Path:
    """Write `model.save_pretrained` (safetensors) and `conversion.json` to `out`, atomically."""

    def write(folder: Path) -> None:
        unshare(model)
        model.save_pretrained(folder, safe_serialization=True)
        (folder / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")

    return write_atomically(out, write, overwrite)


def add_mae_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `mae` on the `python -m asuka.convert` sub-command parser."""
    parser = subparsers.add_parser(
        "mae",
        help="facebook's MAE (ViTMAEForPreTraining folder / Hub id, or MAE .pth) -> AsukaMAE folder",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--from", dest="source", required=True, help="ViTMAE folder or Hub id, or an MAE .pth")
    add_output_arguments(parser, "AsukaMAE folder")
    parser.add_argument("--image-size", type=int, default=None, help="AsukaMAE working size (default: the source's)")
    parser.add_argument("--num-heads", type=int, default=None, help=".pth only: encoder heads (default: MAE's)")
    parser.add_argument("--decoder-num-heads", type=int, default=None, help=".pth only: decoder heads (MAE's: 16)")
    parser.add_argument("--prior-layer", type=int, default=None, help="decoder blocks before the prior (3/4 of them)")
    parser.set_defaults(func=run_mae_command)


def run_mae_command(args: argparse.Namespace) -> Path:
    """Convert, save with safetensors, optionally push; returns the output folder."""
    check_output_folder(args.out, args.overwrite)  # before any heavy work
    model, record = convert_mae(args.source, args.image_size, args.num_heads, args.decoder_num_heads, args.prior_layer)
    out = save_mae(model, record, args.out, overwrite=args.overwrite)
    if args.push_to_hub:
        push_folder(out, args.push_to_hub, commit_message="Add converted MAE")
    print(f"Wrote {out}" + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else ""))
    return out
