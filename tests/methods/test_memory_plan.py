"""benchmarks/memory_plan.py and the automatic choice of `--quantize` / `--offload` (asuka/methods/memory.py).

The weight figures are recomputed from parameter counts on the meta device and checked against the public
configs' totals (ASUKA-FLUX 25.99 GB, FluxFill with T5-XXL and CLIP 33.74 GB in bf16); the bytes per format against
a hand count of one Linear layer (the live-tensor counter, benchmarks/meta_memory.py, is checked against hand
counts in tests/benchmarks/test_training_budget.py); the table the choice reads (`REQUIRED_GB`) against the plan's
own figures; the choice against faked free memory for each card size.
"""

import pytest
import torch
from diffusers import FluxTransformer2DModel

import app
from asuka import cli
from asuka.methods import memory
from asuka.methods.memory import Configuration
from benchmarks import memory_plan


GB = 1e9


@pytest.fixture(scope="module")
def models():
    return memory_plan.meta_models()


def test_weights_are_recomputed_from_parameter_counts(models):
    weights = memory_plan.weight_table(models)
    millions = {name: round(count / 1e6, 1) for name, count in weights["parameters"].items()}
    assert millions == {
        "transformer": 11902.4,
        "token_aligner": 808.6,
        "mae": 112.2,
        "vae": 83.8,
        "decoder": 60.3,
        "pooled_aligner": 28.7,
        "t5": 4762.3,
        "clip": 123.1,
    }
    assert round(weights["asuka_flux"]["bf16_gb"], 2) == 25.99
    assert round(weights["flux_fill"]["bf16_gb"], 2) == 33.74
    assert (
        sum(weights["parameters"][n] for n in ("transformer", "vae", "t5", "clip"))
        == weights["flux_fill"]["parameters"]
    )


def test_bytes_per_format_match_a_hand_count():
    linear, norm = torch.nn.Linear(256, 32), torch.nn.LayerNorm(32)  # 8192 weights, 32 bias, 64 norm parameters
    model = torch.nn.Sequential(linear, norm)
    rest = (32 + 64) * 2  # bias and norm stay bf16
    assert memory_plan.weight_bytes(model, "bf16") == (8192 + 96) * 2
    assert memory_plan.weight_bytes(model, "int8") == 8192 + 32 * (4 + 1) + rest
    assert memory_plan.weight_bytes(model, "nf4") == 8192 // 2 + 8192 // 64 * 4 + rest
    assert memory_plan.weight_bytes(model, "gguf-q8_0") == 8192 // 32 * 34 + rest
    assert memory_plan.weight_bytes(model, "gguf-q4_k") == 8192 // 256 * 144 + rest
    assert memory_plan.weight_bytes(torch.nn.Linear(100, 32), "gguf-q8_0") == (3200 + 32) * 2  # 100: no whole blocks


def test_fp8_bytes_are_read_from_layerwise_casting(models):
    """Layerwise casting stores in one byte the Linear layers its skip patterns do not name (norms, among them the
    blocks' modulation `norm*.linear`, embeddings, `proj_in`/`proj_out`), everything else stays bf16."""
    import re

    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    transformer = models["transformer"]
    patterns = (*DEFAULT_SKIP_MODULES_PATTERN, *(transformer._skip_layerwise_casting_patterns or ()))
    cast = sum(
        parameter.numel()
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(re.search(pattern, name) for pattern in patterns)
        for parameter in module.parameters()
    )
    fp8 = memory_plan.weight_bytes(transformer, "fp8")
    assert fp8 == memory_plan.parameter_count(transformer) * 2 - cast
    assert round(fp8 / GB, 2) == 15.15


def test_transformer_activations_do_not_grow_with_depth():
    """Inference keeps one block's activations at a time: a full-width transformer of 2+2 blocks peaks as one of 1+1,
    so the plan's full-depth figure is one block's working set (on the meta device, in bf16)."""
    from asuka.testing.configs import FLUX_TRANSFORMER_CONFIG

    peaks = []
    for depth in (1, 2):
        with torch.device("meta"):
            config = {**FLUX_TRANSFORMER_CONFIG, "num_layers": depth, "num_single_layers": depth}
            transformer = FluxTransformer2DModel(**config).to(torch.bfloat16)
        peaks.append(memory_plan.transformer_step(transformer, 512, 256))
    assert peaks[0] == peaks[1] > 0


def test_required_memory_table_is_the_plans(models):
    rows = memory_plan.plan_rows(models, sizes=(1024,), pipelines=("ASUKA-FLUX",))
    planned = {(row["weights"], row["offload"]): round(row["total_gb"], 2) for row in rows}
    formats = {value: key for key, value in memory.PLAN_FORMATS.items()}
    table = {(formats[w], o): gb for (w, o), gb in planned.items() if w in formats}
    assert table == memory.REQUIRED_GB
    assert set(memory.REQUIRED_GB) >= {(c.quantize, c.offload) for c in memory.CONFIGURATIONS}
    assert [row["fits_gb"] for row in rows if (row["weights"], row["offload"]) == ("bf16", "none")] == [[48, 80]]


# ------------------------------------------------------------------ the automatic choice


