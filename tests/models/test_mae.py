"""Unit tests of `AsukaMAE` on a tiny configuration (milliseconds per forward)."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from asuka.models import AsukaMAE
from asuka.models.mae import get_2d_sincos_pos_embed
from asuka.testing.mae import TINY_MAE_CONFIG
from tests.support.seeded import sincos_pos_embed_2d


def make_tiny_mae(seed: int = 0) -> AsukaMAE:
    torch.manual_seed(seed)
    model = AsukaMAE(**TINY_MAE_CONFIG).eval()
    with torch.no_grad():
        model.alpha.fill_(0.5)  # exercise the partial-patch blend (the released init is 1.0: no blend)
    return model


def make_inputs(height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, height, width, generator=generator)
    mask = torch.zeros(2, 1, height, width)
    # an off-grid rectangle, so some patches are fully and some partially masked
    mask[:, :, height // 7 : height * 4 // 7, width // 5 : width * 3 // 4] = 1
    mask[1, :, : height // 3, : width // 3] = 1
    return image, mask


def fill_hole(image: torch.Tensor, mask: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(mask.bool().expand_as(image), noise, image)


def test_output_shapes_and_num_patches():
    model = make_tiny_mae()
    image, mask = make_inputs(32, 32)
    with torch.no_grad():
        out = model(image, mask)
    assert model.num_patches == 16
    assert out.prior.shape == (2, 16, 32)
    assert out.reconstruction.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.prior(image, mask), out.prior)
        assert torch.equal(model.reconstruct(image, mask), out.reconstruction)
        prior, reconstruction = model(image, mask, return_dict=False)
    assert torch.equal(prior, out.prior) and torch.equal(reconstruction, out.reconstruction)


def test_partial_patches_are_exercised():
    """The default test mask has partially masked patches, so the alpha blend is covered."""
    _, mask = make_inputs(32, 32)
    coverage = F.interpolate(mask, size=(4, 4), mode="area")
    assert ((coverage > 0) & (coverage < 1)).any()
    assert (coverage == 1).any()


@pytest.mark.parametrize("height, width", [(32, 32), (200, 300), (45, 19)])
def test_prior_depends_only_on_visible_pixels(height, width):
    model = make_tiny_mae()
    image, mask = make_inputs(height, width)
    with torch.no_grad():
        reference = model(image, mask)
        changed = model(fill_hole(image, mask, seed=1), mask)
    assert (changed.prior - reference.prior).abs().max() <= 1e-5
    assert (changed.reconstruction - reference.reconstruction).abs().max() <= 1e-5

    # control: changing visible pixels does change the prior
    visible_changed = fill_hole(image, 1 - mask, seed=2)
    with torch.no_grad():
        assert (model.prior(visible_changed, mask) - reference.prior).abs().max() > 1e-3


def test_prior_finite_for_empty_and_full_masks():
    model = make_tiny_mae()
    image, _ = make_inputs(32, 32)
    with torch.no_grad():
        for mask in (torch.zeros(2, 1, 32, 32), torch.ones(2, 1, 32, 32)):
            out = model(image, mask)
            assert torch.isfinite(out.prior).all() and torch.isfinite(out.reconstruction).all()
        full = torch.ones(2, 1, 32, 32)
        other = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        assert torch.equal(model.prior(image, full), model.prior(other, full))  # nothing visible, nothing seen


def test_full_mask_sample_does_not_affect_its_batch_neighbour():
    model = make_tiny_mae()
    image, mask = make_inputs(32, 32)
    batched_mask = torch.cat([mask[:1], torch.ones_like(mask[:1])])
    with torch.no_grad():
        batched = model.prior(image, batched_mask)
        single = model.prior(image[:1], mask[:1])
    assert torch.allclose(batched[:1], single, atol=1e-6)


def test_resizing_and_mask_binarisation():
    model = make_tiny_mae()
    image, mask = make_inputs(32, 32)
    with torch.no_grad():
        reference = model.prior(image, mask)
        # a 2x nearest upscale is undone exactly by area (image) and nearest (mask) downscaling
        upscaled = model.prior(F.interpolate(image, scale_factor=2), F.interpolate(mask, scale_factor=2))
        # soft values are binarised at 0.5
        soft = model.prior(image, mask * 0.6 + (1 - mask) * 0.4)
    assert torch.allclose(upscaled, reference, atol=1e-5)
    assert torch.equal(soft, reference)


def test_reconstruction_is_in_pixel_space():
    """reconstruct() undoes the ImageNet normalisation of decoder_pred's output."""
    model = make_tiny_mae()
    with torch.no_grad():
        model.decoder_pred.weight.zero_()
        model.decoder_pred.bias.zero_()
        out = model.reconstruct(*make_inputs(32, 32))
    expected = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand_as(out)
    assert torch.allclose(out, expected)


