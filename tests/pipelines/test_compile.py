"""torch.compile of both ASUKA pipelines (`compile_components`): the denoiser's repeated blocks, the MAE, the
aligners and the decoder compile with `fullgraph=True` (dynamo raises on any graph break), two calls at one size
do not recompile (`error_on_recompile`), and the output equals the eager one.

CPU compilation is slow, so the default run keeps one test: the FLUX pipeline through dynamo with the `eager`
backend (graph breaks and recompiles are dynamo's, whatever the backend). `--run-compile` adds the inductor runs
of both pipelines (minutes on CPU) and the size-change test.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image


def inputs(width: int, height: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    mask = box_mask(height, width, rows=(height // 4, height // 2), cols=(width // 3, 2 * width // 3))
    return random_image(height, width), mask


def run(pipe, width: int = 48, height: int = 32) -> np.ndarray:
    image, mask = inputs(width, height)
    generator = torch.Generator().manual_seed(0)
    return pipe(image, mask, num_inference_steps=2, generator=generator, output_type="np", keep_unmasked=False).images


def unique_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compile_and_check(kind: str, backend: str, atol: float) -> None:
    pipe = make_tiny_pipeline(kind, seed=0)
    eager = run(pipe)
    compiled = pipe.compile_components(backend=backend)
    denoiser = getattr(pipe, pipe.backbone_spec.denoiser)
    blocks = [module for module in denoiser.modules() if type(module).__name__ in denoiser._repeated_blocks]
    assert blocks and all(module._compiled_call_impl is not None for module in blocks)
    assert compiled[1:] == [name for name in pipe.compiled_components if getattr(pipe, name) is not None]

    first = run(pipe)  # compiles; fullgraph=True raises on any graph break
    assert unique_graphs() >= len(compiled)
    with torch._dynamo.config.patch(error_on_recompile=True):
        second = run(pipe)  # the same size: no recompilation
    np.testing.assert_allclose(first, eager, atol=atol)
    np.testing.assert_array_equal(second, first)


def test_flux_compiles_fullgraph_without_recompiling():
    compile_and_check("flux", backend="eager", atol=1e-5)


@pytest.mark.compile
@pytest.mark.parametrize("kind", ["flux", "sd"])
def test_inductor_compiled_pipeline_equals_eager(kind):
    compile_and_check(kind, backend="inductor", atol=1e-4)


@pytest.mark.compile
def test_a_new_working_size_recompiles_at_most_once():
    """Size A compiles each graph; size B (both sides changed) recompiles each at most once, as dynamo then marks
    those dimensions dynamic; size C and A again compile nothing."""
    pipe = make_tiny_pipeline("flux", seed=0)
    sizes = [(48, 32), (64, 48), (80, 64)]  # both sides change (dynamo marks the dimensions that changed dynamic)
    eager = {size: run(pipe, *size) for size in sizes}
    pipe.compile_components(backend="eager")
    np.testing.assert_allclose(run(pipe, 48, 32), eager[(48, 32)], atol=1e-5)
    first = unique_graphs()
    np.testing.assert_allclose(run(pipe, 64, 48), eager[(64, 48)], atol=1e-5)
    assert unique_graphs() - first <= first
    with torch._dynamo.config.patch(error_on_recompile=True):
        np.testing.assert_allclose(run(pipe, 80, 64), eager[(80, 64)], atol=1e-5)
        np.testing.assert_allclose(run(pipe, 48, 32), eager[(48, 32)], atol=1e-5)


def test_a_step_cache_needs_a_graph_that_may_break():
    """diffusers' cache hooks break graphs on purpose: fullgraph compilation and a step cache refuse each other
    (nothing is compiled here: compilation is lazy)."""
    pipe = make_tiny_pipeline("flux", seed=0)
    pipe.enable_step_cache(FirstBlockCacheConfig(threshold=0.8))
    with pytest.raises(ValueError, match="fullgraph=False"):
        pipe.compile_components(backend="eager")
    pipe.disable_step_cache()
    pipe.compile_components(backend="eager")
    with pytest.raises(ValueError, match="fullgraph=False"):
        pipe.enable_step_cache(FirstBlockCacheConfig(threshold=0.8))


@pytest.mark.compile
def test_step_cache_on_a_compiled_pipeline():
    """With `fullgraph=False` a step cache runs on the compiled pipeline: its output, no recompilation."""
    pipe = make_tiny_pipeline("flux", seed=0)
    pipe.enable_step_cache(FirstBlockCacheConfig(threshold=0.8))
    eager = run(pipe)
    pipe.compile_components(fullgraph=False, backend="eager")
    np.testing.assert_allclose(run(pipe), eager, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        np.testing.assert_allclose(run(pipe), eager, atol=1e-5)