def fake_card(gb: float, used: float = 0.4):
    """`torch.cuda.mem_get_info` of an idle card of `gb` GB (the CUDA context takes `used`)."""
    return lambda device: (int((gb - used) * GB), int(gb * GB))


EXPECTED = {
    80: Configuration("none", "none"),
    48: Configuration("none", "none"),
    24: Configuration("fp8", "none"),
    16: Configuration("int8", "model"),
    12: Configuration("nf4", "model"),
    8: Configuration("none", "group"),
}


@pytest.fixture
def every_backend(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda quantize: True)


@pytest.mark.parametrize("card", sorted(EXPECTED))
def test_the_fastest_configuration_that_fits_each_card(every_backend, card):
    config, reason = memory.resolve_configuration(None, None, "cuda", environ={}, mem_get_info=fake_card(card))
    assert config == EXPECTED[card], (card, config)
    assert memory.REQUIRED_GB[(config.quantize, config.offload)] + memory.HEADROOM_GB <= card - 0.4
    assert f"of {card:.1f} GB free" in reason


@pytest.mark.parametrize("entry", ["app", "cli"])
def test_the_app_and_the_cli_choose_and_print_it(every_backend, entry, monkeypatch):
    """Both parse `--quantize` / `--offload` into the same call, which prints the chosen configuration."""
    if entry == "app":
        args = app.parse_args(["--method", "asuka-flux"])
    else:
        args = cli.build_parser().parse_args(["inpaint", "--image", "x", "--mask", "y", "--output", "z"])
    assert args.quantize is None and args.offload is None
    for card, expected in EXPECTED.items():
        config, line = memory.memory_for_method(
            "asuka-flux", args.quantize, args.offload, "cuda", environ={}, mem_get_info=fake_card(card)
        )
        assert config == expected and line.startswith(f"memory: {expected.describe()} (")


def test_the_app_reads_the_flags_from_the_environment_on_spaces(monkeypatch):
    monkeypatch.setenv("ASUKA_QUANTIZE", "int8")
    monkeypatch.setenv("ASUKA_OFFLOAD", "model")
    args = app.parse_args([])
    assert (args.quantize, args.offload) == ("int8", "model")
    assert app.parse_args(["--quantize", "fp8"]).quantize == "fp8"


def test_a_missing_backend_is_passed_over(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda quantize: quantize != "nf4")
    config, _ = memory.resolve_configuration(None, None, "cuda", environ={}, mem_get_info=fake_card(12))
    assert config == Configuration("none", "group")


def test_a_given_flag_is_kept_and_the_other_chosen(every_backend):
    config, _ = memory.resolve_configuration("int8", None, "cuda", environ={}, mem_get_info=fake_card(24))
    assert config == Configuration("int8", "none")
    config, _ = memory.resolve_configuration(None, "model", "cuda", environ={}, mem_get_info=fake_card(16))
    assert config == Configuration("int8", "model")
    config, _ = memory.resolve_configuration("gguf:/models/flux-fill-Q8_0.gguf", None, "cuda", {}, fake_card(16))
    assert config == Configuration("gguf", "model", "/models/flux-fill-Q8_0.gguf")
    config, reason = memory.resolve_configuration("nf4", "none", "cuda", environ={}, mem_get_info=None)
    assert config == Configuration("nf4", "none") and reason == "as given"


def test_zero_gpu_and_the_cpu_never_measure():
    def no_gpu(device):
        raise AssertionError("mem_get_info called")

    config, reason = memory.resolve_configuration(None, None, "cuda", {"SPACES_ZERO_GPU": "true"}, no_gpu)
    assert config == Configuration("none", "none") and "ZeroGPU" in reason
    assert memory.resolve_configuration(None, None, "cpu", {}, no_gpu)[0] == Configuration("none", "none")


@pytest.mark.parametrize(
    "quantize, offload, message",
    [
        ("int4", None, "accepted: none, int8, fp8, nf4 or gguf:PATH"),
        ("gguf:", None, "gguf:PATH"),
        (None, "disk", "accepted: none, model"),
    ],
)
def test_bad_flags_name_what_is_accepted(quantize, offload, message):
    with pytest.raises(ValueError, match=message):
        memory.resolve_configuration(quantize, offload, "cuda", environ={}, mem_get_info=fake_card(24))


def test_methods_without_a_memory_plan_refuse_the_flags():
    assert memory.memory_for_method("asuka-sd", None, None, "cuda") == (None, "")
    with pytest.raises(ValueError, match="apply to ASUKA-FLUX"):
        memory.memory_for_method("asuka-sd", "int8", None, "cuda")


def test_the_configuration_is_applied_to_a_pipeline():
    """`place_pipeline` uses diffusers' own switches: fp8 layerwise casting and group offloading here, on the tiny
    pipeline (CPU as the device)."""
    from asuka.testing import make_tiny_pipeline

    pipe = memory.place_pipeline(make_tiny_pipeline("flux"), Configuration("fp8", "group"), "cpu")
    assert pipe.transformer.x_embedder.weight.dtype == torch.float8_e4m3fn
    assert pipe.transformer._diffusers_hook.get_hook("group_offloading") is not None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        memory.place_pipeline(make_tiny_pipeline("flux"), Configuration("none", "sequential"), "cpu")
