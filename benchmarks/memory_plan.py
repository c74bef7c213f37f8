"""The GPU memory plan of ASUKA-FLUX and of FluxFill with its text encoders, per weight format and offloading.

    python -m benchmarks.memory_plan                  # the table (512 and 1024 pixels)
    python -m benchmarks.memory_plan --json plan.json # and the figures as JSON
    python -m benchmarks.memory_plan --aligner-error  # also the token relative error of an int8 token aligner

For each configuration and size it gives the weights resident on the GPU at the peak, the activation peak, their
sum, and the cards (8 / 12 / 16 / 24 / 48 / 80 GB) it fits with 1 GB of headroom. A call is a sequence of phases
(one component's call each: MAE, aligners, VAE encode, one transformer step, decode; FluxFill's T5 and CLIP instead
of the MAE and aligners); the peak is the largest sum over the phases of what is resident then and that phase's
activations.

**Weights** are exact: every parameter of the real architectures (the public configs in `architectures.py`) counted
on the meta device, times the bytes per parameter of its format. The format applies to the transformer; the other
components stay bf16. bf16: 2 bytes. fp8 (diffusers' layerwise casting, fp8 storage, bf16 compute): read from the
meta model after `enable_layerwise_casting` (it keeps norms, embeddings and `proj_in`/`proj_out` in bf16). int8
(torchao int8 weight-only): each Linear weight 1 byte, plus a float32 scale and an int8 zero point per output row;
the rest bf16. nf4 (bitsandbytes, block 64, no double quantization): a Linear weight 0.5 byte plus a float32 absmax
per 64; the rest bf16. GGUF Q8_0 (34 bytes per 32 weights) and Q4_K (144 per 256): each Linear weight whose input
width fills whole blocks; the rest bf16. Buffers (the MAE's sin-cos tables, 0.3 MB) are left out.

What is resident: without offloading, every component; with model offloading (`enable_model_cpu_offload`), the
running component only (accelerate offloads the previous one when the next starts); with group offloading
(`enable_group_offload`, block level, one block per group, no streams), the running component's top-level group and
its largest block; a model without a top-level `ModuleList` (the VAE, the decoder, T5 and CLIP, whose blocks sit
deeper) is counted whole, an upper bound.

**Activations** are measured, not estimated: each phase runs on the meta device at full size and full depth, in
bf16, without autograd, under `meta_memory.py`'s counter: it adds up the bytes of every storage alive after each op
(a storage is freed when Python drops its last tensor; views and in-place results share their input's) and keeps
the largest total, inputs included. Attention counts as a fused kernel (FlashAttention / SDPA on a GPU): its output
and a float32 log-sum-exp per query row, not the score matrix. Not counted: the CUDA allocator's rounding and
fragmentation, kernel workspaces, and the CUDA context (the 1 GB headroom is for those). The full-size GPU suite
(`benchmarks/gpu_suite.py`) measures the same rows with `torch.cuda.max_memory_allocated`.
"""

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from asuka.methods.memory import CARDS_GB, HEADROOM_GB
from asuka.pipelines.backbones import FLUX_FILL

from .architectures import build_flux_components, flux_text_encoders
from .meta_memory import peak_bytes


GB = 1e9
SIZES = (512, 1024)
# GGUF block sizes and bytes per block.
GGUF_BLOCKS = {"gguf-q8_0": (32, 34), "gguf-q4_k": (256, 144)}
NF4_BLOCK = 64
ASUKA_PARTS = ("mae", "token_aligner", "pooled_aligner", "decoder")
# The plan's rows: (transformer weight format, offloading).
WEIGHT_FORMATS = ("bf16", "fp8", "int8", "nf4", "gguf-q8_0", "gguf-q4_k")
ROWS = (
    *((weights, offload) for weights in WEIGHT_FORMATS for offload in ("none", "model")),
    ("bf16", "group"),
    ("bf16", "sequential"),
)