def test_pos_embed_is_the_mae_sincos_table():
    model = make_tiny_mae()
    assert torch.equal(model.pos_embed, sincos_pos_embed_2d(32, 4))
    assert torch.equal(model.decoder_pos_embed, sincos_pos_embed_2d(32, 4))
    assert torch.allclose(get_2d_sincos_pos_embed(768, 16), sincos_pos_embed_2d(768, 16))


def test_follows_parameter_dtype():
    model = make_tiny_mae().to(torch.float64)
    image, mask = make_inputs(32, 32)
    with torch.no_grad():
        out = model(image, mask)
    assert out.prior.dtype == torch.float64 and out.reconstruction.dtype == torch.float64


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_mae()
    image, mask = make_inputs(32, 32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = AsukaMAE.from_pretrained(tmp_path).eval()
    assert {key: loaded.config[key] for key in TINY_MAE_CONFIG} == TINY_MAE_CONFIG
    with torch.no_grad():
        expected, actual = model(image, mask), loaded(image, mask)
    assert torch.equal(expected.prior, actual.prior)
    assert torch.equal(expected.reconstruction, actual.reconstruction)


@pytest.mark.parametrize(
    "image_shape, mask_shape, match",
    [
        ((1, 4, 32, 32), (1, 1, 32, 32), "image"),
        ((3, 32, 32), (1, 1, 32, 32), "image"),
        ((1, 3, 32, 32), (1, 3, 32, 32), "mask"),
        ((1, 3, 32, 32), (1, 1, 16, 16), "must match"),
        ((2, 3, 32, 32), (1, 1, 32, 32), "must match"),
        ((1, 3, 0, 32), (1, 1, 0, 32), "non-empty"),
    ],
)
def test_bad_input_raises_value_error(image_shape, mask_shape, match):
    model = make_tiny_mae()
    with pytest.raises(ValueError, match=match):
        model.prior(torch.rand(image_shape), torch.zeros(mask_shape))


def test_integer_image_raises_value_error():
    with pytest.raises(ValueError, match="float"):
        make_tiny_mae().prior(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 1, 32, 32))


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="prior_layer"):
        AsukaMAE(**{**TINY_MAE_CONFIG, "prior_layer": 3})
    with pytest.raises(ValueError, match="multiple"):
        AsukaMAE(**{**TINY_MAE_CONFIG, "image_size": 30})


# ------------------------------------------------------------------------------------------ input order


def test_input_preprocessing_is_validated_and_overridable():
    with pytest.raises(ValueError, match="`input_preprocessing` is 'opencv'; accepted: 'visible', 'reference'"):
        AsukaMAE(**{**TINY_MAE_CONFIG, "input_preprocessing": "opencv"})
    model = make_tiny_mae()
    image, mask = make_inputs(45, 19)
    with pytest.raises(ValueError, match="`mae_input_preprocessing` is 'Reference'; accepted: 'visible', 'reference'"):
        model.prior(image, mask, mae_input_preprocessing="Reference")
    torch.manual_seed(0)
    reference = AsukaMAE(**{**TINY_MAE_CONFIG, "input_preprocessing": "reference"}).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(reference.prior(image, mask), model.prior(image, mask, "reference"))
        assert torch.equal(reference.prior(image, mask, "visible"), model.prior(image, mask))
        out = reference(image, mask, mae_input_preprocessing="visible")
        assert torch.equal(out.reconstruction, model.reconstruct(image, mask))
        # the two orders differ off the working size: the reference resizes the hole's content into the border
        assert not torch.equal(model.prior(image, mask), model.prior(image, mask, "reference"))


@pytest.mark.parametrize("input_preprocessing", ["visible", "reference"])
def test_input_preprocessing_round_trips(tmp_path, input_preprocessing):
    model = AsukaMAE(**{**TINY_MAE_CONFIG, "input_preprocessing": input_preprocessing})
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["input_preprocessing"] == input_preprocessing
    assert AsukaMAE.from_pretrained(tmp_path).config.input_preprocessing == input_preprocessing


def test_a_folder_without_input_preprocessing_loads_as_visible_with_a_warning(tmp_path, caplog):
    AsukaMAE(**{**TINY_MAE_CONFIG, "input_preprocessing": "reference"}).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert AsukaMAE.from_pretrained(tmp_path).config.input_preprocessing == "reference"
    assert not caplog.records  # a folder that names its order loads silently
    config = json.loads((tmp_path / "config.json").read_text())
    del config["input_preprocessing"]  # a folder written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        model = AsukaMAE.from_pretrained(tmp_path)
    assert model.config.input_preprocessing == "visible"
    (record,) = caplog.records
    assert "input_preprocessing" in record.getMessage() and "python -m asuka.convert asuka-flux" in record.getMessage()
    assert "\n" not in record.getMessage()
