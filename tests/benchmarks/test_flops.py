"""benchmarks/flops.py: the counter against hand counts, and the per-component call plans against FlopCounterMode
over the real pipeline calls (tiny components), on CPU and on the meta device the full-size counts use."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig
from diffusers.models.attention_processor import Attention

from asuka.pipelines.cached_attention import ConstantInputCache, constant_condition_modules
from asuka.testing import make_tiny_pipeline
from asuka.testing.flux import make_tiny_flux_components
from asuka.testing.sd import make_tiny_sd_components
from benchmarks import flops
from tests.support.inputs import box_mask_array, random_array


SIZE, STEPS = 32, 3


def _inputs():
    return random_array(SIZE, SIZE), box_mask_array(SIZE, SIZE, rows=(8, 24), cols=(8, 24))


def test_linear_and_attention_blocks_match_a_hand_count():
    linear = torch.nn.Linear(64, 32)
    assert flops.count_flops(lambda: linear(torch.zeros(2, 10, 64))) == 2 * (2 * 10) * 64 * 32

    # cross-attention: 16 queries of width 32, 5 keys of width 48, 2 heads of 8 (inner 16)
    attn = Attention(query_dim=32, cross_attention_dim=48, heads=2, dim_head=8)
    x, context = torch.zeros(1, 16, 32), torch.zeros(1, 5, 48)
    q, k, v, out = 2 * 16 * 32 * 16, 2 * 5 * 48 * 16, 2 * 5 * 48 * 16, 2 * 16 * 16 * 32
    scores, weighted = 2 * 2 * 16 * 5 * 8, 2 * 2 * 16 * 5 * 8  # QK^T and AV over 2 heads
    for device in ("cpu", "meta"):
        attn.to(device)
        x, context = x.to(device), context.to(device)
        assert flops.count_flops(lambda: attn(x, context)) == q + k + v + scores + weighted + out, device
        with ConstantInputCache(constant_condition_modules(attn)):
            first = flops.count_flops(lambda: attn(x, context))
            again = flops.count_flops(lambda: attn(x, context))
        assert first == q + k + v + scores + weighted + out and again == first - k - v, device


def _sd_components(pipe) -> dict:
    names = ("unet", "vae", "scheduler", "mae", "aligner", "decoder")
    return {k: getattr(pipe, k) for k in names if getattr(pipe, k, None) is not None}


@pytest.mark.parametrize("cached", [False, True])
def test_sd_plan_equals_the_whole_asuka_call(cached):
    pipe = make_tiny_pipeline("sd")
    pipe.cache_conditioning = cached
    image, mask = _inputs()
    with flops.flop_counter_mode() as counter:
        pipe(image, mask, num_inference_steps=STEPS, working_resolution=SIZE, output_type="np")
    plan = flops.count_plan(flops.sd_call_plan(_sd_components(pipe), SIZE, STEPS, asuka=True, cached=cached))
    assert set(plan) == {"mae", "aligner", "vae_encode", "denoise", "decode"}
    assert sum(plan.values()) == counter.get_total_flops() > 0


def test_sd_plan_equals_the_whole_stable_diffusion_inpaint_call():
    pipe = make_tiny_pipeline("sd-backbone")
    image, mask = _inputs()
    embeds = torch.randn(1, flops.SD_TEXT_TOKENS, pipe.unet.config.cross_attention_dim)
    with flops.flop_counter_mode() as counter:
        pipe(
            prompt_embeds=embeds,
            image=torch.from_numpy(image).permute(2, 0, 1)[None],
            mask_image=torch.from_numpy(mask)[None, None],
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            output_type="np",
        )
    plan = flops.count_plan(flops.sd_call_plan(_sd_components(pipe), SIZE, STEPS, asuka=False))
    assert sum(plan.values()) == counter.get_total_flops() > 0


@pytest.mark.parametrize("cached", [False, True])
def test_flux_plans_equal_the_whole_calls(cached):
    names = ("transformer", "vae", "scheduler", "mae", "token_aligner", "pooled_aligner", "decoder")
    image, mask = _inputs()
    pipe = make_tiny_pipeline("flux")
    pipe.cache_conditioning = cached
    with flops.flop_counter_mode() as counter:
        pipe(image, mask, num_inference_steps=STEPS, working_resolution=SIZE, output_type="np")
    plan = flops.count_plan(
        flops.flux_call_plan({k: getattr(pipe, k) for k in names}, SIZE, STEPS, asuka=True, cached=cached)
    )
    assert sum(plan.values()) == counter.get_total_flops() > 0

    base = make_tiny_pipeline("flux-backbone")
    config = base.transformer.config
    with flops.flop_counter_mode() as counter:
        base(
            image=PIL.Image.fromarray((image * 255).astype(np.uint8)),
            mask_image=PIL.Image.fromarray((mask * 255).astype(np.uint8)),
            prompt_embeds=torch.randn(1, 7, config.joint_attention_dim),
            pooled_prompt_embeds=torch.randn(1, config.pooled_projection_dim),
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            output_type="np",
        )
    plan = flops.count_plan(
        flops.flux_call_plan({k: getattr(base, k) for k in names[:3]}, SIZE, STEPS, asuka=False, t5_tokens=7)
    )
    assert sum(plan.values()) == counter.get_total_flops() > 0


def test_meta_device_counts_what_cpu_counts():
    """The full-size figures are counted on meta tensors: on tiny components both devices give the same plan."""
    cpu = make_tiny_sd_components(0)
    with torch.device("meta"):
        meta = make_tiny_sd_components(0)
    for cached in (False, True):
        on_cpu = flops.count_plan(flops.sd_call_plan(cpu, SIZE, STEPS, asuka=True, cached=cached))
        on_meta = flops.count_plan(flops.sd_call_plan(meta, SIZE, STEPS, asuka=True, cached=cached))
        assert on_meta == on_cpu
    assert next(meta["unet"].parameters()).device.type == "meta"

    cpu = make_tiny_flux_components(0)
    with torch.device("meta"):
        meta = make_tiny_flux_components(0)
    assert flops.count_plan(flops.flux_call_plan(meta, SIZE, STEPS, asuka=True)) == flops.count_plan(
        flops.flux_call_plan(cpu, SIZE, STEPS, asuka=True)
    )


def test_ratio_rows_report_the_cache_saving():
    components = make_tiny_sd_components(0)
    [row] = flops.ratio_rows("sd", components, [SIZE], [STEPS])
    assert row["asuka_cached_gflop"] < row["asuka_gflop"]
    assert row["ratio"] == pytest.approx(row["asuka_gflop"] / row["baseline_gflop"])
    assert row["baseline_gflop"] == pytest.approx(sum(row["stages_gflop"]["sd"].values()))
    assert "| ASUKA-SD / SD-inpaint + CLIP | 32 | 3 |" in flops.format_rows([row])


def test_a_smaller_hole_only_makes_asukas_decode_cheaper():
    components = make_tiny_sd_components(0)
    half, whole = flops.ratio_rows("sd", components, [SIZE], [STEPS], hole_sides=(0.5, 1.0))
    for name, stages in half["stages_gflop"].items():
        for stage, gflop in stages.items():
            if (name, stage) in (("asuka", "decode"), ("asuka_cached", "decode")):
                assert gflop < whole["stages_gflop"][name][stage]
            else:
                assert gflop == whole["stages_gflop"][name][stage], (name, stage)
    assert half["ratio_cached"] < whole["ratio_cached"]
    assert "| ASUKA-SD / SD-inpaint + CLIP | 32 | 3 | 0.5 |" in flops.format_rows([half])
    with pytest.raises(ValueError, match="hole_side"):
        flops.ratio_rows("sd", components, [SIZE], [STEPS], hole_sides=(0.0,))


@pytest.mark.parametrize(
    "cache, config",
    [
        ("first-block", FirstBlockCacheConfig(threshold=1e9)),  # every step after the first is skipped
        (
            "mag",
            MagCacheConfig(
                threshold=1e9, max_skip_steps=10, retention_ratio=0.0, num_inference_steps=4, mag_ratios=torch.ones(4)
            ),
        ),  # fmt: skip
    ],
)
def test_a_skipped_step_costs_what_the_cache_really_runs(cache, config):
    """The counted cost of a skipped step equals FlopCounterMode over a transformer call that the cache skips,
    on a transformer of two double and two single blocks with the cache's hooks."""
    components = make_tiny_flux_components(0)
    transformer = FluxTransformer2DModel.from_config(
        {**components["transformer"].config, "num_layers": 2, "num_single_layers": 2}
    ).eval()
    components["transformer"] = transformer
    (denoise,) = (call for call in flops.flux_call_plan(components, SIZE, 2, asuka=True) if call.stage == "denoise")
    counted = flops.step_cache_flops(transformer, denoise.fn)
    assert counted["mag"] < counted["first-block"] < counted["full"]

    transformer.enable_cache(config)
    measured = []
    for step in range(3):
        with transformer.cache_context("cond"):
            measured.append(flops.count_flops(denoise.fn))
    assert measured[0] == counted["full"]  # the first step is always computed
    assert measured[1] == measured[2] == counted[cache]


def test_step_cache_rows_follow_the_share_of_skipped_steps():
    components = make_tiny_flux_components(0)
    rows = flops.step_cache_rows(components, [SIZE], [8], [0.0, 0.5])
    assert [(r["cache"], r["skipped_steps"]) for r in rows] == [("first-block", 0), ("first-block", 4), ("mag", 0),
                                                               ("mag", 4)]  # fmt: skip
    [plain] = flops.ratio_rows("flux", components, [SIZE], [8])
    assert rows[0]["ratio"] == 1 and rows[0]["call_gflop"] == pytest.approx(plain["asuka_gflop"])
    half = rows[1]
    assert half["denoise_gflop"] == pytest.approx(4 * half["full_step_gflop"] + 4 * half["skipped_step_gflop"])
    assert half["call_gflop"] - half["denoise_gflop"] == pytest.approx(
        plain["asuka_gflop"] - 8 * half["full_step_gflop"]
    )
    assert rows[3]["ratio"] < rows[1]["ratio"] < 1
    assert "| first-block | 32 | 8 | 4 |" in flops.format_cache_rows(rows)
