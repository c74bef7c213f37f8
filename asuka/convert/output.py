"""Writing a converted folder: safetensors components, written atomically, never over an existing folder unless
asked; and uploading it to the Hub.

The folder is written to a temporary sibling and renamed into place at the end, so a half-written output never
looks like a converted folder.
"""

import argparse
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def add_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The output flags every converter command takes: `--out` (a `what` folder), `--push-to-hub`, `--overwrite`."""
    parser.add_argument("--out", required=True, help=f"output {what} (must not exist, unless --overwrite)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def check_output_folder(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an existing, non-empty `out` unless `overwrite` (checked before any heavy work)."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise ValueError(f"--out {out} already exists and is not empty; choose another folder or pass --overwrite.")


def unshare(model: torch.nn.Module) -> None:
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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file, read in 1 MiB chunks: the provenance a converted folder records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(out: str | os.PathLike, write: Callable[[Path], Any], overwrite: bool = False) -> Path:
    """Run `write(folder)` on a temporary sibling of `out` and rename it into place when it returns. Returns `out`."""
    out = Path(out)
    check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
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


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Add converted weights",
) -> None:
    """Create `repo_id` (a model repo) if needed and upload the converted folder to it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
