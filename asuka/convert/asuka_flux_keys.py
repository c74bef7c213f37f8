"""Key mapping from the ASUKA-FLUX release (`yikaiwang/ASUKA-FLUX.1-Fill`) to `AsukaMAE`, `AsukaAligner`,
`AsukaDecoder` and `AsukaVAEEncoder`, and the fingerprint that compares a VAE encoder with the backbone's.

Each function takes a release state dict, returns one that loads into the project's module with
`load_state_dict(strict=True)`, drops the release keys the forward pass never uses (and says why), and raises
`ValueError` naming the release key on anything unexpected (unknown key, missing key, non-tensor value, wrong
shape). Expected names and shapes come from the project's module itself, built on the meta device (no memory, no
random init), and are checked with `asuka.convert.safe_loading.check_state_dict`.
"""

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from asuka.convert.safe_loading import check_state_dict, tensor_state_dict
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, AsukaVAEEncoder


# ---------------------------------------------------------------------------------------- MAE

# `AsukaMAE` config of the FLUX.1-Fill release: the default ViT-B/16 at 256 pixels, fed as the release feeds it
# (`prepare_data` resizes the 8-bit image with the hole content present), which the release's numbers come from.
ASUKA_FLUX_MAE_CONFIG: dict[str, Any] = {"input_preprocessing": "reference"}


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
    converted = tensor_state_dict(state_dict)
    with torch.device("meta"):
        model = AsukaMAE(**dict(config or {}))
    check_state_dict(converted, model, what="MAE")
    return converted


# ---------------------------------------------------------------------------------------- aligners


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


def aligner_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """`AsukaAligner` width, depth, head size and MLP ratio read off a release aligner (`nn.Sequential` keys)."""
    for key in ("0.weight", "1.linear1.weight", "1.norm.query_norm.scale"):
        if key not in state_dict:
            raise ValueError(f"missing key {key!r}; is this an ASUKA alignment checkpoint?")
    if state_dict["0.weight"].ndim != 2:
        raise ValueError(f"key '0.weight' has shape {tuple(state_dict['0.weight'].shape)}, expected (hidden, in).")
    hidden_dim, in_dim = state_dict["0.weight"].shape
    return dict(
        in_dim=int(in_dim),
        hidden_dim=int(hidden_dim),
        num_blocks=sum(1 for key in state_dict if key.endswith(".linear1.weight")),
        head_dim=int(state_dict["1.norm.query_norm.scale"].shape[0]),
        mlp_ratio=(state_dict["1.linear1.weight"].shape[0] - 3 * hidden_dim) / hidden_dim,
    )


