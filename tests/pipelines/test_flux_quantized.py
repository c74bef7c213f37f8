"""ASUKA-FLUX with a quantized transformer, on every load path, on the CPU: torchao, GGUF, quanto.

Each backend is reached with diffusers' own API (`PipelineQuantizationConfig`, `from_single_file` with a
`GGUFQuantizationConfig`); the checks are the weights' types (the transformer's really quantized, ASUKA's parts not),
the output within a stated bound of the unquantized run on the same weights, and a second call equal to the first.
The bounds are about twice the differences measured on the tiny pipeline (2 steps, outputs in [0, 1]).

bitsandbytes is not here: its diffusers quantizer refuses to load without a GPU ("No GPU found. A GPU is needed for
quantization.", bitsandbytes 0.50), so its nf4 and int8 rows run in `benchmarks/gpu_suite.py`.
"""

import textwrap

import gguf
import numpy as np
import pytest
import torch
from diffusers import (
    FluxTransformer2DModel,
    GGUFQuantizationConfig,
    PipelineQuantizationConfig,
    QuantoConfig,
    TorchAoConfig,
)
from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig

from asuka import AsukaFluxPipeline
from asuka.testing import make_tiny_pipeline
from tests.support.hub import run_without_asuka
from tests.support.inputs import make_inputs


STEPS = 2
IMAGE, MASK = make_inputs()
ASUKA_PARTS = ("mae", "token_aligner", "pooled_aligner", "decoder", "masked_image_encoder")
BF16_TRANSFORMER = {"transformer": torch.bfloat16, "default": torch.float32}


def int8_config(*names: str) -> PipelineQuantizationConfig:
    return PipelineQuantizationConfig(quant_mapping={name: TorchAoConfig(Int8WeightOnlyConfig()) for name in names})


def run(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        IMAGE, MASK, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images


def assert_runs_close(pipe, reference: np.ndarray, bound: float) -> np.ndarray:
    first, second = run(pipe), run(pipe)
    np.testing.assert_array_equal(first, second)
    diff = np.abs(first - reference).max()
    assert 0 < diff <= bound, diff  # changed by the quantization, within the bound
    return first


def linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]


