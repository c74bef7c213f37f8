"""The rooms of docs/architecture.md, checked from the source: imports point down only, and no module imports another
module's private (`_x`) name."""

import ast
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


# room -> the other rooms it may import (see docs/architecture.md); a module in no room here fits no room and fails.
ALLOWED = {
    "models": set(),
    "schedulers": set(),
    # (defaults: the backbones' Hub ids, for their specs in pipelines/backbones.py)
    "pipelines": {"models", "schedulers", "imageio", "defaults"},
    # asuka/decode.py: the documented import path of the decoder drop-in, which lives in pipelines/decode.py
    "decode": {"pipelines"},
    # `asuka/__init__.py`: lazy re-exports of the pipelines, models and schedulers
    "package": {"models", "schedulers", "pipelines"},
    # tiny random pipelines for tests, `--tiny` and smoke runs
    "testing": {"models", "schedulers", "pipelines"},
    # the registry loads pipelines, converts the ASUKA-FLUX release on first use and builds tiny pipelines
    "methods": {"package", "pipelines", "models", "schedulers", "convert", "testing", "imageio", "defaults"},
    # the ASUKA-FLUX converter writes a light Hub repo, which carries the pipeline's code, so it may use pipelines.
    "convert": {"models", "schedulers", "pipelines", "defaults"},
    # training assembles and saves complete pipelines (--save_pipeline, the Hub push), so it may use pipelines.
    "training": {"package", "models", "schedulers", "pipelines", "imageio", "masks", "defaults"},
    "cli": {"methods", "imageio", "masks", "defaults"},
    "app": {"methods", "imageio", "masks", "defaults"},
    "evaluation": {"methods", "imageio", "masks", "defaults"},
    # the floor: every room may use these
    "imageio": set(),
    "defaults": set(),
    "masks": {"imageio"},
}

# room -> the only third-party packages it may import (besides the standard library); rooms not listed may use any.
# models and schedulers ship to the Hub as remote code; the floor modules promise a small footprint.
THIRD_PARTY = {
    "models": {"torch", "diffusers", "timm", "numpy", "PIL"},
    "schedulers": {"torch", "diffusers", "numpy"},
    "imageio": {"numpy", "PIL"},
    "defaults": {"torch"},
    "masks": {"numpy", "PIL"},
}


def room_of_module(module: str) -> str | None:
    """`asuka.pipelines.x` -> "pipelines", `asuka.cli` and `asuka.__main__` -> "cli", `asuka` -> "package",
    `app` and its modules beside it (`app_cache`) -> "app", `training.x` and `asuka_training.x` -> "training"; None
    outside the project."""
    parts = module.split(".")
    if parts[0] == "app" or parts[0].startswith("app_"):
        return "app"
    if parts[0] in ("training", "asuka_training"):
        return "training"
    if parts[0] != "asuka":
        return None
    if len(parts) == 1:
        return "package"
    return "cli" if parts[1] == "__main__" else parts[1]


def module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an `ImportFrom` names (relative imports resolved against `module`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(root: Path, files: list[Path]) -> list[str]:
    """Every import that breaks the layering or reaches into another module's private names."""
    found = []
    for path in files:
        module = module_name(path, root)
        room = room_of_module(module)
        if room not in ALLOWED:
            found.append(f"{path.relative_to(root)}: fits no room of docs/architecture.md ({room})")
        tree = ast.parse(path.read_text(), filename=str(path))
        imported_modules = {}  # local alias -> absolute module, for `alias._private` attribute access
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.append(alias.name)
                    imported_modules[(alias.asname or alias.name).split(".")[0]] = alias.name
            elif isinstance(node, ast.ImportFrom):
                source = resolve(module, node, path.name == "__init__.py")
                if source == "asuka":  # `from asuka import imageio` names a module; `from asuka import X`, a re-export
                    targets += [f"asuka.{a.name}" if a.name[0].islower() else source for a in node.names]
                else:
                    targets.append(source)
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and source != module:
                        found.append(f"{path.relative_to(root)}: imports private name {alias.name} from {source}")
                    imported_modules[alias.asname or alias.name] = f"{source}.{alias.name}"
            for target in targets:
                target_room = room_of_module(target)
                if target_room is None:
                    package = target.split(".")[0]
                    allowed = THIRD_PARTY.get(room)
                    if package and package not in sys.stdlib_module_names and allowed is not None:
                        if package not in allowed:
                            found.append(f"{path.relative_to(root)}: room {room} imports {package} (third party)")
                elif room in ALLOWED and target_room != room and target_room not in ALLOWED[room]:
                    found.append(f"{path.relative_to(root)}: room {room} imports {target} (room {target_room})")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and room_of_module(imported_modules.get(node.value.id, "")) is not None
            ):
                found.append(f"{path.relative_to(root)}: uses private {node.value.id}.{node.attr}")
    return found


