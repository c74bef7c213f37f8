"""The GPU benchmark suite: one command, about 8 minutes on one H200, random full-size weights, no download.

    python benchmarks/gpu_suite.py                 # CUDA: writes benchmarks/results/<date>-<device>.json and .md
    python benchmarks/gpu_suite.py --tiny          # CPU smoke run with the tiny test components (seconds)

Sections, in the order they run (a time budget, `--budget` seconds, skips what no longer fits and the JSON is
written after every section, so an interrupted run still leaves one):

1. `sd_inference`: ASUKA-SD vs `StableDiffusionInpaintPipeline`, 512x512, 50 steps, fp16, same UNet/VAE objects:
   CUDA-synchronised medians of alternated runs, per-stage times, and the peak `torch.cuda.max_memory_allocated`
   of each call counting only what that pipeline must hold (ASUKA: UNet, VAE, MAE, aligner, decoder; SD bare: UNet,
   VAE; SD as loaded: plus its CLIP text encoder, which then also runs).
2. `training`: one aligner training step (frozen MAE prior -> aligner -> frozen UNet eps-MSE, AdamW on the aligner)
   vs a bare frozen-UNet step (a learnable (B, 77, 768) embedding instead), and one decoder training step
   (the UNet's one-step x0 latent augmentation on half the batch, AsukaDecoder L1, AdamW); 512x512, batch 8,
   bf16; seconds per step, images per second, and the memory a step allocates above the resident weights and
   optimizer state (what sizes the batch on a smaller card).
3. `eval_throughput` (SD part): images per minute of ASUKA-SD at 512x512, 50 steps, a batch of `--eval-batch`.
4. `compile_offload` (SD part): torch.compile of the UNet on/off (compile time reported apart), and
   `enable_model_cpu_offload` vs resident (time and peak memory).
5. `flux_inference`: ASUKA-FLUX vs `FluxFillPipeline` with a full-depth transformer (19 + 38 blocks), bf16, at
   512 and 1024 pixels, 28 and 50 steps as far as the budget allows (each is probed with 2 steps first and only
   run when its estimated cost fits); peak memory counting what each must hold (FluxFill: transformer, VAE,
   T5-XXL, CLIP, which then also run; ASUKA-FLUX: transformer, VAE, MAE, both aligners, decoder).
6. `eval_throughput` (FLUX part), `flux_speedups` (ASUKA-FLUX at the largest size: 8 steps, the turbo-LoRA
   recipe's count (a fused LoRA costs nothing per step), against the configured steps; FirstBlockCache at 0.12 and
   TaylorSeer at interval 5, with the share of steps the transformer computed in full, which random weights make
   no prediction of for real images) and `compile_offload` (FLUX part: offload, then diffusers' regional
   compilation of the transformer, `compile_repeated_blocks`: the compile timing).
7. `flops`: the exact FLOP ratios of the same calls (benchmarks/flops.py), counted on the meta device by a
   subprocess that runs on spare CPU cores from the start; for the timed hole (a centred square of half the side)
   and for a hole whose box spans the image (ASUKA's decoder works on the hole's box).

Memory is measured in one process: everything stays resident, and a configuration's peak is the peak allocated
above what was allocated before its call, plus the bytes of the modules that configuration needs.
"""

import argparse
import contextlib
import datetime
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import diffusers
import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmark modules
from architectures import build_flux_components, build_sd_components, clip_text_encoder, flux_text_encoders  # noqa: E402
from bench_pipelines import (  # noqa: E402
    DTYPES,
    alternate,
    baseline_call,
    decoder_training_run,
    flux_inference_runs,
    flux_pipelines,
    sd_inference_runs,
    sd_pipelines,
    sd_prompt_embeds,
    synchronize,
    test_inputs,
    to_device,
    training_runs,
)
from flops import FLUX_CLIP_TOKENS, FLUX_T5_TOKENS, write_json  # noqa: E402

from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING  # noqa: E402


SCHEMA = "asuka-gpu-suite/1"
SECTIONS = (
    "sd_inference",
    "training",
    "eval_throughput",
    "compile_offload",
    "flux_inference",
    "flux_memory",
    "flux_speedups",
    "flops",
)
FLOPS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flops.py")


