"""ASUKA-FLUX with less GPU memory: mixed dtypes, offloading and layerwise casting, checked on the CPU.

The references are the plain fp32 run of the same tiny pipeline, and for layerwise casting the plain run on weights
rounded to fp8 by hand (layerwise casting stores a weight in fp8 and computes with its upcast copy, so the two must
agree). On the CPU the offload device and the execution device are the same, so placement is checked where it can
be seen: with disk offloading an offloaded weight is an empty placeholder (a module run without its weights loaded
gives garbage), with sequential offloading it is on the meta device.
"""

import numpy as np
import pytest
import torch
from accelerate import cpu_offload

from asuka.testing import make_tiny_pipeline
from tests.support.inputs import make_inputs


STEPS = 2
IMAGE, MASK = make_inputs()
# Memory-mapped (disk-offloaded) weights make the FLUX transformer's matmuls round differently (~3e-6).
OFFLOAD_TOLERANCE = 1e-5
# The conditioning parts, used once per image before the denoising loop.
PRIOR_PARTS = ("mae", "token_aligner", "pooled_aligner")


def run(pipe) -> np.ndarray:
    return pipe(
        IMAGE, MASK, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def tiny(**kwargs):
    return make_tiny_pipeline("flux", with_masked_image_encoder=True, **kwargs)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return run(tiny())


def assert_runs_close(pipe, reference: np.ndarray, bound: float) -> None:
    """Two calls give the same output, finite and within `bound` of the plain fp32 run."""
    first, second = run(pipe), run(pipe)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)
    diff = np.abs(first - reference).max()
    assert diff <= bound, diff


# ------------------------------------------------------------------ mixed dtypes


def cast(pipe, dtype: torch.dtype, names: tuple[str, ...]):
    for name in names:
        getattr(pipe, name).to(dtype)
    return pipe


# Measured maximum differences from the fp32 run (tiny random nets, 2 steps): bf16 transformer 0.11, bf16 VAE
# 0.003; the bounds leave about 2x.
@pytest.mark.parametrize(
    "names, bound",
    [
        (("transformer",), 0.25),
        (("transformer", "mae", "token_aligner", "pooled_aligner", "decoder"), 0.25),
        (("vae",), 0.01),
        (("vae", "masked_image_encoder", "decoder"), 0.05),
    ],
    ids=["transformer", "all-but-vae", "vae", "vae-encoder-decoder"],
)
def test_a_bf16_part_meets_float32_parts(reference, names, bound):
    """The pipeline's tensors cross from one component's dtype into the next's (the image into the VAE and the
    release's encoder, their latents into the transformer, the prior into the aligners, the latents into the
    decoder)."""
    assert_runs_close(cast(tiny(), torch.bfloat16, names), reference, bound)


def test_the_transformer_gets_its_own_dtype_from_float32_parts():
    """`latents` and the conditioning follow the transformer's dtype: a bf16 transformer gets bf16 inputs and the
    output latents are bf16, whatever the VAE's dtype."""
    pipe = cast(tiny(), torch.bfloat16, ("transformer",))
    seen = {}
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update({k: v.dtype for k, v in kwargs.items() if torch.is_tensor(v)}),
        with_kwargs=True,
    )
    latents = pipe(IMAGE, MASK, num_inference_steps=STEPS, output_type="latent").images
    handle.remove()
    for name in ("hidden_states", "encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids"):
        assert seen[name] == torch.bfloat16, (name, seen[name])
    assert latents.dtype == torch.bfloat16


# ------------------------------------------------------------------ offloading


def onload_recorder(pipe) -> tuple[dict, dict]:
    """Record, for each module an accelerate hook runs, the devices of its own weights while it runs, and what the
    conditioning parts' weights are on when the transformer starts its first step."""
    running: dict[str, set[str]] = {}
    at_first_step: dict[str, set[str]] = {}
    for component, model in pipe.components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for name, module in model.named_modules():
            if not hasattr(module, "_old_forward"):
                continue
            forward = module._old_forward

            def recorded(*args, _module=module, _forward=forward, _key=f"{component}.{name}", **kwargs):
                own = (*_module.parameters(recurse=False), *_module.buffers(recurse=False))
                devices = {t.device.type for t in own}
                running.setdefault(_key, set()).update(devices)
                if _key == "transformer." and not at_first_step:
                    for part in PRIOR_PARTS:
                        at_first_step[part] = {p.device.type for p in getattr(pipe, part).parameters()}
                return _forward(*args, **kwargs)

            module._old_forward = recorded
    return running, at_first_step


def sequential_offload(pipe):
    """What `enable_sequential_cpu_offload` does, with `torch.device("cpu")` as the execution device: diffusers
    passes "cpu:0", on which accelerate's `set_module_tensor_to_device` breaks for any pipeline (diffusers' own
    `FluxFillPipeline` too); on a GPU the pipeline method is used as it is (benchmarks/gpu_suite.py)."""
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)
    return pipe