def assert_asuka_parts_float32(pipe) -> None:
    for name in ASUKA_PARTS:
        for tensor in getattr(pipe, name).parameters():
            assert type(tensor) is torch.nn.Parameter and tensor.dtype == torch.float32, name


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny pipeline (it is also the backbone repo of the light repo and the `asuka=` folder), its light repo
    and the unquantized runs: fp32, and with the transformer loaded in bf16 (torchao's compute dtype)."""
    root = tmp_path_factory.mktemp("quantized")
    pipe = make_tiny_pipeline("flux", with_masked_image_encoder=True)
    pipe.save_pretrained(root / "full")
    pipe.save_pretrained(root / "light", light=True, backbone=str(root / "full"))
    fp32 = run(AsukaFluxPipeline.from_pretrained(root / "full"))
    bf16 = run(AsukaFluxPipeline.from_pretrained(root / "full", torch_dtype=BF16_TRANSFORMER))
    return root, fp32, bf16


# ------------------------------------------------------------------ torchao int8 weight-only

# Measured: 0.025 from the bf16 run (torchao computes the int8 weights in bf16).
TORCHAO_BOUND = 0.05


def assert_int8_transformer_weights(pipe) -> None:
    weights = linear_weights(pipe.transformer)
    assert weights and all(isinstance(weight, Int8Tensor) for weight in weights)
    assert pipe.transformer.dtype == torch.bfloat16


def assert_int8_transformer(pipe) -> None:
    assert_int8_transformer_weights(pipe)
    assert_asuka_parts_float32(pipe)


@pytest.mark.parametrize("source", ["saved", "two-sources", "light"])
def test_torchao_int8_weight_only_on_each_load_path(saved, source):
    root, _, bf16 = saved
    kwargs = {"quantization_config": int8_config("transformer"), "torch_dtype": BF16_TRANSFORMER}
    if source == "two-sources":
        pipe = AsukaFluxPipeline.from_pretrained(root / "full", asuka=root / "full", **kwargs)
    else:
        pipe = AsukaFluxPipeline.from_pretrained(root / ("light" if source == "light" else "full"), **kwargs)
    assert_int8_transformer(pipe)
    assert pipe.vae.dtype == torch.float32
    assert_runs_close(pipe, bf16, TORCHAO_BOUND)


def test_torchao_through_a_light_repo_without_asuka(saved, tmp_path):
    """`DiffusionPipeline.from_pretrained(light, trust_remote_code=True, quantization_config=...)` with `import asuka`
    blocked: the pointer hands the transformer's config to `FluxTransformer2DModel.from_pretrained`; the output is
    the package's own quantized run."""
    root, _, _ = saved
    script = f"""
        import numpy as np, torch, PIL.Image
        from diffusers import DiffusionPipeline, PipelineQuantizationConfig, TorchAoConfig
        from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig

        config = PipelineQuantizationConfig(quant_mapping={{"transformer": TorchAoConfig(Int8WeightOnlyConfig())}})
        pipe = DiffusionPipeline.from_pretrained(
            {str(root / "light")!r}, trust_remote_code=True, quantization_config=config,
            torch_dtype={{"transformer": torch.bfloat16, "default": torch.float32}},
        )
        pipe.set_progress_bar_config(disable=True)
        linears = [m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
        for name in {ASUKA_PARTS!r}:
            assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32
                       for p in getattr(pipe, name).parameters()), name
        outs = [pipe(PIL.Image.open("image.png"), PIL.Image.open("mask.png"), num_inference_steps={STEPS},
                     generator=torch.Generator().manual_seed(0), output_type="np").images for _ in range(2)]
        np.save("out.npy", np.stack(outs))
        """
    IMAGE.save(tmp_path / "image.png")
    MASK.save(tmp_path / "mask.png")
    run_without_asuka(textwrap.dedent(script), cwd=tmp_path)
    first, second = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(first, second)
    pipe = AsukaFluxPipeline.from_pretrained(
        root / "light", quantization_config=int8_config("transformer"), torch_dtype=BF16_TRANSFORMER
    )
    np.testing.assert_allclose(first, run(pipe), atol=1e-6)


@pytest.mark.parametrize("folder", ["full", "light"])
def test_the_methods_loader_applies_a_memory_configuration(saved, folder):
    """What the app and the CLI load with `--quantize int8 --offload model`: the torchao transformer, offloading
    hooks, the output of the same quantized pipeline placed by hand."""
    from asuka.methods.loading import load_pipeline
    from asuka.methods.memory import Configuration

    root, _, _ = saved
    pipe = load_pipeline(
        "asuka-flux", str(root / folder), "cpu", torch.bfloat16, memory=Configuration("int8", "model")
    )
    assert_int8_transformer_weights(pipe)
    assert {name for hook in pipe._all_hooks for name, m in pipe.components.items() if m is hook.model} >= {
        "transformer",
        *ASUKA_PARTS,
    }
    expected = AsukaFluxPipeline.from_pretrained(
        root / folder, quantization_config=int8_config("transformer"), torch_dtype=torch.bfloat16
    )
    np.testing.assert_allclose(run(pipe), run(expected), atol=1e-6)


def test_a_quantization_config_must_be_a_pipeline_one(saved):
    with pytest.raises(ValueError, match="PipelineQuantizationConfig"):
        AsukaFluxPipeline.from_pretrained(
            saved[0] / "full", asuka=saved[0] / "full", quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
        )


# ------------------------------------------------------------------ the token aligner, quantized on request


def test_token_aligner_int8_is_offered_and_its_token_error_measured(saved):
    """Quantizing the 0.81 B token aligner (named in the config) changes the tokens by a small relative error;
    measured 0.4 % on the tiny aligner (`python -m benchmarks.memory_plan --aligner-error` measures the full-width
    one)."""
    root, _, _ = saved
    plain = AsukaFluxPipeline.from_pretrained(root / "full")
    pipe = AsukaFluxPipeline.from_pretrained(root / "full", quantization_config=int8_config("token_aligner"))
    weights = linear_weights(pipe.token_aligner)
    assert weights and all(isinstance(weight, Int8Tensor) for weight in weights)
    assert type(pipe.transformer.x_embedder.weight) is torch.nn.Parameter
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    hole = torch.zeros(2, 1, 64, 64)
    hole[..., 16:48, 20:44] = 1
    tokens, _ = plain.encode_prior(image, hole)
    quantized, _ = pipe.encode_prior(image, hole)
    relative = ((quantized.float() - tokens).norm() / tokens.norm()).item()
    print(f"token aligner int8 weight-only: token relative error {relative:.4%}")
    assert 0 < relative < 0.02, relative


# ------------------------------------------------------------------ GGUF through from_single_file

# Measured: 0.0105 from the fp32 run (Q8_0).
GGUF_BOUND = 0.03


def write_gguf(transformer: FluxTransformer2DModel, path, quant_type=gguf.GGMLQuantizationType.Q8_0) -> int:
    """`transformer`'s weights in a GGUF file written with the `gguf` package, each 2-D weight whose rows fill whole
    Q8_0 blocks quantized, the rest kept in float32; returns how many were quantized.

    The tensors keep diffusers' names: diffusers' converter from the original FLUX names fixes the inner width to
    FLUX's 3072 (`convert_flux_transformer_checkpoint_to_diffusers`), so the smallest original-format checkpoint it
    takes (one double and one single block) has 0.55 B parameters (2.2 GB in float32), too large for a CPU test;
    `from_single_file` loads diffusers-named tensors as they are.
    """
    writer = gguf.GGUFWriter(str(path), arch="flux")
    block = gguf.GGML_QUANT_SIZES[quant_type][0]
    quantized = 0
    for name, tensor in transformer.state_dict().items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, quant_type), raw_dtype=quant_type)
            quantized += 1
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized


def test_gguf_q8_0_transformer_from_single_file_given_to_the_pipeline(saved):
    root, fp32, _ = saved
    path = root / "transformer-Q8_0.gguf"
    reference = AsukaFluxPipeline.from_pretrained(root / "full")
    quantized = write_gguf(reference.transformer, path)
    transformer = FluxTransformer2DModel.from_single_file(
        str(path),
        config=str(root / "full"),
        subfolder="transformer",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        torch_dtype=torch.float32,
    )
    in_gguf = [
        weight
        for weight in linear_weights(transformer)
        if getattr(weight, "quant_type", None) == gguf.GGMLQuantizationType.Q8_0
    ]
    assert quantized > 10 and len(in_gguf) == quantized
    pipe = AsukaFluxPipeline.from_pretrained(root / "full", asuka=root / "full", transformer=transformer)
    assert pipe.transformer is transformer
    assert_asuka_parts_float32(pipe)
    assert_runs_close(pipe, fp32, GGUF_BOUND)


# ------------------------------------------------------------------ quanto

# Measured: 0.013 from the fp32 run (int8 weights, fp32 compute).
QUANTO_BOUND = 0.03


def test_quanto_int8_weights_on_the_cpu(saved):
    from optimum.quanto import WeightQBytesTensor

    root, fp32, _ = saved
    config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantoConfig(weights_dtype="int8")})
    pipe = AsukaFluxPipeline.from_pretrained(root / "full", quantization_config=config)
    weights = linear_weights(pipe.transformer)
    assert weights and all(isinstance(weight, WeightQBytesTensor) for weight in weights)
    assert_asuka_parts_float32(pipe)
    assert_runs_close(pipe, fp32, QUANTO_BOUND)