class Budget:
    """Seconds left of the run's budget; sections ask before they start anything that would not fit."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


# ---------------------------------------------------------------------------------------------
# Settings: full size on the GPU, or the tiny components on the CPU
# ---------------------------------------------------------------------------------------------


def settings(args: argparse.Namespace) -> dict:
    if args.tiny:
        return dict(
            sd_size=32, sd_steps=2, sd_dtype="fp32", flux_configs=[(32, 2)], flux_dtype="fp32", repeats=1,
            train_size=32, train_batch=2, eval_batch=2, compile_backend="eager", compile_allowance_s=10,
        )  # fmt: skip
    return dict(
        sd_size=512, sd_steps=50, sd_dtype="fp16", flux_configs=[(512, 28), (1024, 28), (512, 50), (1024, 50)],
        flux_dtype="bf16", repeats=args.repeats, train_size=512, train_batch=8, eval_batch=args.eval_batch,
        compile_backend="inductor", compile_allowance_s=120,
    )  # fmt: skip


def build_on(device: str, build: Callable[[], dict], dtype: torch.dtype) -> dict:
    """Construct (random init) directly on `device`, so 12 B parameters never touch host memory, then cast."""
    with torch.device(device):
        components = build()
    return to_device(components, device, dtype)


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


def module_mib(*modules: torch.nn.Module) -> float:
    total = 0
    for module in modules:
        total += sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    return total / 2**20


def peak_memory(call: Callable[[], object], needed: list[torch.nn.Module], device: str) -> dict[str, float | None]:
    """Weights a configuration must hold and its peak: the peak allocated above the pre-call level (activations
    and workspaces of this call alone) plus those weights. CPU: only the weights (no allocator statistics)."""
    weights = module_mib(*needed)
    if not device.startswith("cuda"):
        call()
        return {"weights_mib": weights, "activations_mib": None, "peak_mib": None}
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    activations = (torch.cuda.max_memory_allocated() - before) / 2**20
    return {"weights_mib": weights, "activations_mib": activations, "peak_mib": weights + activations}


def timed(fn: Callable[[], object], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int, device: str) -> float:
    return float(np.median([timed(fn, device) for _ in range(repeats)]))


def summary(medians: dict[str, dict[str, float]]) -> dict:
    (a_name, a), (b_name, b) = medians.items()
    return {a_name: a, b_name: b, "time_ratio": a["total"] / b["total"]}


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def sd_inference(ctx: dict) -> dict:
    s, device, components = ctx["s"], ctx["device"], ctx["sd"]
    dtype = DTYPES[s["sd_dtype"]]
    medians = alternate(
        sd_inference_runs(components, s["sd_size"], s["sd_steps"], device, dtype), s["repeats"], device
    )
    result = {"size": s["sd_size"], "steps": s["sd_steps"], "dtype": s["sd_dtype"], **summary(medians)}

    asuka, base = sd_pipelines(components)
    image, mask = test_inputs(s["sd_size"])
    text_encoder = components.get("text_encoder")
    common = dict(num_inference_steps=s["sd_steps"], output_type="np")

    def run_base(encode: bool):
        width = SD15_INPAINTING.context_width(components[SD15_INPAINTING.denoiser].config)
        embeds = sd_prompt_embeds(text_encoder if encode else None, width, device, dtype)
        baseline_call(base, image, mask, s["sd_size"], s["sd_steps"], prompt_embeds=embeds, guidance_scale=1.0)

    backbone = [components[SD15_INPAINTING.denoiser], components["vae"]]
    extras = [components[k] for k in ("mae", "aligner", "decoder")]
    with torch.no_grad():
        memory = {
            "asuka": peak_memory(lambda: asuka(image, mask, **common), backbone + extras, device),
            "sd": peak_memory(lambda: run_base(False), backbone, device),
        }
        if text_encoder is not None:
            memory["sd+text"] = peak_memory(lambda: run_base(True), backbone + [text_encoder], device)
    result["memory"] = memory
    for base_name in [k for k in memory if k != "asuka"]:
        if memory["asuka"]["peak_mib"] is not None:
            result[f"memory_ratio_vs_{base_name}"] = memory["asuka"]["peak_mib"] / memory[base_name]["peak_mib"]
    return result


def training(ctx: dict) -> dict:
    s, device, components = ctx["s"], ctx["device"], ctx["sd"]
    dtype = torch.bfloat16 if not ctx["args"].tiny else torch.float32
    size, batch = s["train_size"], s["train_batch"]
    aligner_state = {k: v.clone() for k, v in components["aligner"].state_dict().items()}
    decoder_state = {k: v.clone() for k, v in components["decoder"].state_dict().items()}
    trained_through = (SD15_INPAINTING.denoiser, "vae", "mae", "aligner", "decoder")
    to_device({k: components[k] for k in trained_through}, device, dtype)
    try:
        runs = training_runs(components, size, batch, device, dtype)
        medians = alternate(runs, s["repeats"], device)
        result = {"size": size, "batch": batch, "dtype": str(dtype).split(".")[-1], **summary(medians)}
        for name in ("asuka", "bare"):
            result[f"{name}_images_per_s"] = batch / medians[name]["total"]
            # above everything already allocated (weights, optimizer state): what the batch adds, for sizing cards
            result[f"{name}_step_activations_mib"] = peak_memory(runs[name][0], [], device)["activations_mib"]
        step = decoder_training_run(components, size, batch, device, dtype)
        step()  # warm-up
        decoder_s = median_time(step, s["repeats"], device)
        result["decoder"] = {
            "step_s": decoder_s,
            "images_per_s": batch / decoder_s,
            "step_activations_mib": peak_memory(step, [], device)["activations_mib"],
        }
    finally:  # the inference sections after this one use the untrained, frozen modules in their own dtype
        for name, state in (("aligner", aligner_state), ("decoder", decoder_state)):
            components[name].load_state_dict(state)
            components[name].eval().requires_grad_(False)
        to_device({k: components[k] for k in trained_through}, device, ctx["sd_dtype"])
    return result


def eval_throughput_sd(ctx: dict) -> dict:
    s, device, components = ctx["s"], ctx["device"], ctx["sd"]
    asuka = sd_pipelines(components)[0]
    image, mask = test_inputs(s["sd_size"])
    batch = s["eval_batch"]

    def run():
        asuka([image] * batch, [mask] * batch, num_inference_steps=s["sd_steps"], output_type="np")

    run()
    seconds = median_time(run, s["repeats"], device)
    return {"size": s["sd_size"], "steps": s["sd_steps"], "batch": batch, "images_per_min": 60 * batch / seconds}


def offload_then_compile(ctx: dict, pipe, run: Callable[[], object], compile_model: Callable[[], str]) -> dict:
    """`run` resident and eager (the conditioning cache on, as by default), then with `enable_model_cpu_offload`
    (time and peak memory), then after `compile_model()` (the cache steps aside for a compiled denoiser; the first
    call's compile time is reported apart). Leaves the denoiser compiled: run it last for these components."""
    s, device, budget = ctx["s"], ctx["device"], ctx["budget"]
    eager_s = median_time(run, s["repeats"], device)
    result = {"eager_s": eager_s}
    if budget.fits(3 * s["repeats"] * eager_s + 10):
        pipe.enable_model_cpu_offload(device=device)
        try:
            run()
            result["offload_s"] = median_time(run, s["repeats"], device)
            result["offload_slowdown"] = result["offload_s"] / eager_s
            result["offload_memory"] = peak_memory(run, [], device)  # whatever the hooks bring in, plus activations
        finally:
            pipe.remove_all_hooks()
            pipe.to(device)
    else:
        result["offload"] = "skipped: budget"
    if budget.fits((s["repeats"] + 1) * eager_s + s["compile_allowance_s"]):
        result["compile"] = compile_model()
        result["compile_first_call_s"] = timed(run, device)
        result["compiled_s"] = median_time(run, s["repeats"], device)
        result["compile_speedup"] = eager_s / result["compiled_s"]
    else:
        result["compile"] = "skipped: budget"
    return result


def compile_and_offload_sd(ctx: dict) -> dict:
    """ASUKA-SD: offload, then the UNet compiled whole with torch.compile."""
    s, components = ctx["s"], ctx["sd"]
    image, mask = test_inputs(s["sd_size"])
    asuka = sd_pipelines(components)[0]

    def compile_unet() -> str:
        components[SD15_INPAINTING.denoiser].compile(backend=s["compile_backend"])
        return f"unet.compile(backend={s['compile_backend']!r})"

    def run():
        return asuka(image, mask, num_inference_steps=s["sd_steps"], output_type="np")

    return {"size": s["sd_size"], "steps": s["sd_steps"], **offload_then_compile(ctx, asuka, run, compile_unet)}


def flux_inference(ctx: dict) -> dict:
    s, device, args = ctx["s"], ctx["device"], ctx["args"]
    dtype = DTYPES[s["flux_dtype"]]
    components = ctx["flux"]
    runs_out, memory = [], {}
    t5, clip = components.get("text_encoders", (None, None))
    for size, steps in s["flux_configs"]:
        probe = flux_inference_runs(components, size, 2, device, dtype)
        for fn, _ in probe.values():  # warm-up at this size, and the cost of a 2-step call
            fn()
        probe_s = {name: timed(fn, device) for name, (fn, _) in probe.items()}
        estimate = sum(probe_s.values()) * steps / 2 * s["repeats"]
        if not ctx["budget"].fits(estimate + 15):
            runs_out.append({"size": size, "steps": steps, "status": f"skipped: budget (estimated {estimate:.0f} s)"})
            continue
        medians = alternate(flux_inference_runs(components, size, steps, device, dtype), s["repeats"], device, 0)
        runs_out.append({"size": size, "steps": steps, **summary(medians)})
        if size not in memory:
            memory[size] = flux_memory(components, size, device, dtype, t5, clip)
    result = {"dtype": s["flux_dtype"], "depth": "tiny" if args.tiny else "19 double + 38 single", "runs": runs_out}
    result["memory"] = {str(k): v for k, v in memory.items()}
    return result


def flux_memory(components: dict, size: int, device: str, dtype: torch.dtype, t5, clip) -> dict:
    """Peak of a 2-step call of each (memory does not grow with the steps)."""
    runs = flux_inference_runs(components, size, 2, device, dtype)
    backbone = [components[FLUX_FILL.denoiser], components["vae"]]
    extras = [components[k] for k in ("mae", "token_aligner", "pooled_aligner", "decoder")]
    base_fn = runs["flux-fill"][0]

    def base_with_text():
        if t5 is not None:
            t5(torch.zeros(1, FLUX_T5_TOKENS, dtype=torch.long, device=device))
            clip(torch.zeros(1, FLUX_CLIP_TOKENS, dtype=torch.long, device=device))
        base_fn()

    with torch.no_grad():
        memory = {"asuka-flux": peak_memory(runs["asuka-flux"][0], backbone + extras, device)}
        text = [m for m in (t5, clip) if m is not None]
        memory["flux-fill+text"] = peak_memory(base_with_text, backbone + text, device)
    if memory["asuka-flux"]["peak_mib"] is not None:
        memory["ratio"] = memory["asuka-flux"]["peak_mib"] / memory["flux-fill+text"]["peak_mib"]
    return memory


def flux_memory_rows(ctx: dict) -> dict:
    """Every row of the memory plan (`asuka.methods.memory.CONFIGURATIONS`, plus group offloading without CUDA
    streams) at full size: ASUKA-FLUX saved once, then loaded and placed as the app and the CLI do it
    (`loading_kwargs`: `PipelineQuantizationConfig`; `place_pipeline`: layerwise casting, offloading), run for 3
    steps; the peak allocated above the pre-load level and the seconds per step (between step callbacks), next to
    the plan's figure (benchmarks/memory_plan.py). bitsandbytes (nf4), CUDA streams and sequential offloading
    (accelerate cannot run it on the "cpu:0" device diffusers passes) need a GPU: skipped on CPU.
    GGUF needs a FLUX.1-Fill GGUF file (see docs/flux.md), not random weights: not a row here."""
    from asuka.methods import memory

    s, device = ctx["s"], ctx["device"]
    size = s["flux_configs"][-1][0] if ctx["args"].tiny else 1024
    dtype = DTYPES[s["flux_dtype"]]
    image, mask = test_inputs(size)
    folder = tempfile.mkdtemp(prefix="asuka-flux-memory-")
    flux_pipelines(ctx["flux"])[0].save_pretrained(folder)
    configurations = [(config, True) for config in memory.CONFIGURATIONS]
    configurations.insert(configurations.index((memory.Configuration("none", "group"), True)) + 1,
                          (memory.Configuration("none", "group"), False))  # fmt: skip
    rows = []
    for config, streams in configurations:
        planned = memory.REQUIRED_GB.get((config.quantize, config.offload)) if size == 1024 else None
        row = {"quantize": config.quantize, "offload": config.offload, "size": size, "planned_gb": planned}
        if config.offload == "group":
            row["streams"] = streams
        needs_cuda = (
            config.quantize == "nf4" or config.offload == "sequential" or (config.offload == "group" and streams)
        )
        if needs_cuda and not device.startswith("cuda"):
            rows.append({**row, "status": "skipped: needs CUDA"})
            continue
        if not ctx["budget"].fits(5 if ctx["args"].tiny else 120):
            rows.append({**row, "status": "skipped: budget"})
            continue
        try:
            rows.append({**row, **memory_row(folder, config, streams, device, dtype, image, mask)})
        except Exception as error:  # noqa: BLE001 - one failing backend must not end the suite
            rows.append({**row, "status": f"error: {error}"[:500]})
    return {"dtype": s["flux_dtype"], "rows": rows}


def memory_row(folder: str, config, streams: bool, device: str, dtype: torch.dtype, image, mask) -> dict:
    """One configuration: load from `folder`, place it, run 3 steps; peak GB above the level before loading (CUDA)
    and the median seconds per step."""
    from asuka import AsukaFluxPipeline
    from asuka.methods import memory

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    pipe = AsukaFluxPipeline.from_pretrained(folder, torch_dtype=dtype, **memory.loading_kwargs(config, dtype))
    if config.offload == "group" and not streams:
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_type="block_level", num_blocks_per_group=1
        )
        pipe.set_progress_bar_config(disable=True)
    else:
        memory.place_pipeline(pipe, config, device)
    stamps = []

    def stamp(pipeline, step, timestep, tensors):
        synchronize(device)
        stamps.append(time.perf_counter())
        return tensors

    pipe(image, mask, num_inference_steps=3, working_resolution=image.size[0], output_type="np",
         callback_on_step_end=stamp)  # fmt: skip
    synchronize(device)
    peak = (torch.cuda.max_memory_allocated() - before) / 1e9 if device.startswith("cuda") else None
    del pipe
    return {"status": "done", "peak_gb": peak, "s_per_step": float(np.median(np.diff(stamps)))}


