"""diffusers' step caches on the ASUKA pipelines, tested as diffusers' cache tester mixins test its own pipelines
(`tests/pipelines/test_pipelines_common.py`: enabled within their tolerance, disabled equal, hooks on the expected
blocks, the hooks' state during and after a call), plus what ASUKA adds: two calls in a row equal two fresh
pipelines, model offloading, the SD UNet's PAB, MagCache's calibration run and the `--cache` specs."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FluxTransformer2DModel, PyramidAttentionBroadcastConfig
from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS, nearest_interp

from asuka.pipelines.step_cache import calibrate_mag_cache, parse_cache_spec
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image


DOUBLE = ["transformer_blocks.0", "transformer_blocks.1"]
SINGLE = ["single_transformer_blocks.0", "single_transformer_blocks.1"]
ATTENTION = [f"{block}.attn" for block in DOUBLE + SINGLE]

# name: (config factory, steps, tolerance of the enabled output, the hooks expected {module name: hook names}),
# with the mixins' settings (thresholds set high for random weights) and tolerances.
CACHES = {
    "first-block": (
        lambda: FirstBlockCacheConfig(threshold=0.8),
        4,
        0.1,
        {DOUBLE[0]: ["fbc_leader_block_hook"], **{name: ["fbc_block_hook"] for name in DOUBLE[1:] + SINGLE}},
    ),
    "taylorseer": (
        lambda: TaylorSeerCacheConfig(
            cache_interval=5,
            disable_cache_before_step=10,
            max_order=1,
            taylor_factors_dtype=torch.bfloat16,
            use_lite_mode=True,
        ),  # fmt: skip
        50,
        0.1,
        {name: ["taylorseer_cache"] for name in DOUBLE + SINGLE + ["proj_out"]},  # lite mode: blocks and output
    ),
    "mag": (
        lambda: MagCacheConfig(
            threshold=0.06, max_skip_steps=3, retention_ratio=0.2, num_inference_steps=50, mag_ratios=FLUX_MAG_RATIOS
        ),  # fmt: skip
        50,
        0.1,
        {
            DOUBLE[0]: ["mag_cache_leader_block_hook"],
            **{name: ["mag_cache_block_hook"] for name in DOUBLE[1:] + SINGLE},
        },
    ),
    "faster": (
        lambda: FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 901),
            unconditional_batch_skip_range=2,
            attention_weight_callback=lambda _: 0.5,
            is_guidance_distilled=True,
        ),  # fmt: skip
        4,
        0.1,
        {"": ["faster_cache_denoiser"], **{name: ["faster_cache_block"] for name in ATTENTION}},
    ),
    "pab": (
        lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(100, 800),
            spatial_attention_block_identifiers=["transformer_blocks"],
        ),  # fmt: skip
        4,
        0.2,
        {name: ["pyramid_attention_broadcast"] for name in ATTENTION},
    ),
}


def make_image() -> PIL.Image.Image:
    return random_image(32, 48)


def make_mask() -> PIL.Image.Image:
    return box_mask(32, 48, rows=(8, 20), cols=(16, 32))


def flux_pipe():
    """The tiny AsukaFluxPipeline with two double and two single blocks (the mixins' `num_layers=2`)."""
    pipe = make_tiny_pipeline(kind="flux", seed=0)
    torch.manual_seed(0)
    config = {**pipe.transformer.config, "num_layers": 2, "num_single_layers": 2}
    pipe.transformer = FluxTransformer2DModel.from_config(config).eval()
    return pipe


def run(pipe, steps: int, **kwargs) -> np.ndarray:
    return pipe(
        make_image(),
        make_mask(),
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        keep_unmasked=False,
        **kwargs,
    ).images


def hooks(model: torch.nn.Module) -> dict[str, list[str]]:
    return {
        name: list(module._diffusers_hook.hooks)
        for name, module in model.named_modules()
        if getattr(module, "_diffusers_hook", None) is not None and module._diffusers_hook.hooks
    }


@pytest.mark.parametrize("name", list(CACHES))
def test_flux_cache_enabled_close_disabled_equal_and_reset_per_call(name):
    make_config, steps, atol, expected_hooks = CACHES[name]
    plain = run(flux_pipe(), steps)

    pipe = flux_pipe()
    pipe.enable_step_cache(make_config())
    assert hooks(pipe.transformer) == expected_hooks
    first, second = run(pipe, steps), run(pipe, steps)
    fresh = flux_pipe()
    fresh.enable_step_cache(make_config())
    assert np.abs(first - plain).max() <= atol  # the mixins' tolerance
    assert not np.array_equal(first, plain)  # the cache did skip or approximate something
    np.testing.assert_array_equal(second, first)  # the state of the first call was reset
    np.testing.assert_array_equal(run(fresh, steps), first)
    assert pipe.current_timestep is None

    pipe.disable_step_cache()
    assert hooks(pipe.transformer) == {}
    np.testing.assert_allclose(run(pipe, steps), plain, atol=1e-4)


def test_callback_reads_current_timestep_and_pab_state_during_the_loop():
    pipe = flux_pipe()
    pipe.enable_step_cache(CACHES["pab"][0]())  # its `current_timestep_callback` is set to read the pipeline's
    attention = [pipe.transformer.get_submodule(name) for name in ATTENTION]
    seen = []

    def callback(pipeline, step, timestep, callback_kwargs):
        seen.append((pipeline.current_timestep, timestep))
        for module in attention:
            state = module._diffusers_hook.get_hook("pyramid_attention_broadcast").state
            assert state.cache is not None and state.iteration == step + 1
        return {}

    run(pipe, 3, callback_on_step_end=callback)
    assert len(seen) == 3 and all(current is timestep for current, timestep in seen)
    assert pipe.current_timestep is None
    for module in attention:
        state = module._diffusers_hook.get_hook("pyramid_attention_broadcast").state
        assert state.cache is None and state.iteration == 0


@pytest.mark.parametrize("name", list(CACHES))
def test_flux_cache_with_model_offloading(name):
    """diffusers' hooks sit under accelerate's offloading hooks: the same output as without offloading."""
    make_config, steps, _, _ = CACHES[name]
    pipe = flux_pipe()
    pipe.enable_step_cache(make_config())
    expected = run(pipe, steps)
    offloaded = flux_pipe()
    offloaded.enable_model_cpu_offload(device="cpu")
    offloaded.enable_step_cache(make_config())
    np.testing.assert_allclose(run(offloaded, steps), expected, atol=1e-6)
    np.testing.assert_allclose(run(offloaded, steps), expected, atol=1e-6)


def test_sd_pipeline_takes_pab_on_its_unet_attention():
    pipe = make_tiny_pipeline(kind="sd", seed=0)
    plain = run(pipe, 4)
    pipe.enable_step_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2))
    self_attention = sorted(
        name for name, _ in pipe.unet.named_modules() if ".transformer_blocks." in name and name.endswith(".attn1")
    )
    assert sorted(hooks(pipe.unet)) == self_attention and self_attention
    with pytest.raises(ValueError, match="already enabled"):
        pipe.enable_step_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2))
    first, second = run(pipe, 4), run(pipe, 4)
    assert 0 < np.abs(first - plain).max() <= 0.2
    np.testing.assert_array_equal(second, first)
    pipe.disable_step_cache()
    assert hooks(pipe.unet) == {} and not pipe.step_cache_enabled
    np.testing.assert_allclose(run(pipe, 4), plain, atol=1e-4)
    with pytest.raises(ValueError, match="accepted: PyramidAttentionBroadcastConfig"):
        pipe.enable_step_cache(FirstBlockCacheConfig(threshold=0.1))


