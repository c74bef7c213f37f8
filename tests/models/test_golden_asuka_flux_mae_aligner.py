"""Golden conformance of `AsukaMAE` / `AsukaAligner` with the authors' released modules, and the key mapping.

The golden tensors (tests/fixtures, copied from the reference data) were computed by the reference code with
seeded weights; `seeded.seeded_state_dict` rebuilds those weights in the release's key layout.
"""

import pytest
import torch
from safetensors.torch import load_file

from asuka.convert.asuka_flux_keys import convert_aligner_state_dict, convert_mae_state_dict
from asuka.models import AsukaAligner, AsukaMAE
from asuka.models.mae import IMAGENET_MEAN, IMAGENET_STD
from asuka.testing.mae import TINY_MAE_CONFIG
from tests.support.seeded import FIXTURES, MAE_SINCOS_KEYS, load_checkpoint_keys, relative_error, seeded_state_dict


def test_mae_matches_reference():
    golden = load_file(FIXTURES / "golden_mae.safetensors")
    checkpoint = {"model": seeded_state_dict(load_checkpoint_keys("mae_300.pth:model"), sincos_keys=MAE_SINCOS_KEYS)}
    model = AsukaMAE().eval()
    model.load_state_dict(convert_mae_state_dict(checkpoint), strict=True)

    normalised, _ = model.preprocess(golden["image_01"], golden["mask"])
    assert torch.allclose(normalised, golden["mae_input"], atol=1e-6)
    with torch.no_grad():
        out = model(golden["image_01"], golden["mask"])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert relative_error(out.prior, golden["prior"]) <= 1e-4
    assert relative_error((out.reconstruction - mean) / std, golden["reconstruction"]) <= 1e-4


def test_aligner_768_matches_reference():
    golden = load_file(FIXTURES / "golden_aligner_768.safetensors")
    release = seeded_state_dict(load_checkpoint_keys("asuka_alignment_clip.pt"))
    converted = convert_aligner_state_dict(release)
    assert not any("modulation" in key for key in converted)
    model = AsukaAligner(in_dim=512, hidden_dim=768).eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = model(golden["prior"])
    assert relative_error(out.tokens, golden["tokens"]) <= 1e-4
    assert relative_error(out.pooled, golden["pooled"]) <= 1e-4


def test_release_key_tables_map_completely():
    """Every released key is either mapped into the module or deliberately dropped (shape-level check,
    so the 4096-wide aligner is checked without materialising its weights)."""
    mae_keys = dict(load_checkpoint_keys("mae_300.pth:model"))
    with torch.device("meta"):
        mae = AsukaMAE()
    assert {k: list(v.shape) for k, v in mae.state_dict().items()} == mae_keys

    for name, hidden in (("asuka_alignment_clip.pt", 768), ("asuka_alignment_t5.pt", 4096)):
        keys = load_checkpoint_keys(name)
        with torch.device("meta"):
            release = {key: torch.empty(shape) for key, shape in keys}
            converted = convert_aligner_state_dict(release)
            model = AsukaAligner(in_dim=512, hidden_dim=hidden)
        kept = {id(value) for value in converted.values()}
        dropped = {key for key, value in release.items() if id(value) not in kept}
        assert dropped == {f"{i}.modulation.lin.{p}" for i in range(1, 5) for p in ("weight", "bias")}
        assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------- converter errors


def tiny_release_aligner(hidden: int = 32, blocks: int = 2) -> dict:
    """A small state dict in the release's `nn.Sequential` layout."""
    keys = [("0.weight", [hidden, 16]), ("0.bias", [hidden])]
    for i in range(1, blocks + 1):
        keys += [
            (f"{i}.linear1.weight", [7 * hidden, hidden]),
            (f"{i}.linear1.bias", [7 * hidden]),
            (f"{i}.linear2.weight", [hidden, 5 * hidden]),
            (f"{i}.linear2.bias", [hidden]),
            (f"{i}.norm.query_norm.scale", [8]),
            (f"{i}.norm.key_norm.scale", [8]),
            (f"{i}.modulation.lin.weight", [3 * hidden, hidden]),
            (f"{i}.modulation.lin.bias", [3 * hidden]),
        ]
    keys += [(f"{blocks + 1}.weight", [hidden]), (f"{blocks + 1}.bias", [hidden])]
    return seeded_state_dict(keys)


def test_aligner_conversion_with_null_embeddings():
    release = tiny_release_aligner()
    tokens_null = torch.randn(1, 16, 32)
    converted = convert_aligner_state_dict(release, null_embedding=tokens_null)
    model = AsukaAligner(in_dim=16, hidden_dim=32, num_blocks=2, head_dim=8, num_tokens=16, null_embedding="tokens")
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.null_embed, tokens_null)
    assert torch.equal(model.blocks[1].norm_k.weight, release["2.norm.key_norm.scale"])

    pooled = convert_aligner_state_dict(release, null_embedding=torch.randn(1, 32))
    AsukaAligner(in_dim=16, hidden_dim=32, num_blocks=2, head_dim=8, null_embedding="pooled").load_state_dict(
        pooled, strict=True
    )
    with pytest.raises(ValueError, match="null embedding"):
        convert_aligner_state_dict(release, null_embedding=torch.randn(1, 31))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.update({"2.extra.weight": torch.zeros(3)}), "'2.extra.weight'"),
        (lambda sd: sd.update({"7.weight": torch.zeros(3)}), "'7.weight'"),
        (lambda sd: sd.update({"2.linear2.weight": torch.zeros(32, 100)}), "'2.linear2.weight'"),
        (lambda sd: sd.update({"3.bias": torch.zeros(31)}), "'3.bias'"),
        (lambda sd: sd.pop("1.linear2.bias"), "blocks.0.linear2.bias"),
        (lambda sd: sd.pop("0.weight"), "'0.weight'"),
        (lambda sd: sd.update({"1.linear1.bias": [0.0]}), "'1.linear1.bias'"),
    ],
)
def test_aligner_conversion_errors_name_the_key(edit, match):
    release = tiny_release_aligner()
    edit(release)
    with pytest.raises(ValueError, match=match):
        convert_aligner_state_dict(release)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.update({"cls_token": torch.zeros(1, 1, 32)}), "'cls_token'"),
        (lambda sd: sd.update({"decoder_pos_embed": torch.zeros(1, 17, 32)}), "'decoder_pos_embed'"),
        (lambda sd: sd.pop("alpha"), "alpha"),
        (lambda sd: sd.update({"mask_token": "oops"}), "'mask_token'"),
    ],
)
def test_mae_conversion_errors_name_the_key(edit, match):
    state_dict = dict(AsukaMAE(**TINY_MAE_CONFIG).state_dict())
    assert convert_mae_state_dict(state_dict, config=TINY_MAE_CONFIG).keys() == state_dict.keys()
    edit(state_dict)
    with pytest.raises(ValueError, match=match):
        convert_mae_state_dict({"model": state_dict}, config=TINY_MAE_CONFIG)
