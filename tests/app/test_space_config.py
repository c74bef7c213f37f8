"""The repository deploys as a Hugging Face Space unchanged: README front matter and the pinned Gradio agree."""

import re

import gradio
import yaml

from asuka import methods
from asuka.defaults import SEGMENT_MODEL_REPO
from tests.support.app_launcher import ROOT


# Hardware flavours documented for `suggested_hardware` in the Spaces configuration reference.
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "a10g-small", "a10g-large", "a10g-largex2"}
HARDWARE |= {"a10g-largex4", "a100-large", "l4x1", "l4x4", "l40sx1", "l40sx4", "h100", "zero-a10g"}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "the Space configuration must be the very first thing in README.md"
    block = text.split("---\n", 2)[1]
    return yaml.safe_load(block)


def pinned_gradio() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.fullmatch(r"gradio\s*==\s*([0-9][0-9.]*)\s*(#.*)?", line.strip())
        if match:
            return match.group(1)
    raise AssertionError("requirements.txt must pin gradio exactly (gradio==X.Y.Z)")


def test_front_matter_describes_a_gradio_space():
    config = front_matter()
    assert config["sdk"] == "gradio"
    assert config["sdk_version"] == pinned_gradio()
    assert (ROOT / config["app_file"]).is_file() and config["app_file"] == "app.py"
    assert config["suggested_hardware"] in HARDWARE
    assert isinstance(config["title"], str) and config["title"]
    assert len(config.get("short_description", "")) <= 60  # the Hub's limit


def test_pinned_gradio_is_the_one_installed():
    assert pinned_gradio() == gradio.__version__


def test_front_matter_lists_the_models_the_methods_download():
    models = front_matter()["models"]
    assert isinstance(models, list) and all(re.fullmatch(r"[\w.-]+/[\w.-]+", m) for m in models)
    hub_defaults = {spec.default_model for spec in methods.list_methods() if spec.default_model}
    hub_defaults.add(SEGMENT_MODEL_REPO)  # click to select
    assert hub_defaults and hub_defaults <= set(models), hub_defaults - set(models)


def test_readme_first_command_still_starts_the_tiny_demo():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_bash = text.split("```bash\n", 1)[1].split("\n", 1)[0]
    assert first_bash.endswith("app.py --tiny")  # .ci/run runs it