def test_mag_cache_calibration_measures_the_residual_ratios():
    """The calibration run's ratios equal mean(|r_i| / |r_i-1|) over the image tokens, with r_i the last block's
    output minus the first block's input at step i, measured here with plain torch hooks."""
    pipe = flux_pipe()
    ratios = calibrate_mag_cache(
        pipe, make_image(), make_mask(), num_inference_steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert not pipe.step_cache_enabled

    inputs, outputs = [], []
    first, last = pipe.transformer.transformer_blocks[0], pipe.transformer.single_transformer_blocks[-1]
    first.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw["hidden_states"]), with_kwargs=True)
    last.register_forward_hook(lambda m, a, kw, out: outputs.append(out[1]), with_kwargs=True)
    run(pipe, 5)
    residuals = [out - inp for inp, out in zip(inputs, outputs)]
    expected = [1.0] + [
        (residuals[i].norm(dim=-1) / (residuals[i - 1].norm(dim=-1) + 1e-8)).mean().item() for i in range(1, 5)
    ]
    np.testing.assert_allclose(ratios, expected, rtol=1e-5)

    config = parse_cache_spec("mag:0.06", 5, mag_ratios=torch.tensor(ratios))
    torch.testing.assert_close(config.mag_ratios, torch.tensor(ratios))


def test_cache_specs():
    assert parse_cache_spec("first-block:0.12", 8).threshold == 0.12
    assert parse_cache_spec("first-block", 8).threshold == 0.12
    assert parse_cache_spec("taylorseer:4", 8).cache_interval == 4
    torch.testing.assert_close(parse_cache_spec("mag", 8).mag_ratios, nearest_interp(FLUX_MAG_RATIOS, 8))
    assert parse_cache_spec("faster:3", 8).is_guidance_distilled
    assert parse_cache_spec("pab:3", 8).spatial_attention_block_skip_range == 3
    with pytest.raises(ValueError, match="accepted: first-block, taylorseer, mag, faster, pab"):
        parse_cache_spec("deep:2", 8)
    with pytest.raises(ValueError, match="must be an integer"):
        parse_cache_spec("taylorseer:x", 8)
    with pytest.raises(ValueError, match="must be positive"):
        parse_cache_spec("first-block:-1", 8)
