"""StrDiffusionPipeline on tiny random networks: sizes, exact unmasked pixels, batching, determinism,
fewer steps, quirk flags, structure extraction against the reference golden, save/load."""

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline, extract_structure
from asuka.testing import make_tiny_pipeline
from tests.support import FIXTURES


FIXTURES = FIXTURES / "strdiffusion"


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(kind="strdiffusion")


def inputs(batch=1, h=20, w=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, h, w, generator=g)
    hole = torch.zeros(batch, 1, h, w)
    hole[:, :, h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 1
    return image, hole


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_structure_extraction_matches_reference():
    golden = load_file(str(FIXTURES / "golden_structure_extraction.safetensors"))
    gray, edge2 = extract_structure(golden["image_rgb"], sigma=2.0)
    _, edge3 = extract_structure(golden["image_rgb"], sigma=3.0)
    assert torch.allclose(gray, golden["gray"], atol=1e-6)
    assert torch.equal(edge2, golden["edge_sigma2_test"]) and torch.equal(edge3, golden["edge_sigma3_train"])
    # off the k/255 grid the uint8 conversion truncates; rounding instead would change the maps
    off = golden["offgrid.image_rgb"]
    gray_off, edge_off = extract_structure(off, sigma=2.0)
    assert torch.allclose(gray_off, golden["offgrid.gray"], atol=1e-6)
    assert torch.equal(edge_off, golden["offgrid.edge_sigma2_test"])
    gray_round, _ = extract_structure(off, sigma=2.0, round_input=True)
    assert not torch.allclose(gray_round, golden["offgrid.gray"], atol=1e-6)


def test_tiny_end_to_end_sizes_and_unmasked_pixels(pipe):
    image, hole = inputs(h=20, w=30)
    out = pipe(image, hole, generator=gens(0), output_type="pt")
    assert out.images.shape == image.shape  # working size is 16x16, output back at 20x30
    keep = (hole == 0).expand_as(image)
    assert torch.equal(out.images[keep], image[keep])
    assert not torch.equal(out.images, image)  # the hole was repainted
    # PIL in, PIL out, white = hole
    pil = PIL.Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    mask = PIL.Image.fromarray((hole[0, 0].numpy() * 255).astype(np.uint8))
    result = pipe(pil, mask, generator=gens(0)).images[0]
    assert result.size == pil.size
    np.testing.assert_array_equal(
        np.asarray(result)[hole[0, 0].numpy() == 0], np.asarray(pil)[hole[0, 0].numpy() == 0]
    )


def test_batch_equals_per_sample_runs(pipe):
    image, hole = inputs(batch=2)
    hole[1, :, :4] = 1  # different masks per sample
    both = pipe(image, hole, generator=gens(3, 4), output_type="pt")
    for i, seed in enumerate((3, 4)):
        one = pipe(image[i : i + 1], hole[i : i + 1], generator=gens(seed), output_type="pt")
        assert one.decisions[0] == both.decisions[i]
        torch.testing.assert_close(one.images[0], both.images[i], rtol=1e-4, atol=1e-5)
    assert both.decisions[0] and both.decisions[1]  # resampling did run


def test_generator_determinism_and_fewer_steps(pipe):
    image, hole = inputs()
    a = pipe(image, hole, generator=gens(7), output_type="latent").images
    b = pipe(image, hole, generator=gens(7), output_type="latent").images
    c = pipe(image, hole, generator=gens(8), output_type="latent").images
    assert torch.equal(a, b) and not torch.equal(a, c)
    fast = pipe(image, hole, num_inference_steps=4, generator=gens(7), output_type="pt")
    assert fast.decisions == [[]]  # fewer-step mode skips resampling
    assert torch.isfinite(fast.images).all() and fast.images.shape == image.shape
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(image, hole, num_inference_steps=11)


def test_quirk_flags_default_off_and_change_behaviour():
    image, hole = inputs()
    base = make_tiny_pipeline(kind="strdiffusion")
    flags = [
        "refresh_discriminator_reference",
        "fix_resampling_levels",
        "late_structure_rgb2gray",
        "accept_higher_discriminator",
        "discriminator_full_state",
        "round_structure_input",
    ]
    assert not any(base.config[f] for f in flags)
    assert (base.config.resample_u_max, base.config.resample_u_min) == (6, 3)
    assert (base.config.resample_jump, base.config.resample_depth, base.config.canny_sigma) == (5, 5, 2.0)
    ref = base(image, hole, generator=gens(1), output_type="latent")
    for flag in flags:
        fixed = make_tiny_pipeline(kind="strdiffusion", **{flag: True})
        out = fixed(image, hole, generator=gens(1), output_type="latent")
        assert torch.isfinite(out.images).all()
        changed = not torch.equal(out.images, ref.images) or out.decisions != ref.decisions
        assert changed, f"{flag} had no effect"


def test_save_load_roundtrip_and_bad_inputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "texture_unet" / "diffusion_pytorch_model.safetensors").exists()
    again = StrDiffusionPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    assert again.config.resolution == 16 and again.scheduler.config.num_train_timesteps == 10
    image, hole = inputs()
    # The loaded networks agree with the saved ones to float32 round-off (~1e-6 relative), which the ten steps carry
    # into the latents; outside the hole those are unclamped and reach tens.
    torch.testing.assert_close(
        again(image, hole, generator=gens(2), output_type="latent").images,
        pipe(image, hole, generator=gens(2), output_type="latent").images,
        rtol=1e-5,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="output_type"):
        pipe(image, hole, output_type="jpeg")
    with pytest.raises(ValueError, match="aspect"):
        pipe(image, torch.zeros(1, 1, 30, 10))
    with pytest.raises(ValueError, match="generators"):
        pipe(image, hole, generator=gens(1, 2))
