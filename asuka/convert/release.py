"""Convert the authors' ASUKA-FLUX release (`yikaiwang/ASUKA-FLUX.1-Fill`) to diffusers component folders.

`python -m asuka.convert asuka-flux --release DIR_OR_REPO --out DIR [--push-to-hub REPO]`

Release files and what becomes of them:

| file                       | content                                   | component                          |
|----------------------------|-------------------------------------------|------------------------------------|
| `mae_300.pth`              | `{"model": state_dict}`                   | `mae/` (`AsukaMAE`)                |
| `asuka_alignment_t5.pt`    | state dict of the 4096-wide aligner       | `token_aligner/` (`AsukaAligner`)  |
| `txt_256.pt`               | (1, 256, 4096) token null embedding       | `token_aligner/` (its null)        |
| `asuka_alignment_clip.pt`  | state dict of the 768-wide aligner        | `pooled_aligner/` (`AsukaAligner`) |
| `vec.pt`                   | (1, 768) pooled null embedding            | `pooled_aligner/` (its null)       |
| `asuka_decoder.ckpt`       | `{"state_dict": {"decoder.*": ..., ...}}` | `decoder/` (`AsukaDecoder`)        |

Keys the forward pass never uses are dropped by the mapping functions, which document why:
`asuka.convert.asuka_flux` (the MAE and aligners: each aligner block's `modulation.lin`, which the
reference builds but never calls) and `asuka.convert.ldm_decoder` (the decoder's `up_layers.*`, and
every checkpoint key outside `decoder.`, i.e. the VAE encoder and training-wrapper state). The
release's `txt.pt` (the empty-prompt T5 embedding, 512 tokens) is not used by ASUKA and not read.

Pickles are only read with `torch.load(..., weights_only=True)`, and every value must be a tensor.
The output is written to a temporary sibling folder and renamed into place at the end, so a
half-written output never looks like a converted folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from asuka.convert.asuka_flux import convert_aligner_state_dict, convert_mae_state_dict
from asuka.convert.ldm_decoder import ASUKA_FLUX_DECODER_CONFIG, convert_decoder_state_dict
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE
from asuka.pipelines.pipeline_asuka_flux import ASUKA_FLUX_COMPONENTS


RELEASE_REPO = "yikaiwang/ASUKA-FLUX.1-Fill"
BASE_MODEL = "black-forest-labs/FLUX.1-Fill-dev"

MAE_FILE = "mae_300.pth"
TOKEN_ALIGNER_FILE = "asuka_alignment_t5.pt"
POOLED_ALIGNER_FILE = "asuka_alignment_clip.pt"
DECODER_FILE = "asuka_decoder.ckpt"
POOLED_NULL_FILE = "vec.pt"
TOKEN_NULL_FILE = "txt_256.pt"
RELEASE_FILES = (MAE_FILE, TOKEN_ALIGNER_FILE, POOLED_ALIGNER_FILE, DECODER_FILE, POOLED_NULL_FILE, TOKEN_NULL_FILE)

#: The release's interpolation towards the null embeddings (the authors' `--condition_weight`).
RELEASE_CONDITION_WEIGHT = 0.5


# ---------------------------------------------------------------------------------------- reading


def resolve_release(release: str | os.PathLike, token: str | None = None, cache_dir: str | None = None) -> Path:
    """A local release folder, or the snapshot of the needed files of a Hub repo (`owner/name`)."""
    path = Path(release)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"--release {release} is a file; accepted: the folder holding {', '.join(RELEASE_FILES)}, or a Hub repo id."
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(release)):
        raise ValueError(f"--release {release!r} is neither a folder nor a Hub repo id (owner/name).")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(release), allow_patterns=list(RELEASE_FILES), token=token, cache_dir=cache_dir))


def load_release_file(folder: Path, name: str) -> Any:
    """`torch.load(weights_only=True)` of one release file; `ValueError` names the file on failure."""
    path = folder / name
    if not path.is_file():
        raise ValueError(f"Missing release file {name!r} in {folder}; the release needs {', '.join(RELEASE_FILES)}.")
    try:
        try:  # memory-mapped where the file format allows it: the T5 aligner alone is ~4 GB in float32
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"Refusing to load {name}: it holds objects other than tensors and plain containers, which "
            f"would need full unpickling ({first_line}). Only weights_only=True loading is allowed."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"Could not read release file {name} ({type(error).__name__}: {error}).") from None


def tensor_state_dict(obj: Any, name: str, entry: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in `obj` (under `entry` if given), refusing any non-tensor value."""
    if entry is not None:
        if not isinstance(obj, Mapping) or entry not in obj:
            found = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{name}: expected a checkpoint dict with key {entry!r}, found {found}.")
        obj = obj[entry]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: expected a state dict (name -> tensor), got {type(obj).__name__}.")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}: key {key!r} holds a {type(value).__name__}, not a tensor; refusing it.")
    return dict(obj)


