"""Exact FLOP counts of whole pipeline calls, ASUKA vs the diffusers backbone pipelines, in seconds.

A pipeline call is a fixed sequence of network calls (prior, aligner, VAE encode, one denoiser call per step,
decode; the baselines' text encoders instead of the prior and aligner). `call_plan` lists that sequence with the
inputs' shapes, and `count_plan` counts each distinct call once with `torch.utils.flop_counter.FlopCounterMode`
and multiplies by how often it runs. Everything else a pipeline does (scheduler updates, resizing, packing) is
element-wise, which the counter does not count. So the full-size architectures can be built on the `meta` device
(no memory, no weights, no download) and counted in seconds; tests/benchmarks/test_flops.py checks on tiny
components that the plan's total equals `FlopCounterMode` over the real pipeline call, and the counter against a
hand count of a Linear layer and an attention block.

    python -m benchmarks.flops            # ASUKA-SD vs SD (256, 512; 50 steps) and ASUKA-FLUX vs FluxFill
                                          # (full depth; 512, 1024; 8 (a turbo LoRA, fused), 28, 50 steps), with
                                          # and without the cache; and ASUKA-FLUX with a step cache as a function
                                          # of the share of steps it skips

A step cache's saving depends on how many steps it skips, which random weights cannot tell (the hit rate of real
images is a measurement for the GPU suite). What a count can tell is the cost of a skipped step against a full one:
`step_cache_flops` splits one transformer call by module (`FlopCounterMode`'s per-module totals) into its blocks and
the rest; a step that FirstBlockCache skips still runs the embedders, the first double block and the output layers,
one that MagCache skips runs no block at all. `step_cache_rows` then gives the denoising and whole-call FLOPs for a
share of skipped steps.
"""

import argparse
import functools
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING
from asuka.pipelines.cached_attention import ConstantInputCache, constant_condition_modules

from .architectures import build_flux_components, build_sd_components, clip_text_encoder, flux_text_encoders


SD_TEXT_TOKENS = SD15_INPAINTING.text_tokens  # CLIP's sequence length
FLUX_T5_TOKENS = FLUX_FILL.text_tokens  # FluxFillPipeline's default max_sequence_length
FLUX_CLIP_TOKENS = FLUX_FILL.pooled_text_tokens  # CLIP's sequence length
# The timed benchmarks' hole (bench_pipelines.benchmark_inputs and training_batch draw it with `centred_hole_box`
# too): a centred square of half the side, a quarter of the area.
# ASUKA's decoder computes each up level's last convolution over the hole's bounding box only, so its FLOPs depend
# on the box; a side of 1.0 (a box spanning the image) is the worst case.
HOLE_SIDE = 0.5


# FlopCounterMode has formulas for the CUDA attention kernels and counts meta tensors' SDPA through its math
# decomposition, but on CPU SDPA runs one fused op it has no formula for (it would count 0): give it theirs.
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def flop_counter_mode() -> FlopCounterMode:
    """A FlopCounterMode that also counts SDPA on CPU."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def count_flops(fn: Callable[[], object], grad: bool = False) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention; a multiply-add counts as 2); `grad=True` for a
    training step (autograd on, so its backward is counted too)."""
    with torch.set_grad_enabled(grad), flop_counter_mode() as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Call:
    """One network call of a pipeline, `times` times per pipeline call.

    `cache_model` marks a denoiser call whose constant-conditioning projections the cache computes only on the
    first of the `times` calls (counted as one first call plus `times - 1` calls with the projections reused).
    """

    stage: str
    fn: Callable[[], object]
    times: int = 1
    cache_model: torch.nn.Module | None = None


def count_plan(plan: list[Call]) -> dict[str, int]:
    """{stage: FLOPs of the whole pipeline call spent in it}, each distinct call counted once."""
    totals: dict[str, int] = {}
    for call in plan:
        if call.cache_model is None:
            flops = count_flops(call.fn) * call.times
        else:
            with ConstantInputCache(constant_condition_modules(call.cache_model)):
                flops = count_flops(call.fn) + count_flops(call.fn) * (call.times - 1)
        totals[call.stage] = totals.get(call.stage, 0) + flops
    return totals


