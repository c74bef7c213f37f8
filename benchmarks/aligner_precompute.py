"""What precomputing the aligner's inputs saves: FLOPs per sample of an aligner training step that encodes on the fly
and of one that reads `training/prepare_aligner_inputs.py`'s shards, the one-off cost of preparing a sample, and the
bytes a stored sample takes; full-size models on the meta device (no weights, no memory), in seconds to minutes.

    python -m benchmarks.aligner_precompute                   # SD-1.5-inpainting and FLUX.1-Fill (full depth) at 512
    python -m benchmarks.aligner_precompute --backbones sd --size 256 --json out.json

The steps are the training script's own functions: `asuka_training.aligner_batch` from an `EncodedInputs` source
(the two VAE encodes and the MAE prior of the batch) or a `StoredInputs` one (the stored posteriors and priors), then
`asuka_training.aligner_loss` (the objective's noise, the aligner(s), the frozen denoiser) backward to the
aligner(s), and AdamW. FLUX's masked image is counted through the VAE's encoder (the release's own masked-image
encoder has the same architecture). Preparing a sample is `vae_posteriors` and `mae_priors` (two VAE encodes, two
MAE priors).
"""

import argparse
import json
from collections.abc import Callable

import torch

from asuka.pipelines.backbones import FLUX_FILL, SD15_INPAINTING
from asuka_training import AlignerPair, aligner_loss, precomputed
from asuka_training.aligner_inputs import (
    EncodedInputs,
    StoredInputs,
    aligner_batch,
    mae_priors,
    vae_posteriors,
)

from .architectures import build_flux_components, build_sd_components
from .bench_pipelines import training_batch
from .flops import count_flops, write_json


SOURCES = ("encoded", "stored")
BACKBONES = {"sd": SD15_INPAINTING, "flux": FLUX_FILL}


def meta_components(backbone: str, tiny: bool = False) -> dict:
    """The backbone's frozen parts, MAE and aligner(s) on the meta device (full size: FLUX at full depth)."""
    with torch.device("meta"):
        if backbone == "sd":
            return build_sd_components(tiny)
        return build_flux_components(tiny, num_layers=19, num_single_layers=38)


def trained_aligner(components: dict, spec) -> torch.nn.Module:
    """The model the aligner training trains: the aligner (SD) or the token and pooled aligners (FLUX)."""
    if spec.pooled_width is None:
        return components["aligner"]
    return AlignerPair(components["token_aligner"], components["pooled_aligner"])


def stored_batch(components: dict, pixels: torch.Tensor, hole: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch a `StoredInputs` source reads: what prepare stores for `pixels` and `hole` (mask unpacked)."""
    with torch.no_grad():
        return {
            **vae_posteriors(components["vae"], pixels, hole),
            **mae_priors(components["mae"], pixels, hole),
            "mask": hole,
        }


def aligner_step(
    components: dict,
    spec,
    source: str,
    size: int,
    batch: int,
    device: str = "meta",
    dtype: torch.dtype = torch.float32,
) -> Callable[[], None]:
    """One aligner training step on the backbone of `spec`, `batch` samples at `size`, its inputs from `source`
    ("encoded" or "stored"), the frozen models in `dtype`."""
    vae, denoiser = components["vae"], components[spec.denoiser]
    scheduler = spec.objective.training_scheduler(components["scheduler"].config)
    pixels, hole = training_batch(batch, size, device, dtype, torch.Generator().manual_seed(0))
    if source == "encoded":
        inputs_source = EncodedInputs(vae, components["mae"], device, dtype)
        data = {"pixel_values": pixels, "mask": hole}
    else:
        inputs_source, data = StoredInputs(device, dtype), stored_batch(components, pixels, hole)
    aligner = trained_aligner(components, spec).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(aligner.parameters(), lr=1e-4)

    def step():
        inputs = aligner_batch(inputs_source, data, vae.config, 0.5)
        loss = aligner_loss(
            spec, denoiser, scheduler, aligner, inputs.prior, inputs.latents, inputs.masked_latents, inputs.mask
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def prepare_flops(components: dict, size: int, batch: int = 2, device: str = "meta") -> int:
    """FLOPs of preparing `batch` samples: both VAE posteriors and both MAE priors."""
    pixels, hole = training_batch(batch, size, device, torch.float32, torch.Generator().manual_seed(0))
    return count_flops(lambda: stored_batch(components, pixels, hole))


def stored_bytes_per_sample(
    components: dict, size: int, dtype: torch.dtype = torch.float32, device: str = "meta"
) -> int:
    """Bytes of one stored sample in a shard (without the shard's header): the posteriors and priors in `dtype`,
    the bit-packed mask, the int64 `precomputed.COUNT_FIELDS`."""
    pixels, hole = training_batch(1, size, device, torch.float32, torch.Generator().manual_seed(0))
    fields = stored_batch(components, pixels, hole)
    tensors = sum(fields[name].numel() for name in fields if name != "mask") * dtype.itemsize
    return tensors + size * -(-size // 8) + len(precomputed.COUNT_FIELDS) * torch.int64.itemsize


def precompute_rows(components: dict, spec, size: int, batch: int = 2) -> dict:
    """FLOPs per sample of the step from each source and of preparing a sample; stored bytes per sample."""
    per_sample = {
        source: count_flops(aligner_step(components, spec, source, size, batch), grad=True) / batch
        for source in SOURCES
    }
    return {
        "backbone": spec.name,
        "size": size,
        "tflop_per_sample": {
            "step_encoded": per_sample["encoded"] / 1e12,
            "step_stored": per_sample["stored"] / 1e12,
            "prepare": prepare_flops(components, size, batch) / batch / 1e12,
        },
        "stored_bytes_per_sample": {
            "float32": stored_bytes_per_sample(components, size),
            "bfloat16": stored_bytes_per_sample(components, size, torch.bfloat16),
        },
    }


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| backbone | size | step, encoding on the fly (TFLOP/sample) | step from shards | saved | prepare, once "
        "(TFLOP/sample) | stored bytes/sample (fp32; bf16) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        flop, stored = row["tflop_per_sample"], row["stored_bytes_per_sample"]
        saved = 1 - flop["step_stored"] / flop["step_encoded"]
        lines.append(
            f"| {row['backbone']} | {row['size']} | {flop['step_encoded']:.2f} | {flop['step_stored']:.2f} | "
            f"{100 * saved:.0f} % | {flop['prepare']:.2f} | {stored['float32']:,}; {stored['bfloat16']:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", choices=sorted(BACKBONES), default=["sd", "flux"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = [precompute_rows(meta_components(name), BACKBONES[name], args.size) for name in args.backbones]
    print(json.dumps(rows))
    print(format_rows(rows))
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
