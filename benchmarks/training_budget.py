"""What ASUKA's training schedules cost: FLOPs per sample of the training scripts' steps, memory, CPU measurements.

    python -m benchmarks.training_budget                # FLOPs per sample (meta device, seconds) + the budget table
    python -m benchmarks.training_budget --backbone flux   # the same for FLUX.1-Fill, + memory per GPU (meta device)
    python -m benchmarks.training_budget --measure-cpu  # also CPU step times and peak RSS at 512x512 (~1 h on 1 core)
    python -m benchmarks.training_budget --measure-one decoder 1 0 --repeats 0   # one of them

The steps mirror the scripts: `train_aligner.py` (two VAE encodes, the frozen MAE prior, the aligner, the frozen
UNet forward and backward to the aligner, AdamW) and `train_decoder.py` (`decoder_training_run`: VAE
encode, the prior and aligner for the UNet's one-step x0 augmentation of half the batch, AsukaDecoder forward and
backward, AdamW). FLOPs are counted with benchmarks/flops.py's counter on meta tensors; GPU-hours follow from an
ASSUMED sustained throughput (`--tflops`), since no GPU was measured; `python -m benchmarks.gpu_suite` measures the
real H200 step times. `--measure-cpu` runs each configuration in a fresh subprocess (fp32, full size) and reports
its median step time, the achieved CPU FLOP/s, and the peak RSS above the built weights (VmHWM), whose growth from
batch 1 to 2 is the activation memory per sample; with `--gradient_checkpointing` as the scripts enable it.

`--backbone flux` counts the same two steps on the full-size FLUX.1-Fill-dev configs (`asuka.testing.flux`: the
12 B transformer, the 16-channel VAE, ASUKA-FLUX's MAE, token and pooled aligners and decoder): the aligner step at
512 (the release's aligner resolution), the decoder step at 256 (its decoder's). Its memory per GPU is computed on
the meta device too (`meta_memory.py`): the weights' bytes from the parameter counts, the trained component's
gradients and AdamW state (4 and 8 bytes per fp32 parameter), and the peak of the tensors one step creates (frozen
models in bf16, the trained ones in fp32, flash attention), with and without gradient checkpointing; alone on a GPU
and with the frozen transformer sharded over 8 GPUs by `training/configs/fsdp_flux.yaml`.
"""

import argparse
import functools
import json
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING, BackboneSpec
from asuka_training import aligned_conditioning, masked_patch_l2, one_step_x0

from . import REPOSITORY, module_command
from .aligner_precompute import aligner_step, trained_aligner
from .architectures import build_flux_components, build_sd_components
from .bench_pipelines import rss_kib, trained_with_adamw, training_batch
from .flops import count_flops, meta_sd_components, write_json
from .meta_memory import peak_bytes


# The schedules (docs/training.md): samples = steps x global batch.
SCHEDULES = {
    "aligner": {"steps": 20_000, "batch": 8, "source": "training/configs/README.md and train_aligner.py's docstring"},
    "decoder": {"steps": 50_000, "batch": 40, "source": "the paper (50K steps at batch 40)"},
}
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM spec sheet, dense (no sparsity)


MEASURED = (
    ("aligner", 1, False),
    ("aligner", 2, False),
    ("aligner", 2, True),
    ("decoder", 1, False),
    ("decoder", 1, True),
)


# ASUKA-FLUX's authors publish no schedule: the SD schedules above, at the resolutions the release trained at (its
# README: the aligner at 512, the decoder at 256).
FLUX_SCHEDULES = {
    "aligner": {"steps": 20_000, "batch": 8, "size": 512, "source": "the SD schedule, at the release's 512"},
    "decoder": {"steps": 50_000, "batch": 40, "size": 256, "source": "the SD schedule, at the release's 256"},
}
FSDP_GPUS = 8  # training/configs/fsdp_flux.yaml's num_processes
# what each FLUX step trains (fp32, AdamW); every other component of the step is frozen (bf16)
FLUX_TRAINED = {"aligner": ("token_aligner", "pooled_aligner"), "decoder": ("decoder",)}
FLUX_FROZEN = {
    "aligner": (FLUX_FILL.denoiser, "vae", "mae"),
    "decoder": (FLUX_FILL.denoiser, "vae", "mae", *FLUX_TRAINED["aligner"]),
}


def aligner_training_run(
    components: dict, size: int, batch: int, device: str, dtype: torch.dtype, backbone: BackboneSpec = SD15_INPAINTING
) -> Callable:
    """One step of train_aligner.py on `backbone`, with the script's own functions (`aligner_precompute.aligner_step`:
    `asuka_training.aligner_batch` encodes the image and the masked image and runs the MAE prior,
    `asuka_training.aligner_loss` the aligner(s), the frozen denoiser and the backbone's objective), backward to the
    aligner(s), AdamW; `dtype` is the frozen models' (the aligners stay in theirs)."""
    return aligner_step(components, backbone, "encoded", size, batch, device, dtype)


