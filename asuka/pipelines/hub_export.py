# Copyright 2026 The asuka authors. Apache-2.0.
"""Remote-code export: make a saved pipeline folder load with `trust_remote_code=True` and without `asuka`.

`write_remote_code` copies the pipeline's source file and every module it imports from the asuka package
(relatively, or as `from asuka.X import`), transitively, next to it, rewriting those imports to
`from .module import ...`; custom components get their source file in their sub-folder. `model_index.json` then
names `[file, Class]` for each.

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
from pathlib import Path

from diffusers import DiffusionPipeline


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
