"""How ASUKA-FLUX fits a GPU: the weight format of its transformer and the offloading, chosen or given.

The app and the CLI take `--quantize none|int8|fp8|nf4|gguf:PATH` and `--offload none|model|group|sequential`;
without them, on a GPU, `choose_configuration` picks the fastest configuration whose planned peak memory
(`REQUIRED_GB`, the figures of `benchmarks/memory_plan.py` at 1024 pixels, which tests/methods/test_memory_plan.py
recomputes) fits the free memory `torch.cuda.mem_get_info` reports, with 1 GB of headroom. On a ZeroGPU Space the
GPU exists only inside a call, so nothing can be measured at start: the default there is the slice's own fit
(bf16, nothing offloaded: the H200 slice has 70 GB).

Every configuration is diffusers' own machinery: `PipelineQuantizationConfig` (torchao int8 weight-only,
bitsandbytes nf4), `FluxTransformer2DModel.from_single_file` with a `GGUFQuantizationConfig`, layerwise casting (fp8
storage, bf16 compute), and the pipeline's `enable_model_cpu_offload`, `enable_group_offload` (block level, one block
per group, CUDA streams on a GPU) and `enable_sequential_cpu_offload`. ASUKA's own parts (MAE, aligners, decoder)
stay in the pipeline's dtype.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


# The cards of the memory plan, in GB, and the headroom a configuration leaves on them.
CARDS_GB = (8, 12, 16, 24, 48, 80)
HEADROOM_GB = 1.0
# The `--quantize` values (besides `gguf:PATH`) and the `--offload` values.
QUANTIZE_CHOICES = ("none", "int8", "fp8", "nf4")
OFFLOAD_CHOICES = ("none", "model", "group", "sequential")
# The transformer weight format of each `--quantize` value in the plan (a GGUF file is counted as Q8_0).
PLAN_FORMATS = {"none": "bf16", "int8": "int8", "fp8": "fp8", "nf4": "nf4", "gguf": "gguf-q8_0"}
# The package each `--quantize` value needs, beyond diffusers.
QUANTIZE_PACKAGES = {"int8": "torchao", "nf4": "bitsandbytes", "gguf": "gguf"}


@dataclass(frozen=True)
class Configuration:
    """A weight format of the transformer (`quantize`: a `QUANTIZE_CHOICES` value or `"gguf"` with `gguf_path`) and
    an offloading (`offload`)."""

    quantize: str = "none"
    offload: str = "none"
    gguf_path: str | None = None

    def describe(self) -> str:
        weights = f"gguf ({self.gguf_path})" if self.quantize == "gguf" else self.quantize
        return f"--quantize {weights} --offload {self.offload}"


# The configurations, fastest first: resident bf16; model offloading moves the transformer once per call, so it
# costs less than a quantized matmul in every step; group and sequential offloading move weights in every step.
CONFIGURATIONS = (
    Configuration("none", "none"),
    Configuration("none", "model"),
    Configuration("fp8", "none"),
    Configuration("fp8", "model"),
    Configuration("int8", "none"),
    Configuration("int8", "model"),
    Configuration("nf4", "none"),
    Configuration("nf4", "model"),
    Configuration("none", "group"),
    Configuration("none", "sequential"),
)

# ASUKA-FLUX's planned peak GPU memory at 1024 pixels in GB (resident weights + activations), by (quantize,
# offload): `python -m benchmarks.memory_plan`.
REQUIRED_GB = {
    ("none", "none"): 28.42,
    ("none", "model"): 24.27,
    ("fp8", "none"): 19.76,
    ("fp8", "model"): 15.61,
    ("int8", "none"): 16.53,
    ("int8", "model"): 12.39,
    ("nf4", "none"): 11.31,
    ("nf4", "model"): 7.16,
    ("gguf", "none"): 17.26,
    ("gguf", "model"): 13.11,
    ("none", "group"): 2.55,
    ("none", "sequential"): 2.43,
}


def parse_quantize(value: str) -> tuple[str, str | None]:
    """`--quantize`'s value as (kind, GGUF path); `ValueError` naming the accepted values otherwise."""
    if value.startswith("gguf:") and len(value) > len("gguf:"):
        return "gguf", value[len("gguf:") :]
    if value not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize is {value!r}; accepted: {', '.join(QUANTIZE_CHOICES)} or gguf:PATH (a file).")
    return value, None


def on_zero_gpu(environ: Mapping[str, str] = os.environ) -> bool:
    """True on a ZeroGPU Space (the `spaces` package reads the same variable)."""
    return environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def available(quantize: str) -> bool:
    """Whether the package `quantize` needs is installed."""
    package = QUANTIZE_PACKAGES.get(quantize)
    return package is None or importlib.util.find_spec(package) is not None


def choose_configuration(free_bytes: int, offload: str | None = None, quantize: str | None = None) -> Configuration:
    """The fastest configuration whose planned peak plus the headroom fits `free_bytes`, among those with the given
    `offload` / `quantize` (None: any) and an installed backend; the last (sequential offloading) if none fits."""
    free_gb = free_bytes / 1e9
    candidates = [
        config
        for config in CONFIGURATIONS
        if (offload is None or config.offload == offload)
        and (quantize is None or config.quantize == quantize)
        and available(config.quantize)
    ]
    for config in candidates:
        if REQUIRED_GB[(config.quantize, config.offload)] + HEADROOM_GB <= free_gb:
            return config
    return candidates[-1] if candidates else CONFIGURATIONS[-1]


