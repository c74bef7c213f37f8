"""Key mapping for the released ASUKA decoder (`asuka_decoder.ckpt`, original LDM/FLUX names) to `AsukaDecoder`.

The release's `checkpoint["state_dict"]` holds the decoder under `decoder.` in the original LDM layout
(`up.{i}.block.{j}`, `mid.attn_1.q` as 1x1 convs, `nin_shortcut`, `norm_out`, ...), the condition
encoder under `decoder.encoder.layers.{k}`, and keys of the training wrapper that are no decoder
at all (`encoder.*`, `quant_conv.*`, `loss.*`, ...), which are ignored. The LDM body is renamed with
diffusers' own `convert_ldm_vae_checkpoint`, the same code `AutoencoderKL.from_single_file` uses.
"""

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from asuka.models.decoder import AsukaDecoder


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
# blends with `encoder.layers` features, and the golden output (tests/test_golden_decoder.py) is
# reproduced without them. They are dropped.
UNUSED_PREFIXES = ("decoder.up_layers.",)


def convert_decoder_state_dict(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Maps the release's `checkpoint["state_dict"]` to an `AsukaDecoder(**config)` state dict.

    Every key of the result is checked against the model's own names and shapes: a decoder key that
    maps to nothing, a wrong shape, or a missing key raises `ValueError` naming the key.
    """
    if not isinstance(sd, Mapping):
        raise ValueError(
            f"Expected the checkpoint's state dict (a mapping of name -> tensor), got {type(sd).__name__}."
        )
    with torch.device("meta"):
        model = AsukaDecoder.from_config(dict(config))
    expected = model.state_dict()
    up_block_config = {"down_block_types": (), "up_block_types": tuple(model.config.up_block_types)}

    # (release key, AsukaDecoder key, tensor) for every key the forward pass uses.
    mapped: list[tuple[str, str, torch.Tensor]] = []
    ldm_modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        is_post_quant_conv = key.startswith("post_quant_conv.") and "post_quant_conv.weight" in expected
        if not is_post_quant_conv and (not key.startswith(DECODER_PREFIX) or key.startswith(UNUSED_PREFIXES)):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"Decoder key {key!r} holds a {type(value).__name__}, not a tensor.")
        if is_post_quant_conv:
            mapped.append((key, key, value))
        elif key.startswith(CONDITION_ENCODER_PREFIX):
            mapped.append((key, "condition_" + key[len(DECODER_PREFIX) :], value))
        else:
            ldm_modules.setdefault(key.rsplit(".", 1)[0], {})[key] = value

    # diffusers' mapping silently skips names it does not know, so it runs one LDM module (its weight
    # and bias together) at a time and every release key must come back under a new name.
    for module_keys in ldm_modules.values():
        try:
            renamed = convert_ldm_vae_checkpoint(dict(module_keys), up_block_config)
        except KeyError as error:
            raise ValueError(
                f"Missing decoder key {error.args[0]!r} (its module has {sorted(module_keys)})."
            ) from None
        by_suffix = {new_key.rsplit(".", 1)[1]: new_key for new_key in renamed}
        for key in module_keys:
            new_key = by_suffix.get(key.rsplit(".", 1)[1])
            if new_key is None:
                raise ValueError(f"Unexpected decoder key {key!r}: it maps to no AsukaDecoder parameter.")
            mapped.append((key, new_key, renamed[new_key]))

    converted: dict[str, torch.Tensor] = {}
    for key, new_key, tensor in mapped:
        if new_key not in expected:
            raise ValueError(f"Unexpected decoder key {key!r} (maps to {new_key!r}, which AsukaDecoder lacks).")
        if tuple(tensor.shape) != tuple(expected[new_key].shape):
            raise ValueError(
                f"Wrong shape for decoder key {key!r}: got {tuple(tensor.shape)}, "
                f"expected {tuple(expected[new_key].shape)} (for {new_key!r})."
            )
        converted[new_key] = tensor

    missing = [key for key in expected if key not in converted]
    if missing:
        raise ValueError(
            f"Missing decoder key(s): the checkpoint gives no value for AsukaDecoder's {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)."
        )
    return converted
