# Copyright 2026 The asuka authors. Apache-2.0.
"""Remote-code export: make a saved pipeline folder load with `trust_remote_code=True` and without `asuka`.

`write_remote_code` copies the pipeline's source file and every module it imports from the asuka package
(relatively, or as `from asuka.X import`), transitively, next to it, rewriting those imports to
`from .module import ...`; custom components get their source file in their sub-folder. `model_index.json` then
names `[file, Class]` for each. `write_light_repo` / `save_light_pipeline` write the light format
(`hub_light`, docs/hub.md): ASUKA's components with their code and pointers to the backbone repo.

How diffusers 0.42 loads such code (`diffusers.utils.dynamic_modules_utils`): `get_relative_imports` finds
`from .name import` lines only (one dot, a module name); `get_cached_module_file` copies those files from a Hub
repo recursively, but from a local folder only the ones the pipeline file imports itself. So the bundled pipeline
file also imports every module that its bundled siblings need, and every bundled import has the one-dot form.
"""

import ast
import importlib.util
import inspect
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from .backbone_component import BackboneComponent, pointer_file
from .hub_light import BACKBONE_ENTRY, BACKBONE_KEY
from .model_card import light_model_card


# Entries of `model_index.json` whose classes diffusers and transformers load themselves.
LIBRARIES = (None, "diffusers", "transformers")


def write_remote_code(pipeline: DiffusionPipeline, save_directory: str | os.PathLike) -> None:
    """Copy the pipeline's and its custom components' source files into a saved folder and point
    `model_index.json` at them, so `trust_remote_code=True` can load it anywhere."""
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    pipeline_module = bundle_module(type(pipeline).__module__, save_directory)
    index["_class_name"] = [pipeline_module, type(pipeline).__name__]
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] in LIBRARIES:
            continue
        component_class = type(getattr(pipeline, name))
        index[name] = [source_module(component_class, os.path.join(save_directory, name)), component_class.__name__]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)


def source_module(component_class: type, directory: str | os.PathLike) -> str:
    """Copy the file that defines `component_class` into `directory`; its module name, for `model_index.json`."""
    source = inspect.getsourcefile(component_class)
    os.makedirs(directory, exist_ok=True)
    shutil.copyfile(source, os.path.join(directory, os.path.basename(source)))
    return Path(source).stem


def bundle_module(module_name: str, save_directory: str | os.PathLike) -> str:
    """Write `module_name`'s file and the package modules it imports (transitively) flat into `save_directory`.

    Returns the file name (without `.py`) of the written module.
    """
    package_root = module_name.split(".")[0]
    files = {}  # module name -> its import rewrites {line number: bundled module name}
    pending = [module_name]
    while pending:
        name = pending.pop()
        if name in files:
            continue
        files[name] = _package_imports(name, package_root)
        pending.extend(files[name].values())
    stems = {name: name.rsplit(".", 1)[-1] for name in files}
    clashes = sorted({stem for stem in stems.values() if list(stems.values()).count(stem) > 1})
    if clashes:
        raise ValueError(f"Cannot bundle {module_name}: several modules are named {clashes}; rename one of them.")
    for name, imports in files.items():
        lines = Path(_source_file(name)).read_text().splitlines(keepends=True)
        for number, target in imports.items():
            lines[number], found = re.subn(
                r"^(\s*from\s+)\S+(\s+import\b)", rf"\g<1>.{stems[target]}\g<2>", lines[number]
            )
            if not found:
                raise ValueError(f"{name} line {number + 1}: keep `from ... import` on one line to bundle it.")
        if name == module_name:
            lines += _direct_imports(set(files) - {name} - set(imports.values()), stems)
        Path(save_directory, f"{stems[name]}.py").write_text("".join(lines))
    return stems[module_name]