def eval_throughput_flux(ctx: dict) -> dict:
    s, device = ctx["s"], ctx["device"]
    size, steps = s["flux_configs"][0][0], 50 if not ctx["args"].tiny else 2
    runs = flux_inference_runs(ctx["flux"], size, steps, device, DTYPES[s["flux_dtype"]])
    one = timed(runs["asuka-flux"][0], device)
    return {"size": size, "steps": steps, "batch": 1, "images_per_min": 60 / one}


def flux_speedups(ctx: dict) -> dict:
    """ASUKA-FLUX at the largest configured size: the configured steps, 8 steps, and the configured steps with
    FirstBlockCache and TaylorSeer (diffusers' step caches, `AsukaFluxPipeline.enable_step_cache`). A step whose
    last single block's MLP runs is one the transformer computed in full; `computed_share` is their share."""
    from asuka.pipelines.step_cache import parse_cache_spec

    s, device, components = ctx["s"], ctx["device"], ctx["flux"]
    size = max(config[0] for config in s["flux_configs"])
    steps = min(n for config_size, n in s["flux_configs"] if config_size == size)
    asuka = flux_pipelines(components)[0]
    image, mask = test_inputs(size)
    calls = [0]
    probe = components[FLUX_FILL.denoiser].single_transformer_blocks[-1].proj_mlp
    handle = probe.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    runs = {}

    def measure(name: str, n: int) -> None:
        def run():
            return asuka(image, mask, num_inference_steps=n, working_resolution=size, output_type="np")

        if not ctx["args"].tiny:
            run()  # warm-up
        calls[0] = 0
        seconds = median_time(run, s["repeats"], device)
        runs[name] = {"steps": n, "seconds": seconds, "computed_share": calls[0] / (n * s["repeats"])}

    try:
        measure(f"{steps} steps", steps)
        measure("8 steps", 8)
        for spec in ("first-block:0.12", "taylorseer:5"):
            estimate = runs[f"{steps} steps"]["seconds"] * (s["repeats"] + 1)
            if not ctx["budget"].fits(estimate):
                runs[spec] = {"status": f"skipped: budget (estimated {estimate:.0f} s)"}
                continue
            asuka.enable_step_cache(parse_cache_spec(spec, steps))
            try:
                measure(spec, steps)
            finally:
                asuka.disable_step_cache()
    finally:
        handle.remove()
    base = runs[f"{steps} steps"]["seconds"]
    for run in runs.values():
        if "seconds" in run:
            run["speedup"] = base / run["seconds"]
    return {"size": size, "runs": runs}


