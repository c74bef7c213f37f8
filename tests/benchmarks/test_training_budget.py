"""benchmarks/training_budget.py: its training steps train what the scripts train, the budget arithmetic, the FLUX
budget of docs/training.md recounted, the memory counter against hand counts, and the FLUX FSDP config."""

import functools
import re

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from asuka.testing.flux import make_tiny_flux_components
from asuka.testing.sd import make_tiny_sd_components
from benchmarks import aligner_precompute, flops, meta_memory, training_budget
from tests.support import ROOT


TRAINED = {("sd", "aligner"): {"aligner"}, ("sd", "decoder"): {"decoder"}, ("flux", "decoder"): {"decoder"}}
TRAINED[("flux", "aligner")] = {"token_aligner", "pooled_aligner"}
TRAINED[("sd", "mae")] = TRAINED[("flux", "mae")] = {"mae"}
TINY = {"sd": make_tiny_sd_components, "flux": make_tiny_flux_components}


@pytest.mark.parametrize(("backbone", "name"), sorted(TRAINED))
def test_steps_update_only_the_trained_component(backbone, name):
    components = TINY[backbone](0)
    for key, module in components.items():
        if key != "scheduler":
            module.eval().requires_grad_(False)
    before = {k: {n: p.clone() for n, p in m.state_dict().items()} for k, m in components.items() if k != "scheduler"}
    training_budget.BACKBONES[backbone][0][name](components, 32, 2, "cpu", torch.float32)()
    changed = {
        key
        for key, state in before.items()
        if any(not torch.equal(v, components[key].state_dict()[n]) for n, v in state.items())
    }
    assert changed == TRAINED[(backbone, name)]


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_steps_call_the_training_functions_with_the_backbones_spec(backbone, monkeypatch):
    """Each backbone's aligner step computes its loss with `asuka_training.aligner_loss` and its decoder step its x0
    with `asuka_training.one_step_x0`, the functions train_aligner.py and train_decoder.py call, on the backbone's
    spec (its objective: SD's ε or v as the scheduler says, FLUX's flow matching; the VAE's shift)."""
    spec = {"sd": training_budget.SD15_INPAINTING, "flux": training_budget.FLUX_FILL}[backbone]
    seen = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, **kwargs: seen.append((name, args)) or real(*args, **kwargs))

    spy(aligner_precompute, "aligner_loss")
    spy(training_budget, "one_step_x0")
    runs = training_budget.BACKBONES[backbone][0]
    for name in ("aligner", "decoder"):
        runs[name](TINY[backbone](0), 32, 2, "cpu", torch.float32)()
    assert [name for name, _ in seen] == ["aligner_loss", "one_step_x0"]
    assert seen[0][1][0] is spec and seen[1][1][6] is spec


def test_decoder_step_counts_on_meta_what_it_runs_on_cpu():
    """The budget's FLOPs are counted on meta tensors, its step times measured on real ones: both must be the same
    step (the decoder's hole box included, which meta tensors cannot yield from the mask)."""
    on_meta = training_budget.RUNS["decoder"](flops.meta_sd_components(tiny=True), 32, 2, "meta", torch.float32)
    on_cpu = training_budget.RUNS["decoder"](
        training_budget.build_sd_components(tiny=True), 32, 2, "cpu", torch.float32
    )
    with sdpa_kernel(SDPBackend.MATH):  # what meta tensors decompose attention into
        assert flops.count_flops(on_meta, grad=True) == flops.count_flops(on_cpu, grad=True) > 0


def test_budget_table_arithmetic():
    table = training_budget.budget_table({"aligner": 1e12, "decoder": 2e12}, tflops=100.0)
    # aligner: 20,000 x 8 samples x 1 TFLOP at 100 TFLOP/s = 1600 s = 0.44 h; decoder: 50,000 x 40 x 2 TFLOP = 11.1 h
    assert "| aligner | 20,000 steps x batch 8 | 1.00 | 160 | 0.4 | 0.1 h |" in table
    assert "| decoder | 50,000 steps x batch 40 | 2.00 | 4,000 | 11.1 | 1.4 h |" in table


@pytest.mark.parametrize("name", ["aligner", "decoder"])
def test_flux_steps_count_on_meta_what_they_run_on_cpu(name):
    run = training_budget.FLUX_RUNS[name]
    on_meta = run(flops.meta_flux_components(tiny=True), 32, 2, "meta", torch.float32)
    on_cpu = run(training_budget.build_flux_components(True, 1, 1), 32, 2, "cpu", torch.float32)
    with sdpa_kernel(SDPBackend.MATH):
        assert flops.count_flops(on_meta, grad=True) == flops.count_flops(on_cpu, grad=True) > 0


@pytest.fixture(scope="module")
def full_size_flux():
    return training_budget.meta_components("flux")


def documented_flux_tflop() -> dict[str, float]:
    """The "Budget for FLUX.1-Fill" table of docs/training.md: {step: TFLOP per sample}."""
    section = (ROOT / "docs" / "training.md").read_text().split("### Budget for FLUX.1-Fill")[1]
    rows = re.findall(r"^\| (aligner|decoder) \| (\d+) \| ([\d.]+) \|", section, flags=re.M)
    return {name: (int(size), float(tflop)) for name, size, tflop in rows}