# ------------------------------------------------------------------------------------------ weights


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def weight_bytes(model: torch.nn.Module, weight_format: str = "bf16") -> int:
    """The bytes of `model`'s parameters in `weight_format` (see the module docstring)."""
    total = parameter_count(model) * 2
    if weight_format == "bf16":
        return total
    if weight_format == "fp8":
        cast = copy.deepcopy(model).to(torch.bfloat16)
        cast.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        return sum(p.numel() * p.element_size() for p in cast.parameters())
    for layer in linear_layers(model):
        weight = layer.weight.numel()
        out_features, in_features = layer.weight.shape
        if weight_format == "int8":
            quantized = weight + out_features * (4 + 1)
        elif weight_format == "nf4":
            quantized = weight // 2 + (weight // NF4_BLOCK) * 4
        elif weight_format in GGUF_BLOCKS:
            block, block_bytes = GGUF_BLOCKS[weight_format]
            if in_features % block:
                continue
            quantized = weight // block * block_bytes
        else:
            raise ValueError(f"Unknown weight format {weight_format!r}.")
        total += quantized - weight * 2
    return total


def group_offload_resident(model: torch.nn.Module) -> int:
    """bf16 bytes block-level group offloading keeps while `model` runs: the top-level group (everything outside its
    `ModuleList`s) and the largest list item."""
    blocks = [item for child in model.children() if isinstance(child, torch.nn.ModuleList) for item in child]
    if not blocks:
        return weight_bytes(model)
    in_blocks = sum(parameter_count(block) for block in blocks)
    return (parameter_count(model) - in_blocks) * 2 + max(weight_bytes(block) for block in blocks)


def meta_models() -> dict[str, torch.nn.Module]:
    """Every model of both pipelines at full size, on the meta device, in bf16: ASUKA-FLUX's (transformer, VAE, MAE,
    both aligners, decoder) and FluxFill's text encoders (`t5`, `clip`)."""
    with torch.device("meta"):
        components = build_flux_components(tiny=False, num_layers=19, num_single_layers=38)
        t5, clip = flux_text_encoders()
    models = {name: module for name, module in components.items() if isinstance(module, torch.nn.Module)}
    models.update(t5=t5, clip=clip)
    return {name: model.to(torch.bfloat16).eval() for name, model in models.items()}


def weight_table(models: dict[str, torch.nn.Module]) -> dict:
    """Parameters and bf16 bytes per component, and the two pipelines' totals."""
    parameters = {name: parameter_count(model) for name, model in models.items()}
    asuka = ["transformer", "vae", *ASUKA_PARTS]
    flux_fill = ["transformer", "vae", "t5", "clip"]
    return {
        "parameters": parameters,
        "bf16_gb": {name: count * 2 / GB for name, count in parameters.items()},
        "asuka_flux": {
            "parameters": sum(parameters[n] for n in asuka),
            "bf16_gb": sum(parameters[n] for n in asuka) * 2 / GB,
        },
        "flux_fill": {
            "parameters": sum(parameters[n] for n in flux_fill),
            "bf16_gb": sum(parameters[n] for n in flux_fill) * 2 / GB,
        },
    }


# ------------------------------------------------------------------------------------------ activations


def activation_peak(call: Callable[[], object], inputs: tuple[torch.Tensor, ...] = ()) -> int:
    """The peak live bytes of `call()` without autograd, counting `inputs` as alive throughout."""
    return peak_bytes(call, inputs, grad=False)


@dataclass
class Phase:
    """One component's call in a pipeline call: the component whose weights it needs and its activation bytes."""

    component: str
    activations: int


def asuka_phases(models: dict, size: int) -> list[Phase]:
    """ASUKA-FLUX's call at `size`x`size`: MAE prior, aligners, VAE encode (image and masked image), one
    transformer step, the mask-conditioned decode."""
    meta = {"device": "meta", "dtype": torch.bfloat16}
    mae, vae, transformer = models["mae"], models["vae"], models["transformer"]
    image, hole = torch.empty(1, 3, size, size, **meta), torch.empty(1, 1, size, size, **meta)
    prior = mae.prior(image, hole)
    return [
        Phase("mae", activation_peak(lambda: mae.prior(image, hole), (image, hole))),
        Phase("token_aligner", activation_peak(lambda: models["token_aligner"](prior), (prior,))),
        Phase("pooled_aligner", activation_peak(lambda: models["pooled_aligner"](prior), (prior,))),
        Phase("vae", activation_peak(lambda: vae.encode(image).latent_dist.mean, (image,))),
        Phase("transformer", transformer_step(transformer, size, mae.num_patches)),
        Phase("decoder", decode_peak(models, size, asuka=True)),
    ]