def compile_and_offload_flux(ctx: dict) -> dict:
    """ASUKA-FLUX at the first configured size and steps: offload, then diffusers' regional compilation of the
    transformer (`compile_repeated_blocks`: each block type compiled once, so seconds rather than minutes for 57
    blocks)."""
    s, components = ctx["s"], ctx["flux"]
    size, steps = s["flux_configs"][0]
    asuka = flux_pipelines(components)[0]
    image, mask = test_inputs(size)

    def compile_transformer() -> str:
        components[FLUX_FILL.denoiser].compile_repeated_blocks(backend=s["compile_backend"])
        return f"transformer.compile_repeated_blocks(backend={s['compile_backend']!r})"

    def run():
        return asuka(image, mask, num_inference_steps=steps, working_resolution=size, output_type="np")

    return {"size": size, "steps": steps, **offload_then_compile(ctx, asuka, run, compile_transformer)}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def start_flop_count(args: argparse.Namespace, s: dict, path: str) -> subprocess.Popen:
    """benchmarks/flops.py for the configurations timed here, in a subprocess on spare CPU cores."""
    command = [sys.executable, FLOPS_SCRIPT, "--json", path]
    command += ["--sd-sizes", str(s["sd_size"]), "--sd-steps", str(s["sd_steps"])]
    command += ["--flux-sizes", *sorted({str(c[0]) for c in s["flux_configs"]})]
    command += ["--flux-steps", *sorted({str(c[1]) for c in s["flux_configs"]}), "--skip-shares"]  # no cache rows
    if args.tiny:
        command.append("--tiny")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def device_label(device: str) -> str:
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def run_section(
    report: dict, name: str, fn: Callable[[dict], dict], ctx: dict, min_s: float, part: str | None = None
) -> None:
    """Run one section (or one `part` of it, e.g. its "sd" or "flux" half) if at least `min_s` seconds are left;
    record its result or its error, and rewrite the outputs."""
    entry = report["sections"][name]
    if part is not None:
        entry = entry.setdefault(part, {})
    if not ctx["budget"].fits(min_s):
        entry["status"] = f"skipped: budget ({ctx['budget'].left():.0f} s left, needs ~{min_s:.0f} s)"
        write_outputs(report, ctx)
        return
    start = time.perf_counter()
    try:
        entry.update(fn(ctx))
        entry["status"] = "done"
    except Exception as error:  # a failed section (e.g. out of memory) must not lose the others
        entry.update(status="error", error=f"{type(error).__name__}: {error}"[:2000])
    entry["wall_s"] = time.perf_counter() - start
    write_outputs(report, ctx)


