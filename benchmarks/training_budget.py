"""What ASUKA-SD's training schedules cost: FLOPs per sample of the training scripts' steps, and CPU measurements.

    python benchmarks/training_budget.py                # FLOPs per sample (meta device, seconds) + the budget table
    python benchmarks/training_budget.py --measure-cpu  # also CPU step times and peak RSS at 512x512 (~1 h on 1 core)
    python benchmarks/training_budget.py --measure-one decoder 1 0 --repeats 0   # one of them

The steps mirror the scripts: `train_aligner.py` (two VAE encodes, the frozen MAE prior, the aligner, the frozen
UNet forward and backward to the aligner, AdamW) and `train_decoder.py` (`bench_pipelines.decoder_training_run`: VAE
encode, the prior and aligner for the UNet's one-step x0 augmentation of half the batch, AsukaDecoder forward and
backward, AdamW). FLOPs are counted with benchmarks/flops.py's counter on meta tensors; GPU-hours follow from an
ASSUMED sustained throughput (`--tflops`), since no GPU was measured; `python benchmarks/gpu_suite.py` measures the
real H200 step times. `--measure-cpu` runs each configuration in a fresh subprocess (fp32, full size) and reports
its median step time, the achieved CPU FLOP/s, and the peak RSS above the built weights (VmHWM), whose growth from
batch 1 to 2 is the activation memory per sample; with `--gradient_checkpointing` as the scripts enable it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from architectures import build_sd_components  # noqa: E402
from bench_pipelines import aligner_training_run, decoder_training_run, rss_kib  # noqa: E402
from flops import count_flops, meta_sd_components, write_json  # noqa: E402

from asuka.pipelines.backbones import SD15_INPAINTING  # noqa: E402


# The schedules (docs/training.md): samples = steps x global batch.
SCHEDULES = {
    "aligner": {"steps": 20_000, "batch": 8, "source": "training/configs/README.md and train_aligner.py's docstring"},
    "decoder": {"steps": 50_000, "batch": 40, "source": "the paper (50K steps at batch 40)"},
}
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM spec sheet, dense (no sparsity)


RUNS = {"aligner": aligner_training_run, "decoder": decoder_training_run}
MEASURED = (
    ("aligner", 1, False),
    ("aligner", 2, False),
    ("aligner", 2, True),
    ("decoder", 1, False),
    ("decoder", 1, True),
)


def flops_per_sample(name: str, size: int = 512, batch: int = 2) -> float:
    """FLOPs of one training step per sample (forward, backward, optimizer), counted on meta tensors."""
    step = RUNS[name](meta_sd_components(tiny=False), size, batch, "meta", torch.float32)
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
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--measure-one",
            name,
            str(batch),
            str(int(checkpointing)),
        ]
        command += ["--size", str(size), "--repeats", str(repeats)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = {"step": name, "batch": batch, "gradient_checkpointing": checkpointing, "size": size}
        row.update(json.loads(out.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def budget_table(per_sample: dict[str, float], tflops: float) -> str:
    lines = [
        f"Assumed sustained throughput: {tflops:.0f} TFLOP/s per H200 ({100 * tflops / H200_BF16_DENSE_TFLOPS:.0f} % "
        f"of the {H200_BF16_DENSE_TFLOPS:.0f} TFLOP/s dense bf16 peak).",
        "",
        "| stage | schedule | TFLOP per sample | total PFLOP | H200 GPU-hours | wall-clock on 8 x H200 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, schedule in SCHEDULES.items():
        samples = schedule["steps"] * schedule["batch"]
        total = per_sample[name] * samples
        hours = total / (tflops * 1e12) / 3600
        lines.append(
            f"| {name} | {schedule['steps']:,} steps x batch {schedule['batch']} | {per_sample[name] / 1e12:.2f} | "
            f"{total / 1e15:,.0f} | {hours:.1f} | {hours / 8:.1f} h |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tflops", type=float, default=300.0, help="assumed sustained TFLOP/s of one H200 (bf16)")
    parser.add_argument("--size", type=int, default=512)
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
        print(json.dumps(measure_child(name, args.size, batch, checkpointing, args.repeats)))
        return {}
    per_sample = {name: flops_per_sample(name, args.size) for name in RUNS}
    result = {"size": args.size, "tflop_per_sample": {k: v / 1e12 for k, v in per_sample.items()}}
    print(json.dumps(result))
    print(budget_table(per_sample, args.tflops))
    if args.measure_cpu:
        rows = measure_cpu(args.size, args.repeats)
        for row in rows:
            row["cpu_tflops"] = per_sample[row["step"]] * row["batch"] / row["step_cpu_s"] / 1e12
        result["cpu"] = rows
        print(json.dumps(rows, indent=1))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
