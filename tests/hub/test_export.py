"""The Hub export bundles a pipeline's package imports (transitively) so the folder loads as diffusers remote code,
from a local folder and from a Hub repo, without the package installed."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from asuka.pipelines.hub_export import bundle_module
from asuka.testing import make_tiny_pipeline


# Loads `module_file` of `folder` with diffusers' remote-code loader, as a local folder and as a Hub repo (downloads
# served from the folder), with `blocked` unimportable. Prints the class's `answer` (or name) both times.
LOADER = textwrap.dedent(
    """
    import os, sys, types
    folder, module_file, class_name, blocked = sys.argv[1:5]
    sys.modules[blocked] = None  # the package itself cannot be imported
    import diffusers.utils.dynamic_modules_utils as dynamic

    def download(repo_id, filename, subfolder=None, **kwargs):
        return os.path.join(folder, subfolder or "", filename)

    local = dynamic.get_class_from_dynamic_module(folder, module_file, class_name=class_name, trust_remote_code=True)
    dynamic.hf_hub_download = download
    dynamic.model_info = lambda *args, **kwargs: types.SimpleNamespace(sha="0" * 40)
    hub = dynamic.get_class_from_dynamic_module(
        "someone/repo", module_file, class_name=class_name, trust_remote_code=True
    )
    print(*(getattr(cls, "answer", cls.__name__) for cls in (local, hub)))
    """
)


def load_both_ways(folder, module_file: str, class_name: str, blocked: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), module_file, class_name, blocked],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def write_package(tmp_path, monkeypatch, files: dict[str, str]) -> str:
    """Write `files` (paths and text with `toypkg` for the package) as an importable package of a name unique to
    this test (imported packages stay in `sys.modules`); returns that name."""
    package = "toypkg_" + re.sub(r"\W", "_", tmp_path.name)
    for name, text in files.items():
        path = tmp_path / "src" / name.replace("toypkg", package)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).replace("toypkg", package))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return package


def test_bundles_relative_and_absolute_package_imports_transitively(tmp_path, monkeypatch):
    package = write_package(
        tmp_path,
        monkeypatch,
        {
            "toypkg/__init__.py": "",
            "toypkg/util.py": "BASE = 40\n",
            "toypkg/pipes/__init__.py": "",
            "toypkg/pipes/steps.py": "from ..util import BASE\n\nSTEP = BASE + 1\n",
            "toypkg/pipes/extra.py": "from toypkg.pipes.steps import STEP\n\nEXTRA = STEP + 1\n",
            "toypkg/pipes/pipe.py": """\
                import math

                from .extra import EXTRA


                class Pipe:
                    answer = math.floor(EXTRA)
                """,
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    assert bundle_module(f"{package}.pipes.pipe", out) == "pipe"
    assert sorted(p.name for p in out.iterdir()) == ["extra.py", "pipe.py", "steps.py", "util.py"]
    assert "from .util import BASE" in (out / "steps.py").read_text()
    assert "from .steps import STEP" in (out / "extra.py").read_text()
    assert load_both_ways(out, "pipe.py", "Pipe", package, tmp_path) == "42 42"


@pytest.mark.parametrize("line", ["from . import util", "from .. import util", "from toypkg.pipes import steps"])
def test_package_imports_are_refused_with_a_clear_error(tmp_path, monkeypatch, line):
    package = write_package(
        tmp_path,
        monkeypatch,
        {
            "toypkg/__init__.py": "",
            "toypkg/util.py": "",
            "toypkg/pipes/__init__.py": "",
            "toypkg/pipes/steps.py": "",
            "toypkg/pipes/pipe.py": f"{line}\n",
        },
    )
    with pytest.raises(ValueError, match="bundles modules only"):
        bundle_module(f"{package}.pipes.pipe", tmp_path)


def test_asuka_pipeline_export_is_self_contained(tmp_path):
    folder = tmp_path / "hub"
    make_tiny_pipeline("sd").save_pretrained(folder, hub_format=True)
    bundled = {"pipeline_asuka.py", "pipeline_mixins.py", "inpaint_steps.py", "imageio.py", "hub_light.py"}
    shipped = {p.name for p in folder.iterdir()}
    assert bundled <= shipped
    assert not {"hub_export.py", "model_card.py"} & shipped  # the writer and the card stay in the package
    for name in bundled:
        for line in (folder / name).read_text().splitlines():
            if line.startswith(("import ", "from ")):
                module = line.split()[1]
                assert module.split(".")[0] != "asuka" and not module.startswith(".."), f"{name}: {line}"
    loaded = load_both_ways(folder, "pipeline_asuka.py", "AsukaPipeline", "asuka", tmp_path)
    assert loaded.split() == ["AsukaPipeline"] * 2


@pytest.mark.parametrize("kind", ["sd", "flux"])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hub_format": True, "light": True, "backbone": "someone/backbone"}, "name two formats"),
        ({"backbone": "someone/backbone"}, r"\['backbone'\] apply to a light repo only"),
        ({"hub_format": True, "model_card": "# card"}, r"\['model_card'\] apply to a light repo only"),
        ({"light": True, "backbone": "someone/backbone", "variant": "fp16"}, r"\['variant'\] with `light=True`"),
        ({"hub_format": True, "push_to_hub": True}, "before `hub_format=True` adds its code"),
    ],
)
def test_save_pretrained_refuses_contradictory_formats_before_writing(tmp_path, kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_pipeline(kind).save_pretrained(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [{"hub_format": True}, {"light": True, "backbone": "someone/backbone"}])
def test_strdiffusion_refuses_the_hub_formats(tmp_path, kwargs):
    with pytest.raises(
        ValueError, match="StrDiffusionPipeline.save_pretrained does not take `(hub_format|light)=True`"
    ):
        make_tiny_pipeline("strdiffusion").save_pretrained(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_saving_a_hub_format_without_the_exporter_names_the_package(tmp_path, monkeypatch):
    """A pipeline loaded as remote code has `hub_light` but not the exporter: both formats ask for `asuka`."""
    from asuka.pipelines import hub_light

    monkeypatch.setattr(hub_light, "EXPORTER", "asuka_not_installed.hub_export")
    pipe = make_tiny_pipeline("sd")
    for kwargs in ({"hub_format": True}, {"light": True, "backbone": "someone/backbone"}):
        with pytest.raises(ImportError, match="`asuka` package"):
            pipe.save_pretrained(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()
