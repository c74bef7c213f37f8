# Copyright 2026 The asuka authors. Apache-2.0.
"""A pointer to a component of another Hub repo, so a light ASUKA repo (`hub_light`) loads its backbone from there.

A backbone component is listed in the light repo's `model_index.json` as
`["backbone_component", "BackboneComponent"]`, and its folder holds only this file and `backbone.json`:

    {"repo": "stable-diffusion-v1-5/stable-diffusion-inpainting", "revision": "<commit>", "subfolder": "unet",
     "class_name": "UNet2DConditionModel"}

`DiffusionPipeline.from_pretrained(light_repo, trust_remote_code=True, torch_dtype=...)` calls
`BackboneComponent.from_pretrained(<light_repo>/unet, torch_dtype=..., variant=...)`, which returns the real
diffusers component loaded from the backbone repo at the pinned revision (never an instance of this class). A
variant `v` the backbone offers is announced by a `backbone.<v>.json` copy of the pointer: diffusers only passes
`variant` to a component whose folder holds a file named `*.<v>.*`.

This module ships to the Hub as remote code and is copied alone into each pointer folder, so it is self-contained
and imports only diffusers.
"""

import json
import os
from typing import Any

import diffusers
from diffusers import ModelMixin


# Pointer file of a backbone-component folder.
POINTER_FILE = "backbone.json"
# `from_pretrained` arguments a scheduler accepts too (where and how files are read).
HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token")


def pointer_file(variant: str | None = None) -> str:
    """`backbone.json`, or `backbone.<variant>.json` (the marker that makes diffusers pass `variant`)."""
    return POINTER_FILE if variant is None else f"backbone.{variant}.json"


def read_pointer(folder: str | os.PathLike) -> dict[str, Any]:
    """The pointer of a backbone-component folder: `repo`, `subfolder`, `revision`, `class_name`."""
    path = os.path.join(folder, POINTER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            pointer = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable backbone pointer ({err}).") from err
    missing = [key for key in ("repo", "subfolder", "class_name") if not pointer.get(key)]
    if missing:
        raise ValueError(f"{path}: the backbone pointer lacks {missing}; expected repo, subfolder, class_name.")
    return pointer


def load_backbone_component(pointer: dict[str, Any], revision: str | None = None, **kwargs: Any) -> Any:
    """Load the diffusers component `pointer` names from its repo (at `revision`, else the pinned one).

    `kwargs` are the loading arguments diffusers gives a model (`torch_dtype`, `variant`, `low_cpu_mem_usage`, ...);
    a scheduler receives only the Hub arguments. A backbone that lacks the component raises `ValueError` naming the
    repo, its revision and the component.
    """
    repo, subfolder, class_name = pointer["repo"], pointer["subfolder"], pointer["class_name"]
    revision = revision or pointer.get("revision")
    component_class = getattr(diffusers, class_name, None)
    if component_class is None:
        raise ValueError(f"Backbone component `{subfolder}` names {class_name!r}, which is not a diffusers class.")
    where = f"the backbone repo {repo!r}" + (f" at revision {revision!r}" if revision else "")
    if os.path.isdir(repo) and not os.path.isdir(os.path.join(repo, subfolder)):
        raise ValueError(f"{where} has no `{subfolder}` component ({class_name}); the light repo needs it from there.")
    if not issubclass(component_class, ModelMixin):
        kwargs = {key: value for key, value in kwargs.items() if key in HUB_KWARGS}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if os.path.isdir(repo):
        revision = None  # a local folder has no revisions
    try:
        return component_class.from_pretrained(repo, subfolder=subfolder, revision=revision, **kwargs)
    except OSError as err:
        raise ValueError(f"Could not load `{subfolder}` ({class_name}) from {where}: {err}") from err


class BackboneComponent(ModelMixin):
    """Stands in the light repo's `model_index.json` for a component that lives in the backbone repo.

    It is a `ModelMixin` only so that diffusers hands its `from_pretrained` the model loading arguments
    (`torch_dtype`, `variant`, ...); it is never instantiated.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """The real component named by `<pretrained_model_name_or_path>/backbone.json`, from the backbone repo."""
        subfolder = kwargs.pop("subfolder", None)
        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        return load_backbone_component(read_pointer(folder), **kwargs)