def project_files() -> list[Path]:
    return sorted([*(ROOT / "asuka").rglob("*.py"), *(ROOT / "training").rglob("*.py"), *ROOT.glob("app*.py")])


def test_project_layering_holds():
    problems = violations(ROOT, project_files())
    assert not problems, "Layering broken (see docs/architecture.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        ("asuka/models/bad.py", "from asuka.pipelines import AsukaPipeline\n", "room models imports asuka.pipelines"),
        ("asuka/schedulers/bad.py", "import asuka.methods\n", "room schedulers imports asuka.methods"),
        ("asuka/pipelines/bad.py", "from ..methods import get_method\n", "room pipelines imports asuka.methods"),
        ("asuka/pipelines/bad.py", "from asuka.cli import main\n", "room pipelines imports asuka.cli"),
        ("asuka/methods/bad.py", "from asuka.pipelines.x import _helper\n", "private name _helper"),
        ("asuka/methods/bad.py", "from asuka import imageio\nimageio._open(1)\n", "uses private imageio._open"),
        ("asuka/masks.py", "import torch\n", "room masks imports torch (third party)"),
        ("asuka/masks.py", "from asuka.models import AsukaMAE\n", "room masks imports asuka.models"),
        ("asuka/imageio.py", "from . import defaults\n", "room imageio imports asuka.defaults"),
        ("asuka/models/bad.py", "import cv2\n", "room models imports cv2 (third party)"),
        ("asuka/decode.py", "from asuka.methods import get_method\n", "room decode imports asuka.methods"),
        ("asuka/testing/bad.py", "from asuka.methods import get_method\n", "room testing imports asuka.methods"),
        ("asuka/newroom.py", "import os\n", "fits no room"),
        ("app_cache.py", "from asuka.pipelines import AsukaPipeline\n", "room app imports asuka.pipelines"),
        ("asuka/models/bad.py", "import os\nfrom asuka.defaults import FLUX_FILL_REPO\n", "room models imports"),
    ],
)
def test_checker_catches_each_kind_of_violation(tmp_path, path, source, expected):
    file = tmp_path / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(source)
    problems = violations(tmp_path, [file])
    assert any(expected in problem for problem in problems), problems


def test_checker_accepts_downward_and_own_private_imports(tmp_path):
    file = tmp_path / "asuka" / "pipelines" / "ok.py"
    file.parent.mkdir(parents=True)
    file.write_text("from asuka.models import AsukaMAE\nfrom .steps import plan\n_x = 1\nprint(_x)\n")
    assert violations(tmp_path, [file]) == []


def test_opencv_is_a_test_dependency_only():
    """The MAE reproduces OpenCV's resizes in torch: `cv2` is the tests' reference, never imported by the project."""
    importers = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            if any(module.split(".")[0] == "cv2" for module in modules):
                importers.append(str(path.relative_to(ROOT)))
    assert not importers, f"cv2 imported by {importers}"


@pytest.mark.parametrize("package", ["training/asuka_training", "benchmarks"])
def test_no_import_cycle_within_the_package(package):
    """The modules of the training library and of the benchmarks import each other one way only (type-only and
    function-level imports included): a module that needs a sibling's function takes it from where it lives."""
    folder = ROOT / package
    modules = {path.stem for path in folder.glob("*.py")}
    graph = {}
    for path in folder.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                imported.update(name for name in names if name in modules and name != path.stem)
        graph[path.stem] = imported - {"__init__"}
    graph.pop("__init__", None)

    def cycle_from(start, path):
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return [*path, start]
            if nxt not in path and (found := cycle_from(start, [*path, nxt])):
                return found
        return None

    cycles = [found for start in sorted(graph) if (found := cycle_from(start, [start]))]
    assert not cycles, f"import cycles in {package}: {cycles}"