def test_sequential_offloading_loads_each_module_when_it_runs_and_frees_the_prior_parts(reference):
    pipe = sequential_offload(tiny())
    assert pipe._execution_device == torch.device("cpu")
    running, at_first_step = onload_recorder(pipe)
    assert_runs_close(pipe, reference, 0.0)
    assert {p.device.type for p in pipe.transformer.parameters()} == {"meta"}  # offloaded between calls
    hooked = {key for key in running if key.split(".")[0] in PRIOR_PARTS}
    assert len(hooked) > 20, sorted(hooked)  # every weighted module of the MAE and the aligners
    not_onloaded = {key: devices for key, devices in running.items() if devices - {"cpu"}}
    assert not not_onloaded, not_onloaded
    assert at_first_step == {part: {"meta"} for part in PRIOR_PARTS}, at_first_step


def test_model_offloading_frees_the_prior_parts_before_the_loop(reference):
    """Each model's accelerate hook offloads the one before it in the chain when it starts (on a GPU; on the CPU it
    sees the predecessor already there and moves nothing): the chain into the transformer holds the prior parts, so
    each is freed before the first step."""
    pipe = tiny()
    pipe.enable_model_cpu_offload(device="cpu")
    names = {id(model): name for name, model in pipe.components.items()}
    chain, hook = [], pipe.transformer._hf_hook.prev_module_hook
    while hook is not None:
        chain.append(names[id(hook.model)])
        hook = hook.hook.prev_module_hook
    assert chain == ["masked_image_encoder", "vae", "pooled_aligner", "token_aligner", "mae"], chain
    assert_runs_close(pipe, reference, 0.0)


def group_offload(pipe, names, offload_type: str = "block_level", disk=None):
    """`enable_group_offload` on the named components, each into its own folder of `disk` (offloading to disk; the
    two aligners share a class, so one folder would mix their files)."""
    for name in names:
        getattr(pipe, name).enable_group_offload(
            torch.device("cpu"),
            offload_type=offload_type,
            num_blocks_per_group=1 if offload_type == "block_level" else None,
            offload_to_disk_path=None if disk is None else str(disk / name),
        )
    return pipe


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("to_disk", [False, True], ids=["memory", "disk"])
def test_group_offloading_of_every_component(reference, tmp_path, offload_type, to_disk):
    """Group offloading on every component. On disk, an offloaded weight is an empty placeholder until its group is
    onloaded: the MAE's `prior` and the release encoder's `encode` (entry points other than `forward`) gave NaN here
    before they onloaded their weights. Without streams; CUDA streams (`use_stream=True`) need a GPU."""
    names = [name for name, model in tiny().components.items() if isinstance(model, torch.nn.Module)]
    pipe = group_offload(tiny(), names, offload_type, tmp_path if to_disk else None)
    assert pipe._execution_device == torch.device("cpu")
    assert_runs_close(pipe, reference, OFFLOAD_TOLERANCE if to_disk else 0.0)


def test_pipeline_level_group_offloading(reference):
    pipe = tiny()
    pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_type="leaf_level")
    assert_runs_close(pipe, reference, 0.0)


# ------------------------------------------------------------------ layerwise casting

CAST_PARTS = ("transformer", "mae", "token_aligner", "pooled_aligner", "decoder", "masked_image_encoder")


def cast_modules(pipe, names: tuple[str, ...]) -> dict[str, list[str]]:
    """The modules of each component that layerwise casting stores in low precision (it skips norms, patch and
    position embeddings, ...), read from its hooks."""
    return {
        name: [
            path
            for path, module in getattr(pipe, name).named_modules()
            if getattr(module, "_diffusers_hook", None) is not None
            and module._diffusers_hook.get_hook("layerwise_casting") is not None
        ]
        for name in names
    }


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_layerwise_fp8_casting_equals_the_run_on_fp8_rounded_weights(compute_dtype):
    """fp8 storage on the transformer and ASUKA's parts (each loaded in the compute dtype, as diffusers requires), the
    VAE left as it is: the output is the run on the same weights rounded to fp8 by hand, bit for bit."""
    pipe = cast(tiny(), compute_dtype, CAST_PARTS)
    for name in CAST_PARTS:
        getattr(pipe, name).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)
    stored = cast_modules(pipe, CAST_PARTS)
    assert all(stored.values()), stored
    assert pipe.transformer.x_embedder.weight.dtype == torch.float8_e4m3fn
    assert pipe.mae.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    assert pipe.token_aligner.blocks[0].linear1.weight.dtype == torch.float8_e4m3fn
    assert pipe.transformer.dtype == compute_dtype

    rounded = cast(tiny(), compute_dtype, CAST_PARTS)
    with torch.no_grad():
        for name, paths in stored.items():
            for path in paths:
                for tensor in getattr(rounded, name).get_submodule(path).parameters(recurse=False):
                    tensor.copy_(tensor.to(torch.float8_e4m3fn).to(compute_dtype))
    expected = run(rounded)
    assert_runs_close(pipe, expected, 0.0)


def test_layerwise_casting_and_group_offloading_together(reference, tmp_path):
    """The combination docs/flux.md gives for small cards: fp8 storage on the transformer, group offloading of the
    rest; within the fp8 error of the plain run (measured 0.04 on the tiny pipeline)."""
    pipe = group_offload(tiny(), ("vae", *PRIOR_PARTS, "decoder", "masked_image_encoder"), "leaf_level")
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert_runs_close(pipe, reference, 0.1)