def convert_aligner_state_dict(
    state_dict: Mapping[str, Any], null_embedding: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Map `asuka_alignment_{clip,t5}.pt` (an `nn.Sequential`: `0` Linear, `1..n` blocks, `n+1` LayerNorm) to
    [`AsukaAligner`] keys.

    Drops each block's `modulation.lin.*` (built but never called by the reference). `null_embedding`, if given,
    becomes `null_embed`: `(1, num_tokens, hidden_dim)` for a token null (`txt_256.pt`) or `(1, hidden_dim)` for a
    pooled one (`vec.pt`); the matching config has `null_embedding="tokens"` or `"pooled"`.
    """
    state_dict = tensor_state_dict(state_dict)
    config = aligner_config(state_dict)
    num_blocks, hidden_dim = config["num_blocks"], config["hidden_dim"]

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
    check_state_dict(converted, model, names=release_names)
    return converted


# ---------------------------------------------------------------------------------------- decoder

# `AsukaDecoder` config of the FLUX.1-Fill release: FLUX's 16-channel KL decoder, no post_quant_conv.
ASUKA_FLUX_DECODER_CONFIG: dict[str, Any] = {
    "latent_channels": 16,
    "out_channels": 3,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "mid_block_add_attention": True,
    "use_post_quant_conv": False,
}

DECODER_PREFIX = "decoder."
CONDITION_ENCODER_PREFIX = "decoder.encoder."
# `decoder.up_layers.{0..3}.deconv` are transposed convolutions the release's decoder module builds
# in its constructor but never calls in its forward pass: the conditioning enters only through the
# blends with `encoder.layers` features, and the golden output (tests/models/test_golden_asuka_flux_decoder.py) is
# reproduced without them. They are dropped.
UNUSED_PREFIXES = ("decoder.up_layers.",)


def convert_decoder_state_dict(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map the release's `checkpoint["state_dict"]` (`asuka_decoder.ckpt`) to an `AsukaDecoder(**config)` state dict.

    The release holds the decoder under `decoder.` in the original LDM layout (`up.{i}.block.{j}`, `mid.attn_1.q`
    as 1x1 convs, `nin_shortcut`, `norm_out`, ...), the condition encoder under `decoder.encoder.layers.{k}`, and
    keys of the training wrapper that are no decoder at all (`encoder.*`, `quant_conv.*`, `loss.*`, ...), which
    are ignored. The LDM body is renamed with diffusers' own `convert_ldm_vae_checkpoint`, the same code
    `AutoencoderKL.from_single_file` uses. A decoder key that maps to nothing, a wrong shape, or a missing key
    raises `ValueError` naming the key.
    """
    sd = tensor_state_dict(sd)
    with torch.device("meta"):
        model = AsukaDecoder.from_config(dict(config))
    has_post_quant_conv = "post_quant_conv.weight" in model.state_dict()
    up_block_config = {"down_block_types": (), "up_block_types": tuple(model.config.up_block_types)}

    converted: dict[str, torch.Tensor] = {}
    release_names: dict[str, str] = {}
    ldm_body: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        is_post_quant_conv = key.startswith("post_quant_conv.") and has_post_quant_conv
        if not is_post_quant_conv and (not key.startswith(DECODER_PREFIX) or key.startswith(UNUSED_PREFIXES)):
            continue
        if is_post_quant_conv:
            new_key = key
        elif key.startswith(CONDITION_ENCODER_PREFIX):
            new_key = "condition_" + key[len(DECODER_PREFIX) :]
        else:
            ldm_body[key] = value
            continue
        converted[new_key], release_names[new_key] = value, key
    renamed, renamed_names = _rename_ldm_vae_keys(ldm_body, up_block_config, "decoder", "AsukaDecoder")
    converted.update(renamed)
    release_names.update(renamed_names)

    check_state_dict(converted, model, names=release_names, what="decoder")
    return converted


def _rename_ldm_vae_keys(
    sd: Mapping[str, torch.Tensor], block_config: Mapping[str, Any], what: str, model_name: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LDM-layout VAE keys renamed with diffusers' `convert_ldm_vae_checkpoint` (what `from_single_file` uses);
    returns the renamed tensors and `{new key: release key}`.

    diffusers' mapping silently skips names it does not know, so it runs one LDM module (its weight and bias
    together) at a time and every release key must come back under a new name; `what` and `model_name` name the
    part and the model in the errors.
    """
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        modules.setdefault(key.rsplit(".", 1)[0], {})[key] = value
    converted: dict[str, torch.Tensor] = {}
    release_names: dict[str, str] = {}
    for module_keys in modules.values():
        try:
            renamed = convert_ldm_vae_checkpoint(checkpoint=dict(module_keys), config=block_config)
        except KeyError as error:
            raise ValueError(f"Missing {what} key {error.args[0]!r} (its module has {sorted(module_keys)}).") from None
        by_suffix = {new_key.rsplit(".", 1)[1]: new_key for new_key in renamed}
        for key in module_keys:
            new_key = by_suffix.get(key.rsplit(".", 1)[1])
            if new_key is None:
                raise ValueError(f"Unexpected {what} key {key!r}: it maps to no {model_name} parameter.")
            converted[new_key], release_names[new_key] = renamed[new_key], key
    return converted, release_names


# ---------------------------------------------------------------------------------------- masked-image encoder

ENCODER_PREFIX = "encoder."


def convert_encoder_state_dict(
    sd: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Map the `encoder.*` keys of the release's `checkpoint["state_dict"]` (`asuka_decoder.ckpt`) to an
    `AsukaVAEEncoder(**config)` state dict (`config` defaults to FLUX.1's VAE encoder).

    These are the weights the authors' inference loads into the autoencoder that encodes the masked image, in the
    BFL/LDM layout (`down.{i}.block.{j}`, `down.{i}.downsample`, `mid.attn_1.q` as 1x1 convs, `norm_out`, ...),
    renamed with diffusers' own `convert_ldm_vae_checkpoint`. Every other key is the decoder's or the training
    wrapper's and is ignored (the reference's FLUX autoencoder has no `quant_conv`). A key that maps to nothing, a
    wrong shape, or a missing key raises `ValueError` naming the key.
    """
    sd = tensor_state_dict(sd)
    with torch.device("meta"):
        model = AsukaVAEEncoder.from_config(dict(config or {}))
    block_config = {"down_block_types": tuple(model.config.down_block_types), "up_block_types": ()}
    encoder_sd = {key: value for key, value in sd.items() if key.startswith(ENCODER_PREFIX)}
    converted, release_names = _rename_ldm_vae_keys(encoder_sd, block_config, "encoder", "AsukaVAEEncoder")
    check_state_dict(converted, model, names=release_names, what="encoder")
    return converted


def encoder_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of a VAE encoder's weights in diffusers' names, as `AutoencoderKL.encoder.state_dict()` (and
    `AsukaVAEEncoder.encoder.state_dict()`) holds them, so a release encoder and a backbone VAE compare directly.

    Over the keys in sorted order, it digests for each: the key, a newline, `str(list(shape))`, a newline (UTF-8),
    then the values as little-endian float32 in row-major order. Equal weights give equal fingerprints whatever
    dtype they are stored in, as long as float32 holds them exactly (float16 and bfloat16 values do).
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        digest.update(f"{key}\n{list(tensor.shape)}\n".encode())
        digest.update(tensor.to(device="cpu", dtype=torch.float32).numpy().astype("<f4").tobytes(order="C"))
    return digest.hexdigest()