def write_outputs(report: dict, ctx: dict) -> None:
    report["elapsed_s"] = ctx["budget"].elapsed()
    write_json(ctx["json_path"], report)
    with open(ctx["json_path"][: -len(".json")] + ".md", "w") as f:
        f.write(markdown(report))


def section_status(entry: dict) -> str:
    """A section's status, or its parts' ("sd: done, flux: skipped: budget")."""
    if "status" in entry:
        return entry["status"]
    parts = [f"{k}: {v['status']}" for k, v in entry.items() if isinstance(v, dict) and "status" in v]
    return ", ".join(parts) or "not run"


def markdown(report: dict) -> str:
    """The headline numbers as a Markdown table (the JSON has everything)."""
    sections = report["sections"]
    rows = []

    def add(what: str, value, note: str = "") -> None:
        rows.append(f"| {what} | {value} | {note} |")

    def fmt(x, digits=3):
        return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)

    sd = sections.get("sd_inference", {})
    if "time_ratio" in sd:
        add(f"ASUKA-SD / SD time, {sd['size']}px {sd['steps']} steps {sd['dtype']}", fmt(sd["time_ratio"]),
            f"{fmt(sd['asuka']['total'])} s vs {fmt(sd['sd']['total'])} s")  # fmt: skip
        for key in [k for k in sd if k.startswith("memory_ratio")]:
            add(f"ASUKA-SD / SD peak memory ({key.removeprefix('memory_ratio_vs_')})", fmt(sd[key]))
    for run in sections.get("flux_inference", {}).get("runs", []):
        label = f"ASUKA-FLUX / FluxFill time, {run['size']}px {run['steps']} steps"
        add(label, fmt(run["time_ratio"]) if "time_ratio" in run else run.get("status", ""))
    for size, memory in sections.get("flux_inference", {}).get("memory", {}).items():
        if "ratio" in memory:
            add(f"ASUKA-FLUX / FluxFill+T5+CLIP peak memory, {size}px", fmt(memory["ratio"]))
    train = sections.get("training", {})
    if "time_ratio" in train:
        add(f"aligner step / bare UNet step, {train['size']}px batch {train['batch']}", fmt(train["time_ratio"]),
            f"{fmt(train['asuka_images_per_s'], 1)} vs {fmt(train['bare_images_per_s'], 1)} images/s")  # fmt: skip
        add(
            "decoder step (s)", fmt(train["decoder"]["step_s"]), f"{fmt(train['decoder']['images_per_s'], 1)} images/s"
        )
        memory = {
            "aligner": train.get("asuka_step_activations_mib"),
            "decoder": train["decoder"].get("step_activations_mib"),
        }
        for what, mib in memory.items():
            if mib is not None:
                add(f"{what} step memory above the resident weights (MiB)", fmt(mib, 0))
    for key, value in sections.get("eval_throughput", {}).items():
        if isinstance(value, dict) and "images_per_min" in value:
            add(f"ASUKA-{key.upper()} images/min, {value['size']}px {value['steps']} steps, batch {value['batch']}",
                fmt(value["images_per_min"], 1))  # fmt: skip
    for row in sections.get("flux_memory", {}).get("rows", []):
        streams = {True: ", streams", False: ", no streams"}.get(row.get("streams"), "")
        what = f"ASUKA-FLUX --quantize {row['quantize']} --offload {row['offload']}{streams}, {row['size']}px"
        if row.get("status") == "done":
            add(f"{what}: peak GB, s/step", f"{fmt(row['peak_gb'], 2)}, {fmt(row['s_per_step'])}",
                f"plan {row['planned_gb']} GB")  # fmt: skip
        else:
            add(what, row.get("status", ""))
    co = sections.get("compile_offload", {})
    for part in ("sd", "flux"):
        if "compile_speedup" in co.get(part, {}):
            add(f"torch.compile speed-up ({part})", fmt(co[part]["compile_speedup"]),
                f"{co[part]['compile']}; first call {fmt(co[part]['compile_first_call_s'], 1)} s")  # fmt: skip
    for part in ("sd", "flux"):
        if "offload_slowdown" in co.get(part, {}):
            add(f"enable_model_cpu_offload / resident time ({part})", fmt(co[part]["offload_slowdown"]))
    speedups = sections.get("flux_speedups", {})
    for name, run in speedups.get("runs", {}).items():
        if "seconds" in run:
            add(f"ASUKA-FLUX {speedups['size']}px, {name} (s)", fmt(run["seconds"], 2),
                f"x{fmt(run['speedup'])}; transformer computed {fmt(run['computed_share'])} of the steps")  # fmt: skip
    for row in sections.get("flops", {}).get("rows", []):
        what = f"{row['pipeline']} {row['size']}px {row['steps']} steps, hole side {row['hole_side']:g}"
        add(f"FLOP ratio {what} (cached)", fmt(row["ratio_cached"], 4), f"uncached {fmt(row['ratio'], 4)}")
    status = "; ".join(f"{k}: {section_status(v)}" for k, v in sections.items())
    head = [
        f"## GPU suite: {report['device']} ({report['date']}{', tiny components' if report['tiny'] else ''})",
        "",
        f"torch {report['torch']}, diffusers {report['diffusers']}; {report['elapsed_s']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget. Sections: {status}.",
        "",
        "| measurement | value | note |",
        "|---|---:|---|",
    ]
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny components on the CPU (the test suite's run)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default 420; 120 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs per measurement (full size)")
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run with --tiny (CPU smoke run) or on a GPU machine.")
    s = settings(args)
    diffusers.utils.logging.set_verbosity_error()  # the suite casts dtypes on purpose; no warning per cast
    budget = Budget(args.budget if args.budget is not None else (120 if args.tiny else 420))
    os.makedirs(args.out, exist_ok=True)
    date = datetime.date.today().isoformat()
    json_path = os.path.join(args.out, f"{date}-{device_label(device)}{'-tiny' if args.tiny else ''}.json")
    report = {
        "schema": SCHEMA,
        "date": date,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "tiny": args.tiny,
        "budget_s": budget.seconds,
        "settings": {k: v for k, v in s.items()},
        "sections": {name: {} for name in SECTIONS},
    }
    ctx = {"args": args, "s": s, "device": device, "budget": budget, "json_path": json_path}
    ctx["sd_dtype"] = DTYPES[s["sd_dtype"]]
    torch.backends.cuda.matmul.allow_tf32 = True
    flop_file = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    flop_process = None if "flops" in args.skip else start_flop_count(args, s, flop_file)
    for name in args.skip:
        report["sections"][name]["status"] = "skipped: --skip"
    try:
        run_sd_sections(report, ctx)
        run_flux_sections(report, ctx)
    finally:
        if flop_process is not None:
            collect_flops(report, flop_process, flop_file, max(budget.left(), 10 if not args.tiny else 60))
        write_outputs(report, ctx)
    print(markdown(report))
    print(f"Wrote {json_path} and {json_path[: -len('.json')]}.md")
    return report


def built(report: dict, ctx: dict, key: str, build: Callable[[], dict], sections: list[str]) -> bool:
    """Build `ctx[key]`; if that fails (e.g. out of memory), record the error in the sections that needed it."""
    try:
        ctx[key] = build()
        return True
    except Exception as error:
        for name in sections:
            report["sections"][name].setdefault("status", f"error while building the models: {error}"[:2000])
        write_outputs(report, ctx)
        return False


def run_sd_sections(report: dict, ctx: dict) -> None:
    args, device, tiny = ctx["args"], ctx["device"], ctx["args"].tiny
    plan = [
        ("sd_inference", sd_inference, 30, None),
        ("training", training, 20, None),
        ("eval_throughput", eval_throughput_sd, 15, "sd"),
        ("compile_offload", compile_and_offload_sd, 60, "sd"),
    ]
    plan = [entry for entry in plan if entry[0] not in args.skip]

    def build() -> dict:
        components = build_on(device, lambda: build_sd_components(tiny), ctx["sd_dtype"])
        if not tiny:
            components["text_encoder"] = build_on(device, lambda: {"t": clip_text_encoder()}, ctx["sd_dtype"])["t"]
        return components

    if not plan or not built(report, ctx, "sd", build, [entry[0] for entry in plan if entry[3] is None]):
        return
    for name, fn, min_s, part in plan:
        run_section(report, name, fn, ctx, 1 if tiny else min_s, part)
    del ctx["sd"]
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_flux_sections(report: dict, ctx: dict) -> None:
    args, device, s = ctx["args"], ctx["device"], ctx["s"]
    if "flux_inference" in args.skip:
        return
    if not ctx["budget"].fits(1 if args.tiny else 60):
        report["sections"]["flux_inference"]["status"] = "skipped: budget"
        return

    def build() -> dict:
        components = build_on(device, lambda: build_flux_components(args.tiny, 19, 38), DTYPES[s["flux_dtype"]])
        if not args.tiny:
            encoders = build_on(device, lambda: dict(zip(("t5", "clip"), flux_text_encoders())), DTYPES["bf16"])
            components["text_encoders"] = (encoders["t5"], encoders["clip"])
        return components

    if not built(report, ctx, "flux", build, ["flux_inference"]):
        return
    run_section(report, "flux_inference", flux_inference, ctx, 1 if args.tiny else 30)
    if "flux_memory" not in args.skip:
        run_section(report, "flux_memory", flux_memory_rows, ctx, 1 if args.tiny else 300)
    if "eval_throughput" not in args.skip:
        run_section(report, "eval_throughput", eval_throughput_flux, ctx, 1 if args.tiny else 60, "flux")
    if "flux_speedups" not in args.skip:  # before compile_offload, which leaves the transformer compiled
        run_section(report, "flux_speedups", flux_speedups, ctx, 1 if args.tiny else 120)
    if "compile_offload" not in args.skip:
        run_section(report, "compile_offload", compile_and_offload_flux, ctx, 1 if args.tiny else 150, "flux")


def collect_flops(report: dict, process: subprocess.Popen, path: str, wait_s: float) -> None:
    entry = report["sections"]["flops"]
    try:
        _, stderr = process.communicate(timeout=wait_s)
        if process.returncode == 0:
            with open(path) as f:
                entry.update(rows=json.load(f), status="done")
        else:
            entry.update(status="error", error=stderr[-2000:])
    except subprocess.TimeoutExpired:
        process.kill()
        entry["status"] = "skipped: budget (the FLOP count did not finish; run benchmarks/flops.py)"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


if __name__ == "__main__":
    main()