def test_flux_budget_in_the_docs_is_what_the_command_counts(full_size_flux):
    """The documented FLUX FLOPs per sample are recounted on the full-size meta models at the schedules' sizes."""
    documented, counted = documented_flux_tflop(), {}
    assert set(documented) == {"aligner", "decoder"}
    for name, schedule in training_budget.FLUX_SCHEDULES.items():
        size, tflop = documented[name]
        assert size == schedule["size"]
        counted[name] = training_budget.flops_per_sample(name, size, 2, "flux", full_size_flux)
        assert round(counted[name] / 1e12, 2) == tflop, (name, counted[name])
    # the transformer's forward alone, by hand: every Linear of its blocks once per token of its stream, attention
    # 4 S^2 D per block (QK^T and AV); the aligner step is at least forward + backward to the inputs (2x) of it
    transformer = full_size_flux["transformer"]
    image_tokens, prior_tokens = (512 // 16) ** 2, 256
    per_token = functools.partial(sum_linear_params, transformer)
    double = sum(
        per_token(block, ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out", "ff.")) * image_tokens
        + per_token(block, ("attn.add_", "attn.to_add_out", "ff_context.")) * prior_tokens
        for block in transformer.transformer_blocks
    )
    single = sum(
        per_token(block, ("attn.to_", "proj_mlp", "proj_out")) for block in transformer.single_transformer_blocks
    ) * (image_tokens + prior_tokens)
    heads = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    attention = 4 * (image_tokens + prior_tokens) ** 2 * heads * (len(transformer.transformer_blocks) + 38)
    forward = 2 * (double + single) + attention
    assert 2 * forward < counted["aligner"] < 2 * forward * 1.15


def sum_linear_params(model: torch.nn.Module, block: torch.nn.Module, prefixes: tuple[str, ...]) -> int:
    """Multiply-adds per token of `block`'s Linear layers whose names start with one of `prefixes`."""
    return sum(
        module.weight.numel()
        for name, module in block.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(prefixes)
    )


def test_live_tensor_bytes_by_hand():
    """Storages created inside count until freed, views and in-place results add nothing; tensors that exist before
    count only as inputs of `peak_bytes` (an inference phase's, without autograd)."""
    x = torch.zeros(1000, device="meta")  # exists before: not counted
    with meta_memory.LiveTensorBytes() as tracker:
        a = x * 2  # 4,000 bytes alive
        b = a + 1  # 8,000
        del a  # 4,000
        c = b.view(10, 100) * 3  # a view shares its storage; then 8,000
        c.add_(1)  # in place: nothing new
    assert (tracker.peak, tracker.live) == (8000, 8000)
    del b, c
    assert tracker.live == 0

    x = torch.zeros(1000)  # 4000 bytes, an input

    def f():
        y = x * 2  # +4000
        z = y.view(10, 100) + 1  # +4000 (the view shares y's)
        return z.sum()  # +4 while y and z are alive

    assert meta_memory.peak_bytes(f, (x, x.view(10, 100)), grad=False) == 4000 + 4000 + 4000 + 4


def test_fused_attention_keeps_output_and_logsumexp_only():
    """What a forward leaves for the backward: the flash kernel's output (bf16) and log-sum-exp (fp32, per query),
    never the S x S attention matrix that the math decomposition keeps; with a boolean mask, the memory-efficient
    kernel's (its log-sum-exp padded to 32 rows) and the additive bias SDPA makes of the mask."""
    batch, heads, tokens, width = 1, 4, 256, 32
    q, k, v = (
        torch.zeros(batch, heads, tokens, width, device="meta", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    with meta_memory.fused_attention(), meta_memory.LiveTensorBytes() as tracker:
        out = F.scaled_dot_product_attention(q, k, v)
    # + 24 bytes: the kernel's dropout RNG seed and offset (int64[2] and int64[])
    assert tracker.live == batch * heads * tokens * (width * 2 + 4) + 24
    with meta_memory.LiveTensorBytes() as math:
        out = F.scaled_dot_product_attention(q, k, v)
    assert math.live >= batch * heads * tokens * tokens * 2  # the attention matrix

    mask = torch.ones(tokens, tokens, dtype=torch.bool, device="meta")
    with meta_memory.fused_attention(), meta_memory.LiveTensorBytes() as masked:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    bias = tokens * tokens * 2  # bf16, saved for the backward
    # + 16 bytes: the seed and offset (two int64[])
    assert masked.live == batch * heads * tokens * width * 2 + batch * heads * 256 * 4 + bias + 16
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
    del out


def test_checkpointing_lowers_the_flux_aligner_steps_peak():
    """With a tiny transformer deep enough for its blocks' activations to dominate the step (12 single blocks)."""
    peaks = {}
    for checkpointing in (False, True):
        components = flops.meta_flux_components(tiny=True)
        with torch.device("meta"):
            transformer = type(components["transformer"]).from_config(
                components["transformer"].config, num_single_layers=12
            )
        components["transformer"] = transformer.requires_grad_(False)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        step = training_budget.flux_aligner_training_run(components, 64, 2, "meta", torch.float32)
        step()
        peaks[checkpointing] = meta_memory.peak_bytes(step)
    assert 0 < peaks[True] < 0.8 * peaks[False], peaks


def test_flux_fsdp_config_makes_one_unit_per_transformer_block(monkeypatch, full_size_flux):
    """`accelerate launch --config_file training/configs/fsdp_flux.yaml` gives FSDP over 8 processes whose wrap
    policy makes each FLUX transformer block one unit, and none of a block's parts alone."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    config = ROOT / "training" / "configs" / "fsdp_flux.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(config), "train_aligner.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == training_budget.FSDP_GPUS
    for key, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert str(plugin.sharding_strategy) == "ShardingStrategy.FULL_SHARD" and plugin.use_orig_params
    transformer = full_size_flux["transformer"]
    plugin.set_auto_wrap_policy(transformer)

    def wrapped(module: torch.nn.Module) -> bool:
        numel = sum(p.numel() for p in module.parameters())
        return plugin.auto_wrap_policy(module=module, recurse=False, nonwrapped_numel=numel)

    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert len(blocks) == 57 and all(wrapped(block) for block in blocks)
    assert not any(wrapped(child) for block in blocks for child in block.children())
