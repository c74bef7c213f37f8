"""Precomputed aligner inputs on disk: a manifest, safetensors shards of samples, the validation batch.

A folder written by `training/prepare_aligner_inputs.py` holds

- `manifest.json`: the backbone, the identity (class and a sha256 of config and weights) of the VAE, the MAE and the
  masked-image encoder where the backbone folder has one, the resolution (`input_identity`), the storage dtype, the
  sample settings (data and mask flags, seed), `samples_per_epoch`, `num_epochs`, `count`, `shard_size` and
  `num_shards`;
- `shard-000000.safetensors`, ...: shard k holds the samples at positions `k * shard_size` onwards, position
  `epoch * samples_per_epoch + index` being what the training data gives for `index` in `epoch`, stacked per field
  (`aligner_inputs.POSTERIOR_FIELDS`, `PRIOR_FIELDS`, the mask bit-packed along its rows, "num_bad_images",
  "num_bad_masks", "epoch", "index"). A shard is written under a `.partial-` name and renamed when complete, so
  only complete shards carry the final name;
- `validation.safetensors`: the pixels and masks of the first samples, the training run's validation grids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .aligner_inputs import POSTERIOR_FIELDS, PRIOR_FIELDS


logger = logging.getLogger("asuka.training")

MANIFEST = "manifest.json"
VALIDATION = "validation.safetensors"
FORMAT = "asuka-aligner-inputs"
# The per-sample integers a shard stores beside the inputs (int64).
COUNT_FIELDS = ("num_bad_images", "num_bad_masks", "epoch", "index")


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.safetensors"


def shard_positions(shard: int, count: int, shard_size: int) -> range:
    """The sample positions shard `shard` of `count` samples holds."""
    return range(shard * shard_size, min((shard + 1) * shard_size, count))


def process_shards(num_shards: int, process_index: int, num_processes: int) -> list[int]:
    """The shards process `process_index` of `num_processes` writes: every `num_processes`-th, from its index."""
    return list(range(process_index, num_shards, num_processes))


def model_identity(model: torch.nn.Module) -> dict[str, str]:
    """A model's class and the sha256 of its config (without private `_` keys) and of every weight (name, dtype,
    shape, bytes): two models agree when they compute the same."""
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "sha256": digest.hexdigest()}


def input_identity(
    backbone: Any, mae: torch.nn.Module, masked_image_encoder: torch.nn.Module | None, resolution: int
) -> dict[str, Any]:
    """What makes stored inputs right for a run (a training run and the folder it reads agree on it): the backbone's
    name, the resolution and the
    identity of the VAE, of the MAE and of the masked-image encoder (None where the VAE encodes the masked image)."""
    return {
        "backbone": backbone.spec.name,
        "resolution": resolution,
        "vae": model_identity(backbone.vae),
        "mae": model_identity(mae),
        "masked_image_encoder": None if masked_image_encoder is None else model_identity(masked_image_encoder),
    }


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, R, R) 0/1 masks -> (B, 1, R, ceil(R / 8)) uint8, eight pixels of a row per byte."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy() > 0.5, axis=-1))


def unpack_mask(packed: torch.Tensor, width: int) -> torch.Tensor:
    """The float32 0/1 masks `pack_mask` packed, `width` pixels a row."""
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=width).astype(np.float32))


def save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """`save_file` to a `.partial-` name beside `path`, then rename: `path` exists only when complete."""
    partial = path.with_name(f".partial-{path.name}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
    os.replace(partial, path)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    partial = folder / f".partial-{MANIFEST}"
    partial.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(partial, folder / MANIFEST)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a precomputed folder; `ValueError` when there is none or it is of another format."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{folder}: no readable {MANIFEST}; pass a folder written by training/prepare_aligner_inputs.py."
        ) from error
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a manifest of precomputed aligner inputs (format {FORMAT!r}).")
    return manifest


def manifest_differences(manifest: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """`key: stored != expected` for every key of `expected` the manifest records otherwise."""
    differ = [key for key, value in expected.items() if manifest.get(key) != value]
    return [f"{key}: {manifest.get(key)!r} != {expected[key]!r}" for key in differ]


def missing_shards(folder: Path, manifest: dict[str, Any]) -> list[int]:
    return [k for k in range(manifest["num_shards"]) if not (folder / shard_name(k)).is_file()]


class PrecomputedDataset(torch.utils.data.Dataset):
    """The samples of a precomputed folder, as map-style training data of `samples_per_epoch` items.

    `set_epoch(epoch)` selects stored epoch `epoch % num_epochs`; item `index` of it is what the on-the-fly data
    gives for `index` in that epoch, with the mask unpacked to (1, R, R) float32 and the posteriors and priors in
    the stored dtype. `expected` holds the run's `input_identity`: a folder that records other values, or misses a
    shard, raises `ValueError`.
    """

    def __init__(self, folder: str | os.PathLike, expected: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        differences = manifest_differences(self.manifest, expected)
        if differences:
            raise ValueError(
                f"--precomputed {folder} was prepared for another run (stored != this run): {'; '.join(differences)}. "
                "Prepare it again with this run's backbone, VAE, MAE and --resolution."
            )
        missing = missing_shards(self.folder, self.manifest)
        if missing:
            raise ValueError(
                f"--precomputed {folder} is incomplete: {len(missing)} of {self.manifest['num_shards']} shards are "
                f"missing (first: {shard_name(missing[0])}); run training/prepare_aligner_inputs.py again to finish."
            )
        self.samples_per_epoch = self.manifest["samples_per_epoch"]
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.manifest["num_epochs"]:
            logger.warning(
                "epoch %d: %s stores %d epoch(s) of samples; they repeat from here",
                epoch,
                self.folder,
                self.manifest["num_epochs"],
            )
        self.epoch = epoch % self.manifest["num_epochs"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        position = self.epoch * self.samples_per_epoch + index
        shard, offset = divmod(position, self.manifest["shard_size"])
        with safe_open(str(self.folder / shard_name(shard)), framework="pt") as tensors:
            fields = POSTERIOR_FIELDS + PRIOR_FIELDS
            sample = {name: tensors.get_slice(name)[offset : offset + 1][0] for name in fields}
            mask = tensors.get_slice("mask")[offset : offset + 1]
            counts = {name: int(tensors.get_slice(name)[offset]) for name in ("num_bad_images", "num_bad_masks")}
        sample["mask"] = unpack_mask(mask, self.manifest["resolution"])[0]
        return {**sample, **counts}

    def validation_batch(self, count: int) -> dict[str, torch.Tensor]:
        """The first `count` validation samples stored (the on-the-fly run's `data.validation_batch`)."""
        stored = load_file(str(self.folder / VALIDATION))
        if count > len(stored["mask"]):
            logger.warning("%s stores %d validation samples; using those", self.folder, len(stored["mask"]))
        return {name: tensor[:count] for name, tensor in stored.items()}