def write_light_repo(
    save_directory: str | os.PathLike,
    pipeline_class: type,
    components: Mapping[str, torch.nn.Module | None],
    backbone: Mapping[str, str],
    backbone_repo: str,
    backbone_revision: str | None = None,
    backbone_variants: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    model_card: str | None = None,
) -> str:
    """Write a light repo for `pipeline_class` into `save_directory`; returns the folder.

    Args:
        save_directory (`str` or `os.PathLike`):
            The folder to write.
        pipeline_class (`type`):
            The pipeline class the repo loads as.
        components (`Mapping[str, torch.nn.Module | None]`):
            ASUKA's own components by name (saved with weights and code); `None` for an absent optional one.
        backbone (`Mapping[str, str]`):
            The backbone's components by name -> diffusers class name, e.g. `{"unet": "UNet2DConditionModel"}`;
            they are written as pointers into `backbone_repo`.
        backbone_repo (`str`):
            A Hub id, or a folder for local use.
        backbone_revision (`str`, *optional*):
            The backbone commit to pin (a commit hash keeps the repo reproducible).
        backbone_variants (`Sequence[str]`, *optional*, defaults to `()`):
            Weight variants the backbone offers (e.g. `("fp16",)`), so `variant=` reaches it.
        config (`Mapping[str, Any]`, *optional*):
            The pipeline's own config values (e.g. `{"working_resolution": 1024}`).
        model_card (`str`, *optional*):
            README.md text.

    The pipeline's code is bundled at the root by `hub_export.bundle_module`, each ASUKA component's code goes into
    its folder.
    """
    os.makedirs(save_directory, exist_ok=True)
    overlap = set(components) & set(backbone)
    if overlap:
        raise ValueError(f"Components {sorted(overlap)} are listed both as ASUKA's and as the backbone's.")
    index: dict[str, Any] = {
        "_class_name": [None, pipeline_class.__name__],
        "_diffusers_version": diffusers.__version__,
        BACKBONE_KEY: {"repo": backbone_repo, "revision": backbone_revision},
        **dict(config or {}),
    }
    for name, class_name in backbone.items():
        folder = os.path.join(save_directory, name)
        source_module(BackboneComponent, folder)
        pointer = {"repo": backbone_repo, "subfolder": name, "revision": backbone_revision, "class_name": class_name}
        for variant in (None, *backbone_variants):
            with open(os.path.join(folder, pointer_file(variant)), "w", encoding="utf-8") as f:
                json.dump({**pointer, **({"variant": variant} if variant else {})}, f, indent=2)
        index[name] = BACKBONE_ENTRY
    for name, component in components.items():
        if component is None:
            index[name] = [None, None]
            continue
        folder = os.path.join(save_directory, name)
        component.save_pretrained(folder, safe_serialization=True)
        library = type(component).__module__.split(".")[0]
        if library == "diffusers":
            index[name] = ["diffusers", type(component).__name__]
        else:
            index[name] = [source_module(type(component), folder), type(component).__name__]
    index["_class_name"][0] = bundle_module(pipeline_class.__module__, save_directory)
    with open(os.path.join(save_directory, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    if model_card is not None:
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card)
    return str(save_directory)


def save_light_pipeline(
    pipeline: diffusers.DiffusionPipeline,
    save_directory: str | os.PathLike,
    backbone: str | None,
    backbone_revision: str | None = None,
    backbone_variants: Sequence[str] = (),
    model_card: str | None = None,
) -> str:
    """`write_light_repo` for a loaded pipeline: its non-backbone components and config values, a generic card.

    The backbone's components are those its class's `backbone_spec` names (`backbones.BackboneSpec.components`).

    This is `save_pretrained(..., light=True)` of the ASUKA pipelines.
    """
    if not backbone:
        raise ValueError("`light=True` needs `backbone`: the Hub id (or folder) of the backbone the repo points to.")
    components, backbone_classes = {}, {}
    for name, value in pipeline.components.items():
        if name in type(pipeline).backbone_spec.components:
            backbone_classes[name] = type(value).__name__
        else:
            components[name] = value
    config = {
        key: value
        for key, value in pipeline.config.items()
        if not key.startswith("_") and key not in pipeline.components
    }
    if model_card is None:
        name = type(pipeline).__name__
        model_card = light_model_card(
            repo_id=os.path.basename(os.path.abspath(save_directory)),
            pipeline_class_name=name,
            title=f"ASUKA ({name})",
            description=f"An ASUKA inpainting model for `{backbone}`.",
            backbone_repo=backbone,
            backbone_revision=backbone_revision,
            provenance=f"Saved with `{name}.save_pretrained(..., light=True)`.",
        )
    return write_light_repo(
        save_directory,
        type(pipeline),
        components,
        backbone_classes,
        backbone,
        backbone_revision=backbone_revision,
        backbone_variants=backbone_variants,
        config=config,
        model_card=model_card,
    )


def _package_imports(module_name: str, package_root: str) -> dict[int, str]:
    """`{line index: imported module}` for the `from ... import` statements of `module_name` that import a module
    of `package_root` (relatively or absolutely)."""
    tree = ast.parse(Path(_source_file(module_name)).read_text())
    package = module_name.rsplit(".", 1)[0]
    imports = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == package_root for alias in node.names):
            raise ValueError(f"{module_name} line {node.lineno}: write `from {package_root}.X import ...` to bundle.")
        if not isinstance(node, ast.ImportFrom):
            continue
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        if target.split(".")[0] != package_root:
            continue
        if node.module is None or _source_file(target).endswith("__init__.py"):
            raise ValueError(
                f"{module_name} line {node.lineno} imports the package {target}; the Hub export bundles modules "
                f"only: import from the module that defines the names (`from {target}.<module> import ...`)."
            )
        imports[node.lineno - 1] = target
    return imports


def _direct_imports(modules: set[str], stems: dict[str, str]) -> list[str]:
    """Import lines that make diffusers copy `modules` from a local folder (see the module docstring)."""
    if not modules:
        return []
    lines = ["\n\n# Added by the Hub export: diffusers copies from a local folder only what this file imports.\n"]
    for name in sorted(modules):
        lines.append(f"from .{stems[name]} import __name__ as _bundled_{stems[name]}  # noqa: E402, F401\n")
    return lines


def _source_file(module_name: str) -> str:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"Cannot find the source of {module_name} to bundle it.")
    return spec.origin
