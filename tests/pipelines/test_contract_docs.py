"""The pipelines' documentation follows diffusers: a runnable `EXAMPLE_DOC_STRING` placed by
`replace_example_docstring`, and every `__call__` / component argument documented as ``name (`type`, ...):``."""

import importlib
import inspect
import re

import numpy as np
import PIL.Image
import pytest
import torch

from asuka import AsukaFluxPipeline, AsukaPipeline, StrDiffusionPipeline
from asuka.models import (
    AsukaAligner,
    AsukaDecoder,
    AsukaMAE,
    AsukaVAEEncoder,
    StrDiffusionDiscriminator,
    StrDiffusionUNet,
)
from tests.support.pipeline_contract import CASES, Case, make_pipe


PIPELINES = {"sd": AsukaPipeline, "flux": AsukaFluxPipeline, "strdiffusion": StrDiffusionPipeline}

# The model ids each example loads from; the test swaps every one for a saved tiny pipeline folder.
EXAMPLE_IDS = {
    "sd": ["./asuka-sd"],
    "flux": ["black-forest-labs/FLUX.1-Fill-dev", "./asuka-flux"],
    "strdiffusion": ["./strdiffusion"],
}


def example_code(docstring: str) -> str:
    """The doctest-style code of the first ```py block: `>>> ` and `... ` prompts stripped, other lines dropped."""
    block = re.search(r"```py\n(.*?)```", docstring, re.S)
    assert block, "no ```py block"
    lines = []
    for line in block.group(1).splitlines():
        line = line.strip()
        if line.startswith((">>>", "...")):
            lines.append(line[4:])
    return "\n".join(lines)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_example_docstring_runs_with_a_tiny_pipeline(case: Case, tmp_path, monkeypatch):
    pipeline_class = PIPELINES[case.kind]
    module = importlib.import_module(pipeline_class.__module__)
    assert module.EXAMPLE_DOC_STRING.strip() in pipeline_class.__call__.__doc__  # placed by replace_example_docstring

    folder = tmp_path / "tiny"
    make_pipe(case).save_pretrained(folder)
    code = example_code(module.EXAMPLE_DOC_STRING)
    for model_id in EXAMPLE_IDS[case.kind]:
        assert f'"{model_id}"' in code
        code = code.replace(f'"{model_id}"', repr(str(folder)))

    # The examples read `photo.png` and `mask.png` from the working directory and write `inpainted.png`.
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    PIL.Image.fromarray((rng.rand(48, 64, 3) * 255).astype(np.uint8)).save("photo.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[12:36, 16:40] = 255
    PIL.Image.fromarray(mask).save("mask.png")
    torch.manual_seed(0)
    exec(compile(code, f"{pipeline_class.__name__}.EXAMPLE_DOC_STRING", "exec"), {})
    with PIL.Image.open(tmp_path / "inpainted.png") as result:
        assert result.size == (64, 48)


def documented_arguments(docstring: str) -> dict[str, str]:
    """``name (`type`, ...):`` header lines of a Google-style "Args:" / "Parameters:" section, by name."""
    section = re.split(r"^\s*(?:Args|Parameters):\s*$", docstring, maxsplit=1, flags=re.M)[-1]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\s*(\w+) \((\[?`.+?)\):", section, re.M)}


def check_typed_docs(function, docstring: str) -> None:
    documented = documented_arguments(docstring)
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        assert name in documented, f"{function.__qualname__}: `{name}` is not documented as name (`type`, ...):"
        header = documented[name]
        if parameter.default is not inspect.Parameter.empty:
            assert "*optional*" in header, f"{function.__qualname__}: `{name}` has a default but is not *optional*"
            if parameter.default is not None and not isinstance(parameter.default, list):
                assert "defaults to" in header, f"{function.__qualname__}: `{name}` does not say its default"


@pytest.mark.parametrize("pipeline_class", PIPELINES.values(), ids=lambda c: c.__name__)
def test_call_arguments_are_documented_in_the_diffusers_format(pipeline_class):
    check_typed_docs(pipeline_class.__call__, pipeline_class.__call__.__doc__)
    check_typed_docs(pipeline_class.__init__, pipeline_class.__doc__)
    assert "Returns:" in pipeline_class.__call__.__doc__


@pytest.mark.parametrize(
    "component",
    [AsukaMAE, AsukaAligner, AsukaDecoder, AsukaVAEEncoder, StrDiffusionUNet, StrDiffusionDiscriminator],
    ids=lambda c: c.__name__,
)
def test_component_arguments_are_documented_in_the_diffusers_format(component):
    check_typed_docs(component.__init__, component.__doc__)
