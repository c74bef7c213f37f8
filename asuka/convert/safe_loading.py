"""Safe reading of official checkpoints and the one strict-loading rule every converter follows.

Pickles are only read with `torch.load(..., weights_only=True)`: a file holding anything but tensors and plain
containers is refused before any of its objects is built. Safetensors files are read with safetensors. Every
value of a state dict must be a tensor, and a state dict loads into a model only if it holds exactly the model's
keys with the model's shapes; otherwise a `ValueError` names the file and the missing, unexpected or wrong-shape
keys (in the checkpoint's own names where a key mapping renamed them).
"""

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError
from safetensors.torch import load_file


def load_checkpoint(path: str | os.PathLike) -> Any:
    """One checkpoint file: `.safetensors` with safetensors, anything else with `torch.load(weights_only=True)`.

    Pickles are memory-mapped where their format allows it (a release aligner alone is ~4 GB in float32).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"Could not read {path} ({type(error).__name__}: {error}).") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"Refusing to load {path}: it holds objects other than tensors and plain containers, which "
            f"would need full unpickling ({first_line}). Only weights_only=True loading is allowed."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"Could not read {path} ({type(error).__name__}: {error}).") from None


def tensor_state_dict(obj: Any, source: str = "", entry: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in `obj` (under `entry` if given), refusing any key that is not a string or value not a tensor.

    `source` (a file name) starts every error message when given.
    """
    prefix = f"{source}: " if source else ""
    if entry is not None:
        if not isinstance(obj, Mapping) or entry not in obj:
            found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{prefix}expected a checkpoint dict with key {entry!r}, found {found}.")
        obj = obj[entry]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{prefix}expected a state dict (a flat mapping of names to tensors), got {type(obj).__name__}."
        )
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{prefix}key {key!r} holds a {type(value).__name__}, not a tensor; "
                "a state dict is a flat mapping of names to tensors."
            )
    return dict(obj)


def _listed(keys: list[str]) -> str:
    return f"{keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)} in all)"


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    source: str = "",
    names: Mapping[str, str] | None = None,
    what: str = "",
) -> None:
    """Raise `ValueError` unless `state_dict` holds exactly `model`'s keys with `model`'s shapes.

    `model` may live on the meta device (no memory, no random init). `names` maps a converted key back to the
    checkpoint key it came from, for the messages; `what` (e.g. `"decoder"`) qualifies the word "key" in them.
    """
    prefix, what, names = (f"{source}: " if source else ""), (f"{what} " if what else ""), names or {}
    model_name = type(model).__name__
    expected = model.state_dict()
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        shown = [names.get(key, key) + (f" (as {key})" if names.get(key, key) != key else "") for key in unexpected]
        raise ValueError(f"{prefix}Unexpected {what}key(s) {_listed(shown)}: {model_name} has no such parameter.")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            name = names.get(key, key)
            raise ValueError(
                f"{prefix}Wrong shape for {what}key {name!r}: got {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}{f' (for {key!r})' if name != key else ''}."
            )
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise ValueError(
            f"{prefix}Missing {what}key(s): {model_name} keys missing from the checkpoint: {_listed(missing)}."
        )


def build_strict(
    model_class: type,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    source: str = "",
    checked: bool = False,
) -> torch.nn.Module:
    """`model_class.from_config(config)` with its parameters built on the meta device (no memory, no random init)
    and holding exactly the tensors of `state_dict` (no copies), in eval mode. Buffers are built for real: a
    non-persistent one (a constant kernel) is in no state dict and would otherwise stay on the meta device.

    Checked with `check_state_dict` first (a mismatch is a `ValueError` naming `source` and the keys), unless
    `checked` says the caller already ran it on this state dict (torch's strict loading still refuses a mismatch then).
    """
    with init_empty_weights(include_buffers=False):
        model = model_class.from_config(dict(config))
    if not checked:
        check_state_dict(state_dict, model, source)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return model.eval()