def decoder_training_run(
    components: dict, size: int, batch: int, device: str, dtype: torch.dtype, backbone: BackboneSpec = SD15_INPAINTING
) -> Callable:
    """One step of train_decoder.py on `backbone` (L1 only, its default): encode the image (the VAE's shift and
    scale), replace half the latents by the frozen denoiser's one-step x0 estimate (`asuka_training.one_step_x0` at
    timesteps in [700, 999], as the backbone's objective noises and reads its prediction, conditioned through
    `asuka_training.aligned_conditioning` on the aligned prior of the whole image, the clean latent as the
    masked-image latent, a zero mask), the AsukaDecoder forward and backward, AdamW on the decoder; `dtype` is the
    frozen models' (the decoder stays in its own). The decoder gets the image-wide hole box: the script's
    random-stroke masks span the image over a batch, and it is the box the FLOP count on meta tensors sees."""
    vae, decoder, denoiser = components["vae"], components["decoder"], components[backbone.denoiser]
    scheduler = backbone.objective.training_scheduler(components["scheduler"].config)
    aligner = trained_aligner(components, backbone)
    generator = torch.Generator().manual_seed(0)
    pixels, hole = training_batch(batch, size, device, dtype, generator)
    half = max(batch // 2, 1)
    timesteps = torch.randint(700, 1000, (half,), generator=generator).to(device)
    shift, scale = getattr(vae.config, "shift_factor", None) or 0.0, vae.config.scaling_factor
    optimizer = trained_with_adamw(decoder, lr=8e-5)

    def step():
        with torch.no_grad():
            latents = (vae.encode(pixels * 2 - 1).latent_dist.sample() - shift) * scale
            prior = components["mae"].prior(pixels, torch.zeros_like(hole))
            conditioning = aligned_conditioning(backbone, aligner, prior, dtype)
            clean = latents[:half]
            chosen = {name: value[:half] for name, value in conditioning.items()}
            x0 = one_step_x0(denoiser, scheduler, clean, torch.randn_like(clean), timesteps, chosen, backbone)
            latents = torch.cat([x0.to(dtype), latents[half:]]) / scale + shift
        target, mask = (pixels * 2 - 1).to(decoder.dtype), hole.to(decoder.dtype)
        output = decoder(latents.to(decoder.dtype), target, mask, hole_box=(0, 0, size, size), return_dict=False)[0]
        F.l1_loss(output.float(), target.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


flux_aligner_training_run = functools.partial(aligner_training_run, backbone=FLUX_FILL)
flux_decoder_training_run = functools.partial(decoder_training_run, backbone=FLUX_FILL)


def mae_training_run(components: dict, size: int, batch: int, device: str, dtype: torch.dtype) -> Callable:
    """One step of train_mae.py (the MAE is backbone-independent): the MAE's reconstruction of the masked image, the
    script's `masked_patch_l2`, backward, AdamW on every MAE parameter."""
    mae = components["mae"]
    pixels, hole = training_batch(batch, size, device, dtype, torch.Generator().manual_seed(0))
    optimizer = trained_with_adamw(mae, lr=1e-4)

    def step():
        _, reconstruction = mae(pixels, hole, return_dict=False)
        masked_patch_l2(reconstruction, pixels, hole, mae.config.patch_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# the MAE's budget, on request (`--schedule mae=...`); the MAE is the same for every backbone
RUNS = {"aligner": aligner_training_run, "decoder": decoder_training_run, "mae": mae_training_run}
FLUX_RUNS = {"aligner": flux_aligner_training_run, "decoder": flux_decoder_training_run, "mae": mae_training_run}
BACKBONES = {"sd": (RUNS, SCHEDULES), "flux": (FLUX_RUNS, FLUX_SCHEDULES)}


def meta_components(backbone: str) -> dict:
    """The full-size components of `backbone` on the meta device (FLUX: its full 19 + 38 blocks)."""
    if backbone == "sd":
        return meta_sd_components(tiny=False)
    with torch.device("meta"):
        return build_flux_components(False, 19, 38)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def flux_memory(name: str, size: int, batch: int, checkpointing: bool) -> dict:
    """Memory of one FLUX step per GPU, in bytes, as train_aligner.py / train_decoder.py hold it under
    `--mixed_precision bf16`: the frozen models' bf16 weights, the trained ones' fp32 weights and AdamW state, and
    the step's peak of the tensors it creates (activations, the fp32 gradients, recomputation, temporaries),
    counted on meta; with `checkpointing`, what the script's `--gradient_checkpointing` enables (the transformer's
    blocks for the aligner step, the decoder's for the decoder step). `fsdp_8` shards the frozen transformer and the
    trained state over 8 GPUs (`fsdp_flux.yaml`): a GPU holds 1/8 of them plus the gathered FSDP units (the largest
    block, twice: the one computed and the one prefetched, and the transformer's root parameters)."""
    components = meta_components("flux")
    for key in FLUX_FROZEN[name]:
        components[key].to(torch.bfloat16)
    if checkpointing:
        components[FLUX_FILL.denoiser if name == "aligner" else "decoder"].enable_gradient_checkpointing()
    step = FLUX_RUNS[name](components, size, batch, "meta", torch.bfloat16)
    step()  # AdamW's state exists from the first step on; the peak is a later step's
    peak = peak_bytes(step)
    frozen = {key: module_bytes(components[key]) for key in FLUX_FROZEN[name]}
    trained_parameters = sum(p.numel() for key in FLUX_TRAINED[name] for p in components[key].parameters())
    trained_state = trained_parameters * (4 + 8)  # fp32 weights, AdamW's two fp32 moments
    transformer = components[FLUX_FILL.denoiser]
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    largest_block = max(module_bytes(block) for block in blocks)
    root = module_bytes(transformer) - sum(module_bytes(block) for block in blocks)
    others = sum(frozen.values()) - frozen[FLUX_FILL.denoiser]
    return {
        "step": name,
        "size": size,
        "batch_per_gpu": batch,
        "gradient_checkpointing": checkpointing,
        "frozen_weights": frozen,
        "trained_parameters": trained_parameters,
        "trained_weights_and_adamw": trained_state,
        "step_peak": peak,
        "one_gpu": sum(frozen.values()) + trained_state + peak,
        "fsdp_8": frozen[FLUX_FILL.denoiser] // FSDP_GPUS
        + 2 * largest_block
        + root
        + others
        + trained_state // FSDP_GPUS
        + peak,
    }


def memory_table(rows: list[dict]) -> str:
    gib = 2**30
    lines = [
        "| step | size | batch per GPU | gradient checkpointing | frozen weights (bf16) | trained weights + AdamW |"
        " step peak | one GPU | FSDP over 8 |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['size']} | {r['batch_per_gpu']} | {'yes' if r['gradient_checkpointing'] else 'no'} | "
            f"{sum(r['frozen_weights'].values()) / gib:.2f} GiB | {r['trained_weights_and_adamw'] / gib:.2f} GiB | "
            f"{r['step_peak'] / gib:.2f} GiB | {r['one_gpu'] / gib:.2f} GiB | {r['fsdp_8'] / gib:.2f} GiB |"
        )
    return "\n".join(lines) + "\n"


def flops_per_sample(
    name: str, size: int = 512, batch: int = 2, backbone: str = "sd", components: dict | None = None
) -> float:
    """FLOPs of one training step per sample (forward, backward, optimizer), counted on meta tensors (`components`:
    the full-size meta ones of `backbone` by default)."""
    runs = BACKBONES[backbone][0]
    step = runs[name](components or meta_components(backbone), size, batch, "meta", torch.float32)
    return count_flops(step, grad=True) / batch


def measure_child(name: str, size: int, batch: int, checkpointing: bool, repeats: int) -> dict:
    """In a fresh process: build, then `1 + repeats` steps; the RSS high-water mark above the built weights during
    the first, and the median wall-clock and process CPU seconds of the timed steps (the first one when `repeats`
    is 0). On a shared machine the CPU seconds are the steadier figure."""
    components = build_sd_components(tiny=False)
    if checkpointing:
        components[SD15_INPAINTING.denoiser].enable_gradient_checkpointing()
        components["decoder"].enable_gradient_checkpointing()
    step = RUNS[name](components, size, batch, "cpu", torch.float32)
    loaded = rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    samples = []
    for _ in range(1 + repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        samples.append((time.perf_counter() - start, time.process_time() - cpu_start))
        if len(samples) == 1:
            peak = rss_kib("VmHWM")
    timed = samples[1:] or samples
    return {
        "step_s": statistics.median(s[0] for s in timed),
        "step_cpu_s": statistics.median(s[1] for s in timed),
        "threads": torch.get_num_threads(),
        "peak_above_weights_mib": (peak - loaded) / 1024,
    }


def measure_cpu(size: int, repeats: int) -> list[dict]:
    rows = []
    # the aligner at batch 1 and 2 (activation memory per sample = the growth) and 2 with checkpointing; the decoder
    # step takes ~3x as long, so batch 1 with and without checkpointing (its peak is then an upper bound per sample)
    for name, batch, checkpointing in MEASURED:
        command = module_command(__spec__.name, "--measure-one", name, str(batch), str(int(checkpointing)))
        command += ["--size", str(size), "--repeats", str(repeats)]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPOSITORY).stdout
        row = {"step": name, "batch": batch, "gradient_checkpointing": checkpointing, "size": size}
        row.update(json.loads(out.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def budget_table(per_sample: dict[str, float], tflops: float, schedules: dict = SCHEDULES) -> str:
    """The GPU-hours of `schedules` ({stage: {"steps", "batch", ...}}) at `tflops`, from the FLOPs per sample."""
    lines = [
        f"Assumed sustained throughput: {tflops:.0f} TFLOP/s per H200 ({100 * tflops / H200_BF16_DENSE_TFLOPS:.0f} % "
        f"of the {H200_BF16_DENSE_TFLOPS:.0f} TFLOP/s dense bf16 peak).",
        "",
        "| stage | schedule | TFLOP per sample | total PFLOP | H200 GPU-hours | wall-clock on 8 x H200 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, schedule in schedules.items():
        samples = schedule["steps"] * schedule["batch"]
        total = per_sample[name] * samples
        hours = total / (tflops * 1e12) / 3600
        at = f" at {schedule['size']}" if "size" in schedule else ""
        lines.append(
            f"| {name} | {schedule['steps']:,} steps x batch {schedule['batch']}{at} | "
            f"{per_sample[name] / 1e12:.2f} | {total / 1e15:,.0f} | {hours:.1f} | {hours / 8:.1f} h |"
        )
    return "\n".join(lines) + "\n"


def parse_schedule(text: str) -> tuple[str, dict]:
    """`STAGE=STEPS,BATCH,SIZE` (e.g. `aligner=20000,8,512`) -> (stage, schedule)."""
    stage, _, values = text.partition("=")
    numbers = values.split(",")
    if stage not in RUNS or len(numbers) != 3 or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise argparse.ArgumentTypeError(
            f"--schedule takes STAGE=STEPS,BATCH,SIZE with STAGE one of {sorted(RUNS)} and positive integers, "
            f"got {text!r}."
        )
    steps, batch, size = (int(n) for n in numbers)
    return stage, {"steps": steps, "batch": batch, "size": size, "source": "--schedule"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="sd")
    parser.add_argument("--tflops", type=float, default=300.0, help="assumed sustained TFLOP/s of one H200 (bf16)")
    parser.add_argument("--size", type=int, default=None, help="every stage at this size (default: the schedules')")
    parser.add_argument(
        "--schedule",
        type=parse_schedule,
        action="append",
        default=[],
        metavar="STAGE=STEPS,BATCH,SIZE",
        help="replace a stage's schedule (global batch), e.g. aligner=20000,8,512; repeatable",
    )
    parser.add_argument("--no-memory", action="store_true", help="--backbone flux: skip the memory table")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure-cpu", action="store_true")
    parser.add_argument("--json", default=None, help="also write everything to this JSON file")
    parser.add_argument(
        "--measure-one",
        nargs=3,
        metavar=("STEP", "BATCH", "CHECKPOINTING"),
        help="measure one configuration on the CPU in this process, e.g. `decoder 1 0` (what --measure-cpu runs)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.measure_one:
        name, batch, checkpointing = args.measure_one[0], int(args.measure_one[1]), bool(int(args.measure_one[2]))
        print(json.dumps(measure_child(name, args.size or 512, batch, checkpointing, args.repeats)))
        return {}
    runs, defaults = BACKBONES[args.backbone]
    schedules = {name: {"size": 512, **schedule} for name, schedule in defaults.items()}
    for name, schedule in schedules.items():
        schedule["size"] = args.size or schedule["size"]
    schedules.update(args.schedule)
    components = meta_components(args.backbone)
    per_sample = {
        name: flops_per_sample(name, s["size"], 2, args.backbone, components) for name, s in schedules.items()
    }
    result = {
        "backbone": args.backbone,
        "schedules": schedules,
        "tflop_per_sample": {k: v / 1e12 for k, v in per_sample.items()},
        "tflops_assumed": args.tflops,
    }
    print(json.dumps({k: result[k] for k in ("backbone", "tflop_per_sample")}))
    print(budget_table(per_sample, args.tflops, schedules))
    if args.backbone == "flux" and not args.no_memory:
        batch = {name: max(s["batch"] // FSDP_GPUS, 1) for name, s in schedules.items()}
        rows = [
            flux_memory(name, s["size"], batch[name], checkpointing)
            for name, s in schedules.items()
            if name in FLUX_TRAINED  # the MAE's memory is not the backbone's question
            for checkpointing in (False, True)
        ]
        result["memory"] = rows
        print(memory_table(rows))
    if args.measure_cpu:
        rows = measure_cpu(args.size or 512, args.repeats)
        for row in rows:
            row["cpu_tflops"] = per_sample[row["step"]] * row["batch"] / row["step_cpu_s"] / 1e12
        result["cpu"] = rows
        print(json.dumps(rows, indent=1))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