def flux_fill_phases(models: dict, size: int) -> list[Phase]:
    """FluxFill's call: T5-XXL (512 tokens) and CLIP (77), VAE encode, one transformer step, VAE decode."""
    meta = {"device": "meta", "dtype": torch.bfloat16}
    t5_ids = torch.zeros(1, FLUX_FILL.text_tokens, dtype=torch.long, device="meta")
    clip_ids = torch.zeros(1, FLUX_FILL.pooled_text_tokens, dtype=torch.long, device="meta")
    image = torch.empty(1, 3, size, size, **meta)
    return [
        Phase("t5", activation_peak(lambda: models["t5"](t5_ids).last_hidden_state, (t5_ids,))),
        Phase("clip", activation_peak(lambda: models["clip"](clip_ids).pooler_output, (clip_ids,))),
        Phase("vae", activation_peak(lambda: models["vae"].encode(image).latent_dist.mean, (image,))),
        Phase("transformer", transformer_step(models["transformer"], size, FLUX_FILL.text_tokens)),
        Phase("vae", decode_peak(models, size, asuka=False)),
    ]


def transformer_step(transformer: torch.nn.Module, size: int, text_tokens: int) -> int:
    """One FLUX.1-Fill step: packed noise + masked-image latents + mask (384 channels) for (size/16)^2 tokens."""
    meta = {"device": "meta", "dtype": torch.bfloat16}
    tokens = (size // 16) ** 2
    inputs = (
        torch.empty(1, tokens, transformer.config.in_channels, **meta),
        torch.empty(1, text_tokens, transformer.config.joint_attention_dim, **meta),
        torch.empty(1, transformer.config.pooled_projection_dim, **meta),
        torch.empty(1, device="meta"),
        torch.empty(1, device="meta"),
        torch.empty(tokens, 3, **meta),
        torch.empty(text_tokens, 3, **meta),
    )
    hidden, context, pooled, timestep, guidance, img_ids, txt_ids = inputs
    return activation_peak(
        lambda: transformer(
            hidden_states=hidden,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=timestep,
            guidance=guidance,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0],
        inputs,
    )


def decode_peak(models: dict, size: int, asuka: bool) -> int:
    """The decode at `size`: ASUKA's mask-conditioned decoder (given the hole's box, a centred half-side square, as
    the meta device cannot compute it), or the plain VAE decoder."""
    meta = {"device": "meta", "dtype": torch.bfloat16}
    latents = torch.empty(1, 16, size // 8, size // 8, **meta)
    if not asuka:
        return activation_peak(lambda: models["vae"].decode(latents, return_dict=False)[0], (latents,))
    image, hole = torch.empty(1, 3, size, size, **meta), torch.empty(1, 1, size, size, **meta)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    decoder = models["decoder"]
    return activation_peak(
        lambda: decoder(latents, image, hole, hole_box=box, return_dict=False)[0], (latents, image, hole)
    )


# ------------------------------------------------------------------------------------------ the plan


def largest_leaf(model: torch.nn.Module) -> int:
    """bf16 bytes of the largest module holding weights itself: what sequential offloading keeps at a time."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()) * 2


def resident_bytes(models: dict, names: list[str], running: str, weights: str, offload: str) -> int:
    """The weights on the GPU while `running` runs, of a pipeline made of `names`, with the transformer in
    `weights` and `offload`ing."""

    def size(name: str) -> int:
        return weight_bytes(models[name], weights if name == "transformer" else "bf16")

    if offload == "none":
        return sum(size(name) for name in names)
    if offload == "model":
        return size(running)
    if offload == "group":
        return group_offload_resident(models[running])
    if offload == "sequential":
        return largest_leaf(models[running])
    raise ValueError(f"Unknown offload {offload!r}.")


PIPELINES = {
    "ASUKA-FLUX": (["transformer", "vae", *ASUKA_PARTS], asuka_phases),
    "FluxFill + T5-XXL + CLIP": (["transformer", "vae", "t5", "clip"], flux_fill_phases),
}


def plan_rows(models: dict, sizes=SIZES, pipelines=tuple(PIPELINES)) -> list[dict]:
    """One row per pipeline, size and (weights, offload) of `ROWS`: the phase with the largest resident weights +
    activations, and the cards it fits."""
    resident: dict = {}
    rows = []
    for pipeline in pipelines:
        names, phases_of = PIPELINES[pipeline]
        for size in sizes:
            phases = phases_of(models, size)
            for weights, offload in ROWS:
                sums = []
                for phase in phases:
                    key = (pipeline, phase.component, weights, offload)
                    if key not in resident:
                        resident[key] = resident_bytes(models, names, phase.component, weights, offload)
                    sums.append((resident[key] + phase.activations, resident[key], phase))
                total, held, phase = max(sums, key=lambda item: item[0])
                rows.append(
                    {
                        "pipeline": pipeline,
                        "size": size,
                        "weights": weights,
                        "offload": offload,
                        "weights_gb": held / GB,
                        "activations_gb": phase.activations / GB,
                        "total_gb": total / GB,
                        "peak_phase": phase.component,
                        "fits_gb": [card for card in CARDS_GB if total / GB + HEADROOM_GB <= card],
                    }
                )
    return rows


def format_table(weights: dict, rows: list[dict]) -> str:
    lines = ["| component | parameters | bf16 |", "|---|---:|---:|"]
    for name, count in sorted(weights["parameters"].items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {count / 1e6:,.1f} M | {count * 2 / GB:.2f} GB |")
    for key, label in (("asuka_flux", "ASUKA-FLUX"), ("flux_fill", "FluxFill + T5-XXL + CLIP")):
        lines.append(
            f"| **{label}** | {weights[key]['parameters'] / 1e6:,.0f} M | **{weights[key]['bf16_gb']:.2f} GB** |"
        )
    lines += [
        "",
        "| pipeline | size | weights | offload | resident weights | activations | total | fits (1 GB headroom) |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        fits = ", ".join(f"{card}" for card in row["fits_gb"]) or "none"
        lines.append(
            f"| {row['pipeline']} | {row['size']} | {row['weights']} | {row['offload']} | {row['weights_gb']:.2f} GB "
            f"| {row['activations_gb']:.2f} GB ({row['peak_phase']}) | {row['total_gb']:.2f} GB | {fits} |"
        )
    return "\n".join(lines)


def aligner_token_error(seed: int = 0) -> float:
    """Token relative error of a full-width token aligner (256 x 4096, one of its 4 blocks) quantized with torchao
    int8 weight-only, on random weights and a random prior (bf16 compute both)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(seed)
    aligner = build_flux_components(tiny=False, num_layers=1, num_single_layers=1)["token_aligner"]
    aligner.blocks = aligner.blocks[:1]
    aligner = aligner.to(torch.bfloat16)
    prior = torch.randn(2, aligner.config.num_tokens, aligner.config.in_dim, dtype=torch.bfloat16)
    with torch.no_grad():
        tokens = aligner(prior).tokens.float()
        quantize_(aligner, Int8WeightOnlyConfig())
        quantized = aligner(prior).tokens.float()
    return ((quantized - tokens).norm() / tokens.norm()).item()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the figures as JSON to this path")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--aligner-error", action="store_true", help="measure the int8 token aligner's token error")
    args = parser.parse_args(argv)
    models = meta_models()
    result = {"weights": weight_table(models), "rows": plan_rows(models, args.sizes)}
    if args.aligner_error:
        result["token_aligner_int8_relative_error"] = aligner_token_error()
    print(format_table(result["weights"], result["rows"]))
    if "token_aligner_int8_relative_error" in result:
        print(
            f"\ntoken aligner int8 weight-only: token relative error {result['token_aligner_int8_relative_error']:.4%}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
