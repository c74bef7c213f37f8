"""Golden conformance of AsukaDecoder with the authors' released decoder, and the key-mapping errors.

The release-format checkpoint is rebuilt from the key list with the reference README's seeding rule
(tests/support/seeded.py), converted with the real key mapping, loaded strictly, and compared with the output
of the authors' module on the same seeded weights (tests/fixtures/golden_decoder.safetensors).
"""

import pytest
import torch
from safetensors.torch import load_file

from asuka.convert.asuka_flux_keys import ASUKA_FLUX_DECODER_CONFIG, convert_decoder_state_dict
from asuka.models.decoder import AsukaDecoder
from tests.support import FIXTURES
from tests.support.seeded import load_checkpoint_keys, seeded_state_dict


GOLDEN = FIXTURES / "golden_decoder.safetensors"
DECODER_KEYS = "asuka_decoder.ckpt:state_dict (each key prefixed 'decoder.')"


@pytest.fixture(scope="module")
def release_state_dict() -> dict:
    """`checkpoint["state_dict"]` as the release file holds it: decoder keys plus unrelated training keys."""
    state_dict = {"decoder." + k: v for k, v in seeded_state_dict(load_checkpoint_keys(DECODER_KEYS)).items()}
    state_dict["encoder.conv_in.weight"] = torch.zeros(128, 3, 3, 3)
    state_dict["quant_conv.weight"] = torch.zeros(32, 32, 1, 1)
    state_dict["loss.logvar"] = torch.zeros(())
    return state_dict


def test_golden_decoder_output(release_state_dict):
    converted = convert_decoder_state_dict(release_state_dict, ASUKA_FLUX_DECODER_CONFIG)
    with torch.device("meta"):
        decoder = AsukaDecoder(**ASUKA_FLUX_DECODER_CONFIG)
    decoder.load_state_dict(converted, strict=True, assign=True)
    decoder.eval()
    golden = load_file(GOLDEN)
    with torch.no_grad():
        out = decoder(golden["z_unscaled"], golden["image"], golden["mask"]).sample
    relative_error = (out - golden["out"]).norm() / golden["out"].norm()
    assert out.shape == golden["out"].shape == (1, 3, 64, 64)
    assert relative_error <= 1e-4, f"relative error {relative_error:.2e}"


def test_conversion_keeps_exactly_the_used_keys(release_state_dict):
    converted = convert_decoder_state_dict(release_state_dict, ASUKA_FLUX_DECODER_CONFIG)
    with torch.device("meta"):
        expected = AsukaDecoder(**ASUKA_FLUX_DECODER_CONFIG).state_dict()
    assert converted.keys() == expected.keys()
    # Attention projections: 1x1 convs in the release, linear layers in diffusers.
    q = release_state_dict["decoder.mid.attn_1.q.weight"]
    assert torch.equal(converted["decoder.mid_block.attentions.0.to_q.weight"], q[:, :, 0, 0])
    # LDM counts up levels from full resolution, diffusers from the latent resolution.
    assert torch.equal(
        converted["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"],
        release_state_dict["decoder.up.0.block.0.nin_shortcut.weight"],
    )
    assert torch.equal(
        converted["condition_encoder.layers.4.weight"], release_state_dict["decoder.encoder.layers.4.weight"]
    )
    # The release's unused transposed convolutions are dropped, not mapped.
    assert not any("up_layers" in key or "deconv" in key for key in converted)


def test_wrong_shape_names_the_key(release_state_dict):
    broken = dict(release_state_dict)
    broken["decoder.up.2.block.1.conv1.weight"] = torch.zeros(512, 512, 1, 1)
    with pytest.raises(ValueError, match=r"decoder\.up\.2\.block\.1\.conv1\.weight"):
        convert_decoder_state_dict(broken, ASUKA_FLUX_DECODER_CONFIG)


@pytest.mark.parametrize(
    "key", ["decoder.up.4.block.0.conv1.weight", "decoder.mid.attn_1.extra.weight", "decoder.bogus"]
)
def test_unexpected_decoder_key_is_named(release_state_dict, key):
    broken = dict(release_state_dict)
    broken[key] = torch.zeros(3)
    with pytest.raises(ValueError, match="Unexpected decoder key.*" + key.replace(".", r"\.")):
        convert_decoder_state_dict(broken, ASUKA_FLUX_DECODER_CONFIG)


@pytest.mark.parametrize(
    "removed, named",
    [
        (["decoder.up.1.upsample.conv.bias"], r"decoder\.up\.1\.upsample\.conv\.bias"),
        (["decoder.conv_out.weight", "decoder.conv_out.bias"], r"decoder\.conv_out\.weight"),
        (["decoder.encoder.layers.2.bias"], r"condition_encoder\.layers\.2\.bias"),
    ],
)
def test_missing_key_is_named(release_state_dict, removed, named):
    broken = {k: v for k, v in release_state_dict.items() if k not in removed}
    with pytest.raises(ValueError, match="Missing decoder key.*" + named):
        convert_decoder_state_dict(broken, ASUKA_FLUX_DECODER_CONFIG)


def test_non_tensor_value_is_refused(release_state_dict):
    broken = dict(release_state_dict)
    broken["decoder.norm_out.bias"] = [0.0] * 128
    with pytest.raises(ValueError, match=r"decoder\.norm_out\.bias.*not a tensor"):
        convert_decoder_state_dict(broken, ASUKA_FLUX_DECODER_CONFIG)