def load_null_embedding(folder: Path, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A null-embedding file: one tensor of exactly `shape`."""
    value = load_release_file(folder, name)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a single tensor of shape {shape}, got {type(value).__name__}.")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: wrong shape {tuple(value.shape)}, expected {tuple(shape)}.")
    return value


def aligner_config(state_dict: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """`AsukaAligner` width, depth and head size read off a release aligner (`nn.Sequential` keys)."""
    for key in ("0.weight", "1.linear1.weight", "1.norm.query_norm.scale"):
        if key not in state_dict:
            raise ValueError(f"{name}: missing key {key!r}; is this an ASUKA alignment checkpoint?")
    hidden_dim, in_dim = state_dict["0.weight"].shape
    num_blocks = len({key.split(".")[0] for key in state_dict if key.endswith(".linear1.weight")})
    mlp_hidden = state_dict["1.linear1.weight"].shape[0] - 3 * hidden_dim
    return dict(
        in_dim=int(in_dim),
        hidden_dim=int(hidden_dim),
        num_blocks=num_blocks,
        head_dim=int(state_dict["1.norm.query_norm.scale"].shape[0]),
        mlp_ratio=mlp_hidden / hidden_dim,
    )


# ---------------------------------------------------------------------------------------- building


def _with_file(name: str, error: ValueError) -> ValueError:
    message = str(error)
    return ValueError(message if message.startswith(name) else f"{name}: {message}")


def _build(model_class: type, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], name: str):
    """`model_class(**config)` holding exactly `state_dict` (no random init, no copies)."""
    with torch.device("meta"):
        model = model_class.from_config(dict(config))
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:  # a mapping gap the mapping function did not report
        raise ValueError(f"{name}: the converted keys do not fit {model_class.__name__}: {error}") from None
    return model.eval()


def build_components(folder: Path, condition_weight: float = RELEASE_CONDITION_WEIGHT) -> dict[str, torch.nn.Module]:
    """Read, map and check every release file; returns `mae`, `token_aligner`, `pooled_aligner`, `decoder`."""
    missing = [name for name in RELEASE_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"Missing release file(s) {missing} in {folder}; the release needs {', '.join(RELEASE_FILES)}."
        )
    components: dict[str, torch.nn.Module] = {}

    mae_sd = tensor_state_dict(load_release_file(folder, MAE_FILE), MAE_FILE, "model")
    try:  # the default AsukaMAE config is the release's ViT-B/16 at 256 pixels
        components["mae"] = _build(AsukaMAE, {}, convert_mae_state_dict(mae_sd), MAE_FILE)
    except ValueError as error:
        raise _with_file(MAE_FILE, error) from None
    num_tokens = components["mae"].num_patches

    for component, file, null_file, null_kind in (
        ("token_aligner", TOKEN_ALIGNER_FILE, TOKEN_NULL_FILE, "tokens"),
        ("pooled_aligner", POOLED_ALIGNER_FILE, POOLED_NULL_FILE, "pooled"),
    ):
        aligner_sd = tensor_state_dict(load_release_file(folder, file), file)
        config = aligner_config(aligner_sd, file)
        config.update(num_tokens=num_tokens, null_embedding=null_kind, condition_weight=condition_weight)
        null_shape = (1, num_tokens, config["hidden_dim"]) if null_kind == "tokens" else (1, config["hidden_dim"])
        null = load_null_embedding(folder, null_file, null_shape).to(aligner_sd["0.weight"].dtype)
        try:
            converted = convert_aligner_state_dict(aligner_sd, null_embedding=null)
            components[component] = _build(AsukaAligner, config, converted, file)
        except ValueError as error:
            raise _with_file(file, error) from None

    decoder_sd = tensor_state_dict(load_release_file(folder, DECODER_FILE), DECODER_FILE, "state_dict")
    try:
        converted = convert_decoder_state_dict(decoder_sd, ASUKA_FLUX_DECODER_CONFIG)
        components["decoder"] = _build(AsukaDecoder, ASUKA_FLUX_DECODER_CONFIG, converted, DECODER_FILE)
    except ValueError as error:
        raise _with_file(DECODER_FILE, error) from None
    return components


# ---------------------------------------------------------------------------------------- writing


def _unshare(model: torch.nn.Module) -> None:
    """Give every parameter its own contiguous storage (safetensors refuses shared or strided views)."""
    seen: set[int] = set()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None:
                    continue
                pointer = tensor.untyped_storage().data_ptr()
                if pointer in seen or not tensor.is_contiguous():
                    data = tensor.detach().clone(memory_format=torch.contiguous_format)
                    store[key] = torch.nn.Parameter(data, requires_grad=False) if key in module._parameters else data
                seen.add(store[key].untyped_storage().data_ptr())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(source: str, hashes: Mapping[str, str], condition_weight: float) -> str:
    """README.md of a converted folder: what it is, where it came from, how to use it."""
    files = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in hashes.items())
    return f"""---
library_name: diffusers
base_model: {BASE_MODEL}
pipeline_tag: image-to-image
tags:
- inpainting
- asuka
- flux
license: other
---

# ASUKA components for FLUX.1-Fill-dev (diffusers format)

The ASUKA modules of the authors' release [`{RELEASE_REPO}`](https://huggingface.co/{RELEASE_REPO})
(ECCV 2024, "Towards Stable and Faithful Inpainting"), converted with the `asuka` package
(`python -m asuka.convert asuka-flux`) into diffusers component folders:

| folder | class | role |
|---|---|---|
| `mae/` | `asuka.models.AsukaMAE` | inpainting MAE; its prior replaces the text |
| `token_aligner/` | `asuka.models.AsukaAligner` | prior -> 256x4096 tokens (in place of T5), with the null embedding `txt_256.pt` |
| `pooled_aligner/` | `asuka.models.AsukaAligner` | prior -> 768 pooled vector (in place of CLIP), with the null embedding `vec.pt` |
| `decoder/` | `asuka.models.AsukaDecoder` | mask-conditioned 16-channel KL decoder |

The aligners interpolate towards the null embeddings with `condition_weight={condition_weight}` by default.
The FLUX.1-Fill-dev backbone is **not** included: it is gated and under the FLUX.1 [dev] Non-Commercial
License. Accept that licence on its Hub page, log in (`hf auth login`), then:

```python
import torch
from asuka import AsukaFluxPipeline

pipe = AsukaFluxPipeline.from_pretrained(
    "{BASE_MODEL}", asuka="<this repo or folder>", torch_dtype=torch.bfloat16
).to("cuda")
result = pipe(image=image, mask_image=mask).images[0]  # white mask pixels are repainted
```

Use of these weights follows the terms of the original release. Source: `{source}`.

| release file | sha256 |
|---|---|
{files}
"""


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {out} already exists and is not empty; choose another folder or pass --overwrite.")


def write_components(
    components: Mapping[str, torch.nn.Module],
    out: Path,
    card: str,
    metadata: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Save the components as safetensors folders under `out`, atomically (temp folder + rename)."""
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name in ASUKA_FLUX_COMPONENTS:
            model = components[name]
            _unshare(model)
            model.save_pretrained(tmp / name, safe_serialization=True)
        (tmp / "conversion.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_asuka_flux(
    release: str | os.PathLike,
    out: str | os.PathLike,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    condition_weight: float = RELEASE_CONDITION_WEIGHT,
    token: str | None = None,
    private: bool = False,
) -> Path:
    """Convert an ASUKA-FLUX release (folder or Hub repo) into `out`; optionally upload it.

    Returns the output folder. Every problem with the release raises `ValueError` naming the file
    (and key); nothing is left at `out` then.
    """
    _check_out(Path(out), overwrite)  # before any heavy work
    folder = resolve_release(release, token=token)
    components = build_components(folder, condition_weight=condition_weight)
    hashes = {name: _sha256(folder / name) for name in RELEASE_FILES}
    metadata = {
        "format": "asuka-flux",
        "source": str(release),
        "base_model": BASE_MODEL,
        "condition_weight": condition_weight,
        "release_files_sha256": hashes,
    }
    out = write_components(
        components, Path(out), model_card(str(release), hashes, condition_weight), metadata, overwrite
    )
    if push_to_hub:
        push_folder(out, push_to_hub, token=token, private=private)
    return out


def push_folder(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> None:
    """Create `repo_id` (a model repo) if needed and upload the converted folder to it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Add converted ASUKA-FLUX components")


# ---------------------------------------------------------------------------------------- CLI


def add_asuka_flux_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `asuka-flux` on the `python -m asuka.convert` sub-command parser."""
    parser = subparsers.add_parser(
        "asuka-flux",
        help="ASUKA for FLUX.1-Fill (yikaiwang/ASUKA-FLUX.1-Fill) -> diffusers component folders",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--release", required=True, help=f"release folder or Hub repo (e.g. {RELEASE_REPO})")
    parser.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo as private")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument(
        "--condition-weight",
        type=float,
        default=RELEASE_CONDITION_WEIGHT,
        help="default interpolation towards the null embeddings stored in the aligners (release: 0.5)",
    )
    parser.set_defaults(func=_run_asuka_flux)


def _run_asuka_flux(args: argparse.Namespace) -> None:
    out = convert_asuka_flux(
        args.release,
        args.out,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
        condition_weight=args.condition_weight,
        private=args.private,
    )
    print(f"Wrote {out}" + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else ""))
