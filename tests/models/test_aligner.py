"""Unit tests of `AsukaAligner` on a tiny configuration."""

import pytest
import torch
import torch.nn.functional as F

from asuka.models import AsukaAligner, AsukaAlignerOutput


TINY_CONFIG = dict(in_dim=16, hidden_dim=32, num_blocks=2, head_dim=8, num_tokens=16)


def make_tiny_aligner(seed: int = 0, **kwargs) -> AsukaAligner:
    torch.manual_seed(seed)
    model = AsukaAligner(**{**TINY_CONFIG, **kwargs}).eval()
    with torch.no_grad():
        for block in model.blocks:  # non-trivial q/k norm scales
            block.norm_q.weight.uniform_(0.5, 1.5)
            block.norm_k.weight.uniform_(0.5, 1.5)
        if model.null_embed is not None:
            model.null_embed.normal_()
    return model


def make_prior(batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, 16, 16, generator=torch.Generator().manual_seed(seed))


def reference_block(block, x: torch.Tensor) -> torch.Tensor:
    """The block written out from its definition, with an explicit softmax attention."""
    batch_size, length, dim = x.shape
    heads = dim // block.head_dim
    h = F.layer_norm(x, (dim,), eps=1e-6) @ block.linear1.weight.T + block.linear1.bias
    qkv, mlp = h[..., : 3 * dim], h[..., 3 * dim :]
    q, k, v = qkv.reshape(batch_size, length, 3, heads, block.head_dim).permute(2, 0, 3, 1, 4)

    def rms(t, scale):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * scale

    q, k = rms(q, block.norm_q.weight), rms(k, block.norm_k.weight)
    weights = torch.softmax(q @ k.transpose(-1, -2) / block.head_dim**0.5, dim=-1)
    attn = (weights @ v).transpose(1, 2).reshape(batch_size, length, dim)
    mlp = 0.5 * mlp * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (mlp + 0.044715 * mlp**3)))
    return x + torch.cat([attn, mlp], dim=-1) @ block.linear2.weight.T + block.linear2.bias


def test_shapes_and_pooling():
    model = make_tiny_aligner()
    with torch.no_grad():
        out = model(make_prior())
    assert isinstance(out, AsukaAlignerOutput)
    assert out.tokens.shape == (2, 16, 32) and out.pooled.shape == (2, 32)
    assert torch.allclose(out.pooled, out.tokens.mean(1))
    with torch.no_grad():
        tokens, pooled = model(make_prior(), return_dict=False)
    assert torch.equal(tokens, out.tokens) and torch.equal(pooled, out.pooled)


def test_matches_explicit_computation():
    model = make_tiny_aligner()
    prior = make_prior()
    with torch.no_grad():
        x = prior @ model.proj_in.weight.T + model.proj_in.bias
        for block in model.blocks:
            x = reference_block(block, x)
        expected = F.layer_norm(x, (32,), model.norm_out.weight, model.norm_out.bias, eps=1e-5)
        actual = model(prior).tokens
    assert torch.allclose(actual, expected, atol=1e-5)


def test_no_positional_encoding():
    """Without positional encoding the aligner is permutation-equivariant over tokens."""
    model = make_tiny_aligner()
    prior = make_prior()
    permutation = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = model(prior).tokens
        permuted = model(prior[:, permutation]).tokens
    assert torch.allclose(permuted, tokens[:, permutation], atol=1e-5)


def test_token_null_embedding():
    model = make_tiny_aligner(null_embedding="tokens", condition_weight=0.5)
    plain = make_tiny_aligner()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "null_embed"})
    prior = make_prior()
    null = model.null_embed
    with torch.no_grad():
        raw = plain(prior).tokens
        out = model(prior)  # config weight 0.5
        zero = model(prior, condition_weight=0.0)
        one = model(prior, condition_weight=1.0)
    assert torch.allclose(out.tokens, null + 0.5 * (raw - null), atol=1e-6)
    assert torch.allclose(out.pooled, out.tokens.mean(1))
    assert torch.equal(zero.tokens, null.expand(2, -1, -1))
    assert torch.allclose(one.tokens, raw, atol=1e-6)


def test_pooled_null_embedding():
    model = make_tiny_aligner(null_embedding="pooled")
    prior = make_prior()
    null = model.null_embed
    with torch.no_grad():
        raw = model(prior, condition_weight=1.0)
        zero = model(prior, condition_weight=0.0)
        half = model(prior, condition_weight=0.5)
    assert torch.equal(zero.pooled, null.expand(2, -1))
    assert torch.equal(zero.tokens, raw.tokens)  # tokens are not interpolated
    assert torch.allclose(half.pooled, null + 0.5 * (raw.tokens.mean(1) - null), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_aligner(null_embedding="tokens", condition_weight=0.25)
    model.save_pretrained(tmp_path)
    loaded = AsukaAligner.from_pretrained(tmp_path).eval()
    assert loaded.config.null_embedding == "tokens" and loaded.config.condition_weight == 0.25
    prior = make_prior()
    with torch.no_grad():
        expected, actual = model(prior), loaded(prior)
    assert torch.equal(expected.tokens, actual.tokens) and torch.equal(expected.pooled, actual.pooled)


def test_follows_parameter_dtype():
    model = make_tiny_aligner(null_embedding="pooled").to(torch.float64)
    out = model(make_prior())
    assert out.tokens.dtype == torch.float64 and out.pooled.dtype == torch.float64


@pytest.mark.parametrize(
    "prior, kwargs, match",
    [
        (torch.randn(2, 16, 15), {}, "prior"),
        (torch.randn(16, 16), {}, "prior"),
        (torch.randn(2, 8, 16), {"null_embedding": "tokens"}, "tokens"),
        (torch.randn(2, 16, 16), {"condition_weight_call": 0.5}, "null embedding"),
    ],
)
def test_bad_input_raises_value_error(prior, kwargs, match):
    call_weight = kwargs.pop("condition_weight_call", None)
    model = make_tiny_aligner(**kwargs)
    with pytest.raises(ValueError, match=match):
        model(prior, condition_weight=call_weight)


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="null_embedding"):
        AsukaAligner(**TINY_CONFIG, null_embedding="text")
    with pytest.raises(ValueError, match="head_dim"):
        AsukaAligner(**{**TINY_CONFIG, "head_dim": 12})
