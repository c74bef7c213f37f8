"""The constant-conditioning cache (asuka/pipelines/cached_attention.py): same output as without it, projections
computed once per call, fresh ones when the conditioning changes, and nothing left behind in the user's model."""

import numpy as np
import pytest
import torch

from asuka.pipelines.cached_attention import ConstantInputCache, constant_condition_modules, is_compiled
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask_array, random_array


STEPS = 3


def _inputs(size: int = 32):
    hole = (size // 4, 3 * size // 4)
    return random_array(size, size), box_mask_array(size, size, rows=hole, cols=hole)


def _run(pipe, cached: bool, **kwargs):
    pipe.cache_conditioning = cached
    image, mask = _inputs()
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(image, mask, generator=torch.Generator().manual_seed(0), **kwargs).images


def _count_projections(pipe, denoiser: str) -> list[int]:
    """Wrap the original forwards (class level, under the cache's instance-level wrapper) to count real calls."""
    calls = []
    for module in constant_condition_modules(getattr(pipe, denoiser)):
        original = type(module).forward

        def counted(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        module.forward = counted.__get__(module)
    return calls


@pytest.fixture(scope="module")
def sd_pipe():
    return make_tiny_pipeline("sd")


def test_unet_cross_attention_projections_are_found(sd_pipe):
    modules = constant_condition_modules(sd_pipe.unet)
    attn2 = [m for m in sd_pipe.unet.modules() if getattr(m, "is_cross_attention", False)]
    assert len(attn2) > 0 and len(modules) == 2 * len(attn2)
    assert {id(m) for m in modules} == {id(a.to_k) for a in attn2} | {id(a.to_v) for a in attn2}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_images_per_prompt": 2},
        {"guidance_scale": 3.0, "negative_prompt_embeds": "random", "num_images_per_prompt": 2},
    ],
    ids=["plain", "images_per_prompt", "cfg"],
)
def test_sd_cached_output_equals_uncached_and_projects_once(sd_pipe, kwargs):
    kwargs = {**kwargs}
    if "negative_prompt_embeds" in kwargs:
        kwargs["negative_prompt_embeds"] = torch.randn(
            1, sd_pipe.aligner.config.num_tokens, sd_pipe.unet.config.cross_attention_dim
        )
    reference = _run(sd_pipe, cached=False, **kwargs)
    pipe = make_tiny_pipeline("sd")
    calls = _count_projections(pipe, "unet")
    out = _run(pipe, cached=True, **kwargs)
    assert np.abs(out - reference).max() <= 1e-5
    n_modules = len(constant_condition_modules(pipe.unet))
    assert len(calls) == n_modules  # once per call, not once per step (STEPS + 1 UNet calls with PNDM)
    calls.clear()
    _run(pipe, cached=False, **kwargs)
    assert len(calls) > n_modules  # and every step without the cache


@pytest.mark.parametrize("kind", ["sd", "flux"])
@pytest.mark.parametrize("edit", ["replace", "in_place"])
def test_cache_follows_a_callback_that_changes_the_conditioning(sd_pipe, kind, edit):
    def callback(pipe, step, timestep, tensors):
        if step == 1:
            if edit == "replace":
                return {"prompt_embeds": tensors["prompt_embeds"] * 0.3}
            tensors["prompt_embeds"].mul_(0.3)
        return {}

    pipe = sd_pipe if kind == "sd" else make_tiny_pipeline("flux")
    kwargs = {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["prompt_embeds"]}
    reference = _run(pipe, cached=False, **kwargs)
    unchanged = _run(pipe, cached=False)
    out = _run(pipe, cached=True, **kwargs)
    assert np.abs(reference - unchanged).max() > 1e-3  # the edit matters
    assert np.abs(out - reference).max() <= 1e-5


def test_sd_cache_under_inference_mode_compares_the_input(sd_pipe):
    def callback(pipe, step, timestep, tensors):
        if step == 1:
            tensors["prompt_embeds"].mul_(0.3)  # inference tensors have no version counter
        return {}

    kwargs = {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["prompt_embeds"]}
    with torch.inference_mode():
        reference = _run(sd_pipe, cached=False, **kwargs)
        out = _run(sd_pipe, cached=True, **kwargs)
    assert np.abs(out - reference).max() <= 1e-5


def test_cache_is_installed_only_during_the_call_and_leaves_processors_alone():
    pipe = make_tiny_pipeline("sd")
    pipe.cache_conditioning = True
    processors = pipe.unet.attn_processors
    modules = constant_condition_modules(pipe.unet)
    seen = []

    def callback(pipe_, step, timestep, tensors):
        seen.append(all("forward" in m.__dict__ for m in modules))
        if step == 1:
            raise RuntimeError("stop")
        return {}

    image, mask = _inputs()
    with pytest.raises(RuntimeError, match="stop"):
        pipe(image, mask, num_inference_steps=STEPS, callback_on_step_end=callback)
    assert seen == [True, True]
    assert not any("forward" in m.__dict__ for m in modules)  # removed although the call raised
    assert pipe.unet.attn_processors == processors


def test_cache_restores_an_instance_forward_that_was_there_before():
    linear = torch.nn.Linear(4, 4)
    marker = linear.forward
    linear.forward = marker
    x = torch.randn(2, 4)
    with torch.no_grad(), ConstantInputCache([linear]) as cache:
        first, second = linear(x), linear(x)
        linear(x.clone())
    assert first is second and (cache.hits, cache.misses) == (1, 2)
    assert linear.__dict__["forward"] is marker


def test_cache_is_bypassed_with_autograd_on():
    linear = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with ConstantInputCache([linear]) as cache:
        linear(x).sum().backward()
        linear(x).sum().backward()
    assert (cache.hits, cache.misses) == (0, 0)


def test_flux_caches_only_the_context_and_pooled_projections_and_matches_uncached():
    pipe = make_tiny_pipeline("flux")
    transformer = pipe.transformer
    assert constant_condition_modules(transformer) == [
        transformer.context_embedder,
        transformer.time_text_embed.text_embedder,
    ]
    reference = _run(pipe, cached=False, num_images_per_prompt=2)
    calls = _count_projections(pipe, "transformer")
    out = _run(pipe, cached=True, num_images_per_prompt=2)
    assert np.abs(out - reference).max() <= 1e-5
    assert len(calls) == 2
    assert all(m.__dict__["forward"].__func__.__name__ == "counted" for m in constant_condition_modules(transformer))


def test_a_compiled_unet_is_left_alone():
    pipe = make_tiny_pipeline("sd")
    reference = _run(pipe, cached=False)
    modules = constant_condition_modules(pipe.unet)
    assert not is_compiled(pipe.unet)
    pipe.unet.compile(backend="eager")
    assert is_compiled(pipe.unet)
    regional = make_tiny_pipeline("sd").unet
    regional.compile_repeated_blocks(backend="eager")  # diffusers' regional compilation: the transformer blocks
    assert is_compiled(regional)
    seen = []

    def callback(pipe_, step, timestep, tensors):
        seen.append(any("forward" in m.__dict__ for m in modules))
        return {}

    out = _run(pipe, cached=True, callback_on_step_end=callback)
    assert seen and not any(seen)  # not wrapped: dynamo would recompile at every call
    assert np.abs(out - reference).max() <= 1e-5