def resolve_configuration(
    quantize: str | None,
    offload: str | None,
    device: str,
    environ: Mapping[str, str] = os.environ,
    mem_get_info=None,
) -> tuple[Configuration, str]:
    """The configuration of `--quantize` / `--offload` (None where not given) on `device`, and why it was chosen.

    A flag given is used as it is; the other is chosen from the plan: on a CUDA device from the free memory
    (`mem_get_info`, default `torch.cuda.mem_get_info`), on ZeroGPU the slice's default, elsewhere (CPU) nothing.
    """
    kind, path = parse_quantize(quantize) if quantize is not None else (None, None)
    if offload is not None and offload not in OFFLOAD_CHOICES:
        raise ValueError(f"--offload is {offload!r}; accepted: {', '.join(OFFLOAD_CHOICES)}.")
    if kind is not None and not available(kind):
        raise ValueError(f"--quantize {quantize} needs the `{QUANTIZE_PACKAGES[kind]}` package: pip install it.")
    if kind is not None and offload is not None:
        return Configuration(kind, offload, path), "as given"
    if on_zero_gpu(environ):
        return Configuration(kind or "none", offload or "none", path), "ZeroGPU default (a 70 GB H200 slice)"
    if not device.startswith("cuda"):
        return Configuration(kind or "none", offload or "none", path), f"on {device}"
    free, total = (mem_get_info or torch.cuda.mem_get_info)(torch.device(device))
    if kind == "gguf":
        fits = [o for o in OFFLOAD_CHOICES[:2] if REQUIRED_GB[("gguf", o)] + HEADROOM_GB <= free / 1e9]
        config = Configuration("gguf", offload or (fits[0] if fits else "group"), path)
    else:
        config = choose_configuration(free, offload=offload, quantize=kind)
    planned = REQUIRED_GB.get((config.quantize, config.offload))
    return config, f"{free / 1e9:.1f} of {total / 1e9:.1f} GB free; planned peak {planned} GB at 1024 px"


# ------------------------------------------------------------------ applying it


def loading_kwargs(config: Configuration, dtype: torch.dtype, base: str | None = None) -> dict[str, Any]:
    """The `from_pretrained` arguments of `config`'s weight format: a `PipelineQuantizationConfig` for the
    transformer (int8, nf4), or the GGUF transformer itself (`transformer=`, its config from `base`'s)."""
    from diffusers import PipelineQuantizationConfig

    if config.quantize == "int8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        mapping = {"transformer": TorchAoConfig(Int8WeightOnlyConfig())}
    elif config.quantize == "nf4":
        from diffusers import BitsAndBytesConfig

        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        mapping = {"transformer": nf4}
    elif config.quantize == "gguf":
        from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

        transformer = FluxTransformer2DModel.from_single_file(
            config.gguf_path,
            config=base,
            subfolder="transformer",
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            torch_dtype=dtype,
        )
        return {"transformer": transformer}
    else:
        return {}
    return {"quantization_config": PipelineQuantizationConfig(quant_mapping=mapping)}


def place_pipeline(pipeline: Any, config: Configuration, device: str) -> Any:
    """`pipeline` on `device` as `config` says: fp8 layerwise casting of the transformer, then the offloading (or
    `.to(device)`); its progress bar off."""
    if config.quantize == "fp8":
        pipeline.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=pipeline.transformer.dtype
        )
    if config.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif config.offload == "sequential":
        if torch.device(device).type != "cuda":
            raise ValueError(f"--offload sequential needs a CUDA device, not {device}; on the CPU use none.")
        pipeline.enable_sequential_cpu_offload(device=device)
    elif config.offload == "group":
        pipeline.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=torch.device(device).type == "cuda",
        )
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# ------------------------------------------------------------------ the app's and the CLI's flags


def add_memory_arguments(parser: Any, quantize: str | None = None, offload: str | None = None) -> None:
    """`--quantize` and `--offload` on an argparse parser, with these defaults (None: chosen from the plan)."""
    parser.add_argument(
        "--quantize",
        default=quantize,
        help="ASUKA-FLUX's transformer weights: none, int8 (torchao), fp8 (layerwise casting), nf4 (bitsandbytes) or "
        "gguf:PATH (a FLUX.1-Fill GGUF file); default: the fastest that fits the GPU (docs/flux.md)",
    )
    parser.add_argument(
        "--offload",
        default=offload,
        help="none, model, group or sequential CPU offloading; default: chosen with --quantize from the free memory",
    )


def memory_for_method(
    method: str,
    quantize: str | None,
    offload: str | None,
    device: str,
    environ: Mapping[str, str] = os.environ,
    mem_get_info=None,
) -> tuple[Configuration | None, str]:
    """The configuration for `method` and the line the app and the CLI print at start; None (and no line) for a
    method whose loader takes none, where `--quantize` / `--offload` are refused with a `ValueError`."""
    from asuka.methods.loading import supports_memory

    if not supports_memory(method):
        if quantize is not None or offload is not None:
            raise ValueError(f"--quantize/--offload apply to ASUKA-FLUX (asuka-flux), not to {method}.")
        return None, ""
    config, reason = resolve_configuration(quantize, offload, device, environ, mem_get_info)
    return config, f"memory: {config.describe()} ({reason})"