def _vae_factor(vae: torch.nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def centred_hole_box(size: int, hole_side: float = HOLE_SIDE) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive, of a centred square hole of `hole_side` x `size` in a
    `size`x`size` image."""
    if not 0 < hole_side <= 1:
        raise ValueError(f"`hole_side` must lie in (0, 1] (a fraction of the image side), got {hole_side}.")
    margin = round(size * (1 - hole_side) / 2)
    return (margin, margin, size - margin, size - margin)


def _pixel_inputs(vae: torch.nn.Module, size: int, batch: int, device, dtype, hole_side: float) -> tuple:
    """Zero image (B, 3, size, size), hole (B, 1, size, size: a centred square of `hole_side` x `size`), its box
    (top, left, bottom, right) and the VAE latents of a `size`x`size` call."""
    latent = size // _vae_factor(vae)
    image = torch.zeros(batch, 3, size, size, device=device, dtype=dtype)
    box = top, left, bottom, right = centred_hole_box(size, hole_side)
    hole = torch.zeros(batch, 1, size, size, device=device, dtype=dtype)
    hole[..., top:bottom, left:right] = 1
    latents = torch.zeros(batch, vae.config.latent_channels, latent, latent, device=device, dtype=dtype)
    return image, hole, box, latents


def _decode_call(components: dict, asuka: bool, latents: torch.Tensor, image: torch.Tensor, hole: torch.Tensor, box):
    """ASUKA's mask-conditioned decoder when it has one (given the hole's box, which meta tensors cannot yield),
    else the VAE decoder."""
    if asuka and components.get("decoder") is not None:
        decoder = components["decoder"]
        return Call("decode", lambda: decoder(latents, image, hole, hole_box=box, return_dict=False))
    vae = components["vae"]
    return Call("decode", lambda: vae.decode(latents, return_dict=False))


def sd_call_plan(
    components: dict,
    size: int,
    steps: int,
    asuka: bool,
    cached: bool = False,
    text_encoder: torch.nn.Module | None = None,
    batch: int = 1,
    hole_side: float = HOLE_SIDE,
) -> list[Call]:
    """The network calls of `AsukaPipeline` (`asuka=True`) or `StableDiffusionInpaintPipeline` given
    `prompt_embeds` (plus one `text_encoder` pass when given), no classifier-free guidance, `size`x`size`, a
    centred square hole of `hole_side` x `size`."""
    unet, vae, scheduler = components[SD15_INPAINTING.denoiser], components["vae"], components["scheduler"]
    device, dtype = unet.device, unet.dtype
    scheduler = scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    unet_calls = len(scheduler.timesteps)
    image, hole, box, latents = _pixel_inputs(vae, size, batch, device, dtype, hole_side)
    x = torch.zeros(batch, unet.config.in_channels, *latents.shape[-2:], device=device, dtype=dtype)
    t = torch.tensor(999, device=device)
    plan = []
    if asuka:
        mae, aligner = components["mae"], components["aligner"]
        prior = mae.prior(image, hole)
        embeds = aligner(prior).tokens
        plan += [Call("mae", lambda: mae.prior(image, hole)), Call("aligner", lambda: aligner(prior))]
    else:
        embeds = SD15_INPAINTING.zero_conditioning(unet.config, SD_TEXT_TOKENS, batch, device, dtype)["prompt_embeds"]
        if text_encoder is not None:
            ids = torch.zeros(batch, SD_TEXT_TOKENS, dtype=torch.long, device=device)
            plan.append(Call("text_encoder", lambda: text_encoder(ids)))
    plan.append(Call("vae_encode", lambda: vae.encode(image)))
    plan.append(
        Call(
            "denoise",
            lambda: unet(x, t, encoder_hidden_states=embeds, return_dict=False),
            unet_calls,
            unet if cached else None,
        )
    )
    plan.append(_decode_call(components, asuka, latents, image, hole, box))
    return plan


def flux_call_plan(
    components: dict,
    size: int,
    steps: int,
    asuka: bool,
    cached: bool = False,
    text_encoders: tuple[torch.nn.Module, torch.nn.Module] | None = None,
    t5_tokens: int = FLUX_T5_TOKENS,
    batch: int = 1,
    hole_side: float = HOLE_SIDE,
) -> list[Call]:
    """The network calls of `AsukaFluxPipeline` (`asuka=True`) or `FluxFillPipeline` given embeddings (plus one
    T5 and one CLIP pass when `text_encoders=(t5, clip)` is given), `size`x`size`, one transformer call per step,
    a centred square hole of `hole_side` x `size`."""
    transformer, vae = components[FLUX_FILL.denoiser], components["vae"]
    device, dtype = transformer.device, transformer.dtype
    image, hole, box, latents = _pixel_inputs(vae, size, batch, device, dtype, hole_side)
    tokens = (latents.shape[-1] // FLUX_FILL.latent_packing) ** 2
    hidden = torch.zeros(batch, tokens, transformer.config.in_channels, device=device, dtype=dtype)
    img_ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
    timestep = torch.ones(batch, device=device, dtype=dtype)
    guidance = torch.ones(batch, device=device) if transformer.config.guidance_embeds else None
    zeros = FLUX_FILL.zero_conditioning(transformer.config, t5_tokens, batch, device, dtype)
    pooled = zeros["pooled_prompt_embeds"]
    plan = []
    if asuka:
        mae, token_aligner, pooled_aligner = (components[k] for k in ("mae", "token_aligner", "pooled_aligner"))
        prior = mae.prior(image, hole)
        embeds = token_aligner(prior).tokens
        plan += [
            Call("mae", lambda: mae.prior(image, hole)),
            Call("aligner", lambda: token_aligner(prior)),
            Call("pooled_aligner", lambda: pooled_aligner(prior)),
        ]
    else:
        embeds = zeros["prompt_embeds"]
        if text_encoders is not None:
            t5, clip = text_encoders
            t5_ids = torch.zeros(batch, t5_tokens, dtype=torch.long, device=device)
            clip_ids = torch.zeros(batch, FLUX_CLIP_TOKENS, dtype=torch.long, device=device)
            plan += [Call("t5", lambda: t5(t5_ids)), Call("clip", lambda: clip(clip_ids))]
    txt_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)
    # prepare_latents encodes the image, prepare_mask_latents the masked image
    plan.append(Call("vae_encode", lambda: vae.encode(image), 2))
    plan.append(
        Call(
            "denoise",
            lambda: transformer(
                hidden_states=hidden,
                timestep=timestep,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            ),
            steps,
            transformer if cached else None,
        )
    )
    plan.append(_decode_call(components, asuka, latents, image, hole, box))
    return plan


# ---------------------------------------------------------------------------------------------
# Step caches: a skipped step against a full one
# ---------------------------------------------------------------------------------------------

# The step caches whose skipped steps are counted: what still runs in a skipped step.
SKIPPING_CACHES = {
    "first-block": "the embedders, the first double block and the output layers (FirstBlockCache)",
    "mag": "the embedders and the output layers (MagCache: every block skipped)",
}


def step_cache_flops(transformer: torch.nn.Module, step: Callable[[], object]) -> dict[str, int]:
    """FLOPs of one full transformer call `step` and of one that each cache of `SKIPPING_CACHES` skips, from the
    per-module totals of one counted call: a skipped step is the full one less the blocks it does not run."""
    with torch.no_grad(), flop_counter_mode() as counter:
        step()
    root = type(transformer).__name__
    block = re.compile(rf"{root}\.(single_)?transformer_blocks\.\d+")
    blocks = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if block.fullmatch(name)}
    full, every_block = counter.get_total_flops(), sum(blocks.values())
    return {
        "full": full,
        "first-block": full - every_block + blocks[f"{root}.transformer_blocks.0"],
        "mag": full - every_block,
    }


def step_cache_rows(
    components: dict, sizes: list[int], steps: list[int], skip_shares: list[float], hole_side: float = HOLE_SIDE
) -> list[dict]:
    """One row per (size, steps, cache, share of skipped steps): ASUKA-FLUX's denoising and whole-call GFLOPs and
    their ratio to the call without a step cache (both with the conditioning cache off)."""
    rows = []
    for size, n in itertools.product(sizes, steps):
        plan = flux_call_plan(components, size, n, asuka=True, hole_side=hole_side)
        totals = count_plan(plan)
        (denoise,) = (call for call in plan if call.stage == "denoise")
        per_step = step_cache_flops(components[FLUX_FILL.denoiser], denoise.fn)
        others = sum(totals.values()) - totals["denoise"]
        for cache, share in itertools.product(SKIPPING_CACHES, skip_shares):
            skipped = round(share * n)
            denoise_flops = (n - skipped) * per_step["full"] + skipped * per_step[cache]
            rows.append(
                {
                    "pipeline": "flux",
                    "size": size,
                    "steps": n,
                    "cache": cache,
                    "skipped_steps": skipped,
                    "full_step_gflop": per_step["full"] / 1e9,
                    "skipped_step_gflop": per_step[cache] / 1e9,
                    "denoise_gflop": denoise_flops / 1e9,
                    "call_gflop": (others + denoise_flops) / 1e9,
                    "ratio": (others + denoise_flops) / sum(totals.values()),
                }
            )
    return rows


def format_cache_rows(rows: list[dict]) -> str:
    lines = [
        "| ASUKA-FLUX | size | steps | skipped steps | full step (GFLOP) | skipped step (GFLOP) | call (TFLOP) |"
        " ratio to no step cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cache']} | {r['size']} | {r['steps']} | {r['skipped_steps']} | {r['full_step_gflop']:.1f} | "
            f"{r['skipped_step_gflop']:.1f} | {r['call_gflop'] / 1e3:.2f} | {r['ratio']:.4f} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Full-size architectures on the meta device
# ---------------------------------------------------------------------------------------------


def meta_sd_components(tiny: bool = False) -> dict:
    """Full-size SD-1.5-inpainting UNet and VAE, ASUKA's MAE/aligner/decoder, CLIP ViT-L text encoder; on meta.
    (`tiny`: the tiny test components, without a text encoder.)"""
    with torch.device("meta"):
        components = build_sd_components(tiny)
        if not tiny:
            components["text_encoder"] = clip_text_encoder()
    return components


def meta_flux_components(tiny: bool = False, num_layers: int = 19, num_single_layers: int = 38) -> dict:
    """FLUX.1-Fill transformer (by default full depth: 19 + 38 blocks) and VAE, ASUKA-FLUX's MAE/aligners/decoder,
    T5-XXL and CLIP text encoders; on meta. (`tiny`: the tiny test components, without text encoders.)"""
    with torch.device("meta"):
        components = build_flux_components(tiny, num_layers, num_single_layers)
        if not tiny:
            components["text_encoders"] = flux_text_encoders()
    return components


def pipeline_flops(
    kind: str, components: dict, size: int, steps: int, hole_side: float = HOLE_SIDE
) -> dict[str, dict[str, int]]:
    """Per-stage FLOPs of one call of each pipeline: "asuka" and "asuka_cached" (the cache on, as the pipelines
    run by default), the baseline given embeddings ("sd" / "flux-fill", what bench_pipelines.py times) and with
    its text encoders ("sd+text" / "flux-fill+text": CLIP, or T5-XXL and CLIP), when `components` holds them."""
    if kind == "sd":
        plan, base, text = sd_call_plan, "sd", {"text_encoder": components.get("text_encoder")}
    else:
        plan, base, text = flux_call_plan, "flux-fill", {"text_encoders": components.get("text_encoders")}
    plan = functools.partial(plan, components, size, steps, hole_side=hole_side)
    counts = {
        "asuka": count_plan(plan(True)),
        "asuka_cached": count_plan(plan(True, cached=True)),
        base: count_plan(plan(False)),
    }
    if None not in text.values():
        counts[base + "+text"] = count_plan(plan(False, **text))
    return counts


def ratio_rows(
    kind: str, components: dict, sizes: list[int], steps: list[int], hole_sides: tuple[float, ...] = (HOLE_SIDE,)
) -> list[dict]:
    """One row per (size, steps, hole side): the pipelines' GFLOPs, per stage and in all, and ASUKA's ratios
    (uncached and cached) to the baseline with its text encoders (without them when `components` has none)."""
    rows = []
    for size, n, hole_side in itertools.product(sizes, steps, hole_sides):
        counts = pipeline_flops(kind, components, size, n, hole_side)
        base = counts[max(k for k in counts if not k.startswith("asuka"))]  # "+text" when counted
        b, p, c = (sum(x.values()) for x in (base, counts["asuka"], counts["asuka_cached"]))
        rows.append(
            {
                "pipeline": kind,
                "size": size,
                "steps": n,
                "hole_side": hole_side,
                "baseline_gflop": b / 1e9,
                "asuka_gflop": p / 1e9,
                "asuka_cached_gflop": c / 1e9,
                "ratio": p / b,
                "ratio_cached": c / b,
                "stages_gflop": {name: {k: v / 1e9 for k, v in x.items()} for name, x in counts.items()},
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    names = {"sd": ("ASUKA-SD", "SD-inpaint + CLIP"), "flux": ("ASUKA-FLUX", "FluxFill + T5-XXL + CLIP")}
    lines = [
        "| pipelines | size | steps | hole side | ASUKA (TFLOP) | ASUKA cached (TFLOP) | baseline (TFLOP) | ratio |"
        " ratio cached |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, b = names[r["pipeline"]]
        lines.append(
            f"| {a} / {b} | {r['size']} | {r['steps']} | {r['hole_side']:g} | {r['asuka_gflop'] / 1e3:.2f} | "
            f"{r['asuka_cached_gflop'] / 1e3:.2f} | {r['baseline_gflop'] / 1e3:.2f} | {r['ratio']:.4f} | "
            f"{r['ratio_cached']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: str | None, data: object) -> None:
    """Write `data` to `path` as indented JSON, when a path is given (the scripts' `--json`)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-sizes", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--sd-steps", type=int, nargs="*", default=[50])
    parser.add_argument("--flux-sizes", type=int, nargs="*", default=[512, 1024])
    parser.add_argument(
        "--flux-steps", type=int, nargs="*", default=[8, 28, 50], help="8: the turbo-LoRA recipe (docs/flux.md)"
    )
    parser.add_argument(
        "--skip-shares",
        type=float,
        nargs="*",
        default=[0.25, 0.5, 0.75],
        help="shares of ASUKA-FLUX's steps a step cache skips, for the step-cache rows (none: no such rows)",
    )
    parser.add_argument(
        "--hole-sides",
        type=float,
        nargs="*",
        default=[HOLE_SIDE, 1.0],
        help="side of the centred square hole as a fraction of the image side (default: the timed benchmarks' 0.5, "
        "and 1.0, a hole whose box spans the image: the decoder's worst case)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny test components (no text encoders)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    if args.sd_sizes and args.sd_steps:
        rows += ratio_rows("sd", meta_sd_components(args.tiny), args.sd_sizes, args.sd_steps, args.hole_sides)
    cache_rows = []
    if args.flux_sizes and args.flux_steps:
        flux = meta_flux_components(args.tiny)
        rows += ratio_rows("flux", flux, args.flux_sizes, args.flux_steps, args.hole_sides)
        if args.skip_shares:
            cache_rows = step_cache_rows(flux, args.flux_sizes, args.flux_steps, args.skip_shares)
    print(format_rows(rows))
    if cache_rows:
        print(format_cache_rows(cache_rows))
    write_json(args.json, rows + cache_rows)
    return rows + cache_rows


if __name__ == "__main__":
    main()
