"""ASUKA's overhead against the plain diffusers inpainting pipelines it is built on.

What it measures (see benchmarks/README.md for figures and benchmarks/NOTES.md for the analysis):

* inference: `AsukaPipeline` vs diffusers' `StableDiffusionInpaintPipeline` on the SAME module objects (UNet, VAE,
  scheduler config), same size, steps, seed and guidance (none, ASUKA's default). The baseline gets CLIP-shaped
  `prompt_embeds` (1, 77, 768) instead of a text encoder. Runs alternate A B A B ... after one warm-up each;
  medians and their ratio are reported, with a per-stage breakdown (MAE prior, aligner, VAE encode, UNet
  denoising, decode).
* peak memory: one subprocess per configuration, each building only what it needs: peak RSS on CPU (the kernel's
  high-water mark `VmHWM`, reset after the weights are built), `torch.cuda.max_memory_allocated` on GPU. The
  baseline is measured twice: bare (UNet + VAE) and as users load it (with the CLIP text encoder).
* training: one aligner training step (frozen MAE prior -> aligner -> frozen UNet eps-MSE, backward and AdamW on
  the aligner) vs a bare frozen-UNet step whose only learnable input is a text-conditioning-sized embedding
  (1, 77, 768) (backward through the same UNet, AdamW on the embedding), on the same cached latents batch.
* optional: ASUKA-FLUX vs `FluxFillPipeline` with a depth-reduced FLUX transformer of the real widths (`--flux`).
* next to every time ratio, the exact FLOP ratio of the same two calls (benchmarks/flops.py, counted on meta-device
  copies of the same architectures): time on a shared CPU swings by +-10 % between identical calls, FLOPs do not.

Models are full-size architectures with random weights, built from the public configs written below (no
download). `--tiny` swaps in the tiny test components (used by tests/benchmarks/test_bench_pipelines.py so the code
cannot rot).

    python -m benchmarks.bench_pipelines                          # CPU: 256x256, 2 steps
    python -m benchmarks.bench_pipelines --device cuda --dtype bf16 --size 512 --steps 50 --flux
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import FluxFillPipeline, StableDiffusionInpaintPipeline

from asuka.pipelines import AsukaFluxPipeline, AsukaPipeline
from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING, BackboneSpec
from asuka.testing.flux import flux_fill_pipeline
from asuka.testing.sd import sd_inpaint_pipeline

from . import REPOSITORY, module_command
from .architectures import build_flux_components, build_sd_components, clip_text_encoder
from .flops import (
    FLUX_T5_TOKENS,
    SD_TEXT_TOKENS,
    centred_hole_box,
    count_flops,
    meta_flux_components,
    meta_sd_components,
    pipeline_flops,
)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Components on a device, in pipelines; training inputs (the models themselves: architectures.py).
# ---------------------------------------------------------------------------------------------


def to_device(components: dict, device: str, dtype: torch.dtype) -> dict:
    for name, module in components.items():
        if isinstance(module, torch.nn.Module):
            module.to(device=device)
            if next(module.parameters()).dtype != dtype:  # diffusers warns on every dtype cast, so only when needed
                module.to(dtype=dtype)
    return components


def sd_pipelines(components: dict) -> tuple[AsukaPipeline, StableDiffusionInpaintPipeline]:
    """ASUKA and the diffusers baseline on the same module objects (each with its own scheduler instance)."""
    scheduler = components["scheduler"]
    asuka = AsukaPipeline(
        vae=components["vae"],
        unet=components[SD15_INPAINTING.denoiser],
        scheduler=scheduler.__class__.from_config(scheduler.config),
        mae=components["mae"],
        aligner=components["aligner"],
        decoder=components["decoder"],
    )
    asuka.set_progress_bar_config(disable=True)
    base = sd_inpaint_pipeline({**components, "scheduler": scheduler.__class__.from_config(scheduler.config)})
    return asuka, base


def flux_pipelines(components: dict) -> tuple[AsukaFluxPipeline, FluxFillPipeline]:
    """ASUKA-FLUX and diffusers' FluxFill on the same module objects (each with its own scheduler instance); any
    other entry of `components` (the suite's text encoders) is left out."""
    scheduler = components["scheduler"]
    names = ("vae", FLUX_FILL.denoiser, "mae", "token_aligner", "pooled_aligner", "decoder")
    asuka = AsukaFluxPipeline(
        scheduler=scheduler.__class__.from_config(scheduler.config), **{k: components[k] for k in names}
    )
    asuka.set_progress_bar_config(disable=True)
    base = flux_fill_pipeline({**components, "scheduler": scheduler.__class__.from_config(scheduler.config)})
    return asuka, base


def training_batch(
    batch: int, size: int, device: str, dtype: torch.dtype, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1] (B, 3, size, size) and a centred square hole of a quarter of the area (B, 1, ...)."""
    image = torch.rand(batch, 3, size, size, generator=generator).to(device, dtype)
    top, left, bottom, right = centred_hole_box(size)
    hole = torch.zeros(batch, 1, size, size, device=device, dtype=dtype)
    hole[..., top:bottom, left:right] = 1
    return image, hole


def trained_with_adamw(module: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """Put `module` in training mode with gradients on; the AdamW optimizer of its parameters (as the scripts)."""
    module.train().requires_grad_(True)
    return torch.optim.AdamW(module.parameters(), lr=lr)


def benchmark_inputs(size: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A deterministic textured RGB image and a centred rectangular hole (a quarter of the area)."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin(6 * xx), np.cos(5 * yy), xx * yy], -1) * 0.4 + 0.5 + 0.05 * rng.rand(size, size, 3)
    top, left, bottom, right = centred_hole_box(size)
    mask = np.zeros((size, size), np.uint8)
    mask[top:bottom, left:right] = 255
    return PIL.Image.fromarray((image.clip(0, 1) * 255).astype(np.uint8)), PIL.Image.fromarray(mask)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def stage_timer(stages: dict[str, tuple[object, str]], device: str) -> Iterator[dict[str, float]]:
    """Wrap `obj.method` for each stage (instance attributes, removed afterwards) and sum their seconds."""
    totals = {name: 0.0 for name in stages}

    def timed(name: str, method: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            result = method(*args, **kwargs)
            synchronize(device)
            totals[name] += time.perf_counter() - start
            return result

        return wrapper

    previous = [(obj, method_name, obj.__dict__.get(method_name)) for obj, method_name in stages.values()]
    for name, (obj, method_name) in stages.items():
        setattr(obj, method_name, timed(name, getattr(obj, method_name)))
    try:
        yield totals
    finally:
        for obj, method_name, value in previous:  # restore, keeping instance-level overrides (torch.compile)
            if value is None:
                delattr(obj, method_name)
            else:
                setattr(obj, method_name, value)


def timed_call(fn: Callable[[], object], stages: dict[str, tuple[object, str]], device: str) -> dict[str, float]:
    """One run of `fn`: {"total": s, <stage>: s, ..., "other": s} in wall-clock seconds, plus on CPU "cpu": the
    process's CPU seconds, which a machine shared with other jobs inflates far less than wall-clock time."""
    with stage_timer(stages, device) as totals:
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    timings = {"total": total, **totals, "other": total - sum(totals.values())}
    return timings if device.startswith("cuda") else {**timings, "cpu": cpu}


def alternate(
    runs: dict[str, tuple[Callable[[], object], dict]], repeats: int, device: str, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Warm each up, then run them in turn A B A B ...; returns the median of every timing per run name."""
    for _ in range(warmup):
        for fn, _stages in runs.values():
            fn()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (fn, stages) in runs.items():
            samples[name].append(timed_call(fn, stages, device))
    return {name: {k: statistics.median(s[k] for s in runs_) for k in runs_[0]} for name, runs_ in samples.items()}


def stage_maps(components: dict, backbone: BackboneSpec, aligners: dict[str, str]) -> tuple[dict, dict]:
    """The stages timed in an ASUKA call on `backbone` (MAE prior, the `aligners` {stage: component}, VAE encode,
    denoising, ASUKA decoder) and in its baseline's (VAE encode, denoising, VAE decode), for `stage_timer`."""
    vae, denoise = components["vae"], (components[backbone.denoiser], "forward")
    asuka = {
        "mae": (components["mae"], "prior"),
        **{stage: (components[name], "forward") for stage, name in aligners.items()},
        "vae_encode": (vae, "encode"),
        "denoise": denoise,
        "decode": (components["decoder"], "forward"),
    }
    return asuka, {"vae_encode": (vae, "encode"), "denoise": denoise, "decode": (vae, "decode")}


# ---------------------------------------------------------------------------------------------
# Inference: ASUKA-SD vs StableDiffusionInpaintPipeline
# ---------------------------------------------------------------------------------------------


def baseline_call(pipeline, image: PIL.Image.Image, mask: PIL.Image.Image, size: int, steps: int, **conditioning):
    """One timed run of a diffusers baseline pipeline: `size` x `size`, `steps` steps, seed 0, numpy output, with
    the pipeline's own `conditioning` (its prompt embeddings, guidance)."""
    return pipeline(
        image=image,
        mask_image=mask,
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **conditioning,
    )


def sd_prompt_embeds(text_encoder: torch.nn.Module | None, width: int, device: str, dtype: torch.dtype):
    """The SD baseline's `prompt_embeds` (1, 77, `width`): a fixed token sequence through `text_encoder`, as a prompt
    would be encoded, or random embeddings of that shape when there is no text encoder."""
    if text_encoder is None:
        return torch.randn(1, SD_TEXT_TOKENS, width).to(device, dtype)
    ids = torch.arange(SD_TEXT_TOKENS, device=device)[None] % 49408  # CLIP's vocabulary size
    with torch.no_grad():
        return text_encoder(ids)[0]


def sd_inference_runs(components: dict, size: int, steps: int, device: str, dtype: torch.dtype) -> dict:
    """The two calls to compare (closures) with their stage maps."""
    asuka, base = sd_pipelines(components)
    image, mask = benchmark_inputs(size)
    width = SD15_INPAINTING.context_width(components[SD15_INPAINTING.denoiser].config)
    text_embeds = torch.randn(1, SD_TEXT_TOKENS, width, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def run_asuka():
        return asuka(
            image, mask, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np"
        )

    def run_base():
        return baseline_call(base, image, mask, size, steps, prompt_embeds=text_embeds, guidance_scale=1.0)

    asuka_stages, base_stages = stage_maps(components, SD15_INPAINTING, {"aligner": "aligner"})
    return {"asuka": (run_asuka, asuka_stages), "sd": (run_base, base_stages)}


# ---------------------------------------------------------------------------------------------
# Peak memory, one subprocess per configuration
# ---------------------------------------------------------------------------------------------


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(config: str, args: argparse.Namespace) -> dict[str, float]:
    """Build only what `config` needs, run it once, return the weights' and the run's peak memory in MiB.

    CPU: the kernel's RSS high-water mark (VmHWM), reset just before the run through /proc/self/clear_refs, so it
    catches the true peak (no sampling). CUDA: max_memory_allocated after reset_peak_memory_stats.
    """
    device, dtype = args.device, DTYPES[args.dtype]
    components = to_device(build_sd_components(args.tiny, "backbone" if config != "asuka" else "asuka"), device, dtype)
    image, mask = benchmark_inputs(args.size)
    text_encoder = (
        to_device({"t": clip_text_encoder()}, device, dtype)["t"] if config == "sd+text" and not args.tiny else None
    )
    if config == "asuka":
        pipe = sd_pipelines(components)[0]

        def call():
            generator = torch.Generator().manual_seed(0)
            return pipe(image, mask, num_inference_steps=args.steps, generator=generator, output_type="np")

    else:
        pipe = sd_inpaint_pipeline(components)
        width = SD15_INPAINTING.context_width(components[SD15_INPAINTING.denoiser].config)

        def call():
            embeds = sd_prompt_embeds(text_encoder, width, device, dtype)
            return baseline_call(pipe, image, mask, args.size, args.steps, prompt_embeds=embeds, guidance_scale=1.0)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        peak = torch.cuda.max_memory_allocated()
        return {"loaded_mib": loaded / 2**20, "peak_mib": peak / 2**20}
    loaded = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    call()
    return {"loaded_mib": loaded / 1024, "peak_mib": rss_kib("VmHWM") / 1024}


def measure_memory(config: str, args: argparse.Namespace) -> dict[str, float]:
    """Run `memory_child(config)` in a fresh interpreter, so other configs' weights and allocator state don't count."""
    command = module_command(
        __spec__.name,
        "--memory-child",
        config,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--size",
        str(args.size),
        "--steps",
        "1",
    )  # activations peak within one step
    if args.tiny:
        command.append("--tiny")
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPOSITORY)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {config!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Training step: aligner step vs a bare frozen-UNet step
# ---------------------------------------------------------------------------------------------


def training_runs(components: dict, size: int, batch_size: int, device: str, dtype: torch.dtype) -> dict:
    """Two training steps on the same cached-latents batch; both backpropagate through the same frozen UNet.

    asuka: no-grad MAE prior -> aligner (trainable) -> UNet eps-MSE -> backward -> AdamW on the aligner.
    bare:  a learnable (B, 77, 768) text-conditioning embedding -> UNet eps-MSE -> backward -> AdamW on it.
    So the ratio is ASUKA's own overhead: the MAE prior, the aligner's forward/backward/update, and 256 instead
    of 77 cross-attention tokens.
    """
    names = (SD15_INPAINTING.denoiser, "vae", "mae", "aligner", "scheduler")
    unet, vae, mae, aligner, scheduler = (components[k] for k in names)
    generator = torch.Generator().manual_seed(0)
    image, hole = training_batch(batch_size, size, device, dtype, generator)
    scale = vae.config.scaling_factor
    with torch.no_grad():  # cached latents, identical for both steps
        latents = vae.encode(image * 2 - 1).latent_dist.mean * scale
        masked_latents = vae.encode((image * 2 - 1) * (1 - hole)).latent_dist.mean * scale
    mask_latents = F.interpolate(hole, size=latents.shape[-2:])
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
    model_input = torch.cat([scheduler.add_noise(latents, noise, timesteps), mask_latents, masked_latents], dim=1)

    aligner_optimizer = trained_with_adamw(aligner, lr=1e-5)
    embedding = torch.nn.Parameter(
        torch.randn(batch_size, SD_TEXT_TOKENS, SD15_INPAINTING.context_width(unet.config), device=device, dtype=dtype)
    )
    embedding_optimizer = torch.optim.AdamW([embedding], lr=1e-5)

    def step(condition: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        eps = unet(model_input, timesteps, encoder_hidden_states=condition(), return_dict=False)[0]
        F.mse_loss(eps.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def asuka_condition() -> torch.Tensor:
        with torch.no_grad():
            prior = mae.prior(image, hole)
        return aligner(prior).tokens

    runs = {
        "asuka": (
            lambda: step(asuka_condition, aligner_optimizer),
            {"mae": (mae, "prior"), "aligner_fwd": (aligner, "forward")},
        ),
        "bare": (lambda: step(lambda: embedding, embedding_optimizer), {}),
    }
    return runs


# ---------------------------------------------------------------------------------------------
# ASUKA-FLUX vs FluxFillPipeline (depth-reduced transformer, real widths)
# ---------------------------------------------------------------------------------------------


def flux_inference_runs(components: dict, size: int, steps: int, device: str, dtype: torch.dtype) -> dict:
    """The two calls to compare (closures) with their stage maps."""
    asuka, base = flux_pipelines(components)
    image, mask = benchmark_inputs(size)
    config = components[FLUX_FILL.denoiser].config
    width = FLUX_FILL.context_width(config)
    tokens = FLUX_T5_TOKENS if width == 4096 else components["token_aligner"].config.num_tokens  # T5-XXL's width
    g = torch.Generator().manual_seed(1)
    prompt_embeds = torch.randn(1, tokens, width, generator=g).to(device, dtype)
    pooled = torch.randn(1, config[FLUX_FILL.pooled_width], generator=g).to(device, dtype)

    def run_asuka():
        return asuka(
            image,
            mask,
            num_inference_steps=steps,
            working_resolution=size,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    def run_base():
        return baseline_call(base, image, mask, size, steps, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)

    aligners = {"aligner": "token_aligner", "pooled_aligner": "pooled_aligner"}
    asuka_stages, base_stages = stage_maps(components, FLUX_FILL, aligners)
    return {"asuka-flux": (run_asuka, asuka_stages), "flux-fill": (run_base, base_stages)}


# ---------------------------------------------------------------------------------------------
# FLOP ratios of the timed calls, counted on meta-device copies of the same architectures
# ---------------------------------------------------------------------------------------------


def inference_flop_ratios(kind: str, args: argparse.Namespace) -> dict[str, float]:
    """ASUKA's FLOPs over the baseline's for one whole pipeline call each (benchmarks/flops.py): as timed (the
    baseline given embeddings; ASUKA with its conditioning cache, as it runs by default), ASUKA with the cache
    off, and against the baseline with its text encoders (full size only)."""
    components = meta_sd_components(args.tiny) if kind == "sd" else meta_flux_components(args.tiny, *args.flux_depth)
    totals = {k: sum(v.values()) for k, v in pipeline_flops(kind, components, args.size, args.steps).items()}
    base = "sd" if kind == "sd" else "flux-fill"
    ratios = {"as_timed": totals["asuka_cached"] / totals[base], "uncached": totals["asuka"] / totals[base]}
    if base + "+text" in totals:
        ratios["vs_text"] = totals["asuka_cached"] / totals[base + "+text"]
        ratios["vs_text_uncached"] = totals["asuka"] / totals[base + "+text"]
    return ratios


def training_flop_ratio(args: argparse.Namespace) -> float:
    """FLOPs of the ASUKA training step over the bare step's (forward, backward and optimizer), on meta copies."""
    runs = training_runs(meta_sd_components(args.tiny), args.size, args.train_batch_size, "meta", torch.float32)
    counts = {name: count_flops(fn, grad=True) for name, (fn, _stages) in runs.items()}
    return counts["asuka"] / counts["bare"]


def format_flop_ratios(names: tuple[str, str], ratios: dict[str, float], what: str = "whole call, as timed") -> str:
    a, b = names
    line = f"FLOP ratio {a}/{b} ({what}): **{ratios['as_timed']:.4f}**"
    if "uncached" in ratios:
        line += f" (conditioning cache off: {ratios['uncached']:.4f})"
    if "vs_text" in ratios:
        line += (
            f"\nFLOP ratio {a}/{b} with its text encoder(s): **{ratios['vs_text']:.4f}** (cache off: "
            f"{ratios['vs_text_uncached']:.4f})"
        )
    return line + "\n"


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def compile_components(components: dict) -> None:
    """Opt-in torch.compile of every network's hot entry point (instance attributes; the modules keep their type)."""
    for name, module in components.items():
        if name == "mae":
            module._run = torch.compile(module._run)  # prior() and reconstruct() both go through _run
        elif isinstance(module, torch.nn.Module) and name != "vae":
            module.forward = torch.compile(module.forward)


def format_timing(title: str, medians: dict[str, dict[str, float]], target: float | None) -> str:
    (a_name, a), (b_name, b) = medians.items()
    stages = [k for k in a if k not in ("total", "cpu")] + [k for k in b if k not in a and k not in ("total", "cpu")]
    lines = [f"### {title}", "", f"| stage | {a_name} (s) | {b_name} (s) |", "|---|---:|---:|"]
    for stage in stages:
        lines.append(f"| {stage} | {a.get(stage, 0.0):.3f} | {b.get(stage, 0.0):.3f} |")
    ratio = a["total"] / b["total"]
    verdict = (
        "" if target is None else (" (target <= {:.2f}: {})".format(target, "met" if ratio <= target else "NOT met"))
    )
    lines.append(f"| **total (wall)** | **{a['total']:.3f}** | **{b['total']:.3f}** |")
    if "cpu" in a:
        lines.append(f"| process CPU time | {a['cpu']:.3f} | {b['cpu']:.3f} |")
    lines += ["", f"wall-clock ratio {a_name}/{b_name}: **{ratio:.3f}**{verdict}"]
    if "cpu" in a:
        lines.append(f"CPU-time ratio {a_name}/{b_name}: **{a['cpu'] / b['cpu']:.3f}**")
    return "\n".join(lines) + "\n"


def format_memory(memory: dict[str, dict[str, float]], unit: str, target: float) -> str:
    lines = [
        f"### Peak memory ({unit})",
        "",
        "| config | weights (MiB) | peak (MiB) | peak - weights (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, m in memory.items():
        lines.append(
            f"| {name} | {m['loaded_mib']:.0f} | {m['peak_mib']:.0f} | {m['peak_mib'] - m['loaded_mib']:.0f} |"
        )
    lines.append("")
    for base in [k for k in memory if k != "asuka"]:
        ratio = memory["asuka"]["peak_mib"] / memory[base]["peak_mib"]
        verdict = "met" if ratio <= target else "NOT met"
        lines.append(f"peak ratio asuka/{base}: **{ratio:.3f}** (target <= {target:.2f}: {verdict})")
    return "\n".join(lines) + "\n"


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{hardware}; torch {torch.__version__}; load average (1/5/15 min) {load}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per pipeline, alternated")
    parser.add_argument("--train-batch-size", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="tiny test components (smoke test)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (opt-in)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inference", "memory", "training"])
    parser.add_argument("--flux", action="store_true", help="also ASUKA-FLUX vs FluxFillPipeline")
    parser.add_argument("--flux-depth", type=int, nargs=2, default=(1, 1), metavar=("DOUBLE", "SINGLE"))
    parser.add_argument("--memory-child", choices=["asuka", "sd", "sd+text"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args)))
        return ""

    device, dtype = args.device, DTYPES[args.dtype]
    backbones = []
    if set(args.skip) != {"inference", "memory", "training"}:
        backbones.append("SD-1.5-inpainting")
    if args.flux:
        backbones.append("FLUX.1-Fill")
    kind = (
        "tiny test components" if args.tiny else f"full-size {' and '.join(backbones)} architectures, random weights"
    )
    out = [
        f"## ASUKA overhead: {args.size}x{args.size}, {args.steps} steps, {args.dtype} on {device} ({kind})",
        "",
        f"Machine: {machine_description(device)}",
        "",
    ]
    print("\n".join(out), flush=True)

    def emit(text: str) -> None:
        out.append(text)
        print(text, flush=True)

    if not {"inference", "training"} <= set(args.skip):
        components = to_device(build_sd_components(args.tiny), device, dtype)
        if args.compile:
            compile_components(components)
        if "inference" not in args.skip:
            medians = alternate(
                sd_inference_runs(components, args.size, args.steps, device, dtype), args.repeats, device
            )
            emit(format_timing(f"Inference, median of {args.repeats} alternated runs", medians, 1.05))
            emit(format_flop_ratios(("asuka", "sd"), inference_flop_ratios("sd", args)))
        if "training" not in args.skip:
            medians = alternate(
                training_runs(components, args.size, args.train_batch_size, device, dtype), args.repeats, device
            )
            emit(
                format_timing(
                    f"Training step (batch {args.train_batch_size}), median of {args.repeats}", medians, 1.10
                )
            )
            emit(format_flop_ratios(("asuka", "bare"), {"as_timed": training_flop_ratio(args)}, "one step"))
        del components
    if "memory" not in args.skip:
        memory = {config: measure_memory(config, args) for config in ("asuka", "sd", "sd+text")}
        emit(
            format_memory(
                memory, "CUDA max_memory_allocated" if device.startswith("cuda") else "CPU peak RSS, VmHWM", 1.10
            )
        )
    if args.flux:
        components = to_device(build_flux_components(args.tiny, *args.flux_depth), device, dtype)
        if args.compile:
            compile_components(components)
        medians = alternate(
            flux_inference_runs(components, args.size, args.steps, device, dtype), args.repeats, device
        )
        depth = (
            "tiny" if args.tiny else f"{args.flux_depth[0]} double + {args.flux_depth[1]} single blocks, real widths"
        )
        emit(format_timing(f"ASUKA-FLUX vs FluxFillPipeline ({depth}), median of {args.repeats}", medians, 1.05))
        emit(format_flop_ratios(("asuka-flux", "flux-fill"), inference_flop_ratios("flux", args)))
    return "\n".join(out)


if __name__ == "__main__":
    main()
