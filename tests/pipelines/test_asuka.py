"""AsukaPipeline: diffusers equivalence, sizes, pixels, round trips, callbacks, outputs and errors."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AsymmetricAutoencoderKL

from asuka import AsukaPipeline
from asuka.methods import seeded_generator
from asuka.pipelines.inpaint_steps import plan_working_region
from asuka.testing import make_tiny_pipeline
from tests.support.hub import run_hub_format_without_asuka
from tests.support.inputs import box_mask, random_image


STEPS = 2


def make_mask(height: int, width: int, box=None) -> PIL.Image.Image:
    """A white rectangle `box` = (x0, y0, x1, y1) (default: the middle third) on black."""
    x0, y0, x1, y1 = box or (
        width // 3,
        height // 3,
        max(width // 3 + 1, 2 * width // 3),
        max(height // 3 + 1, 2 * height // 3),
    )
    return box_mask(height, width, rows=(y0, y1), cols=(x0, x1))


@pytest.fixture(scope="module")
def pipe() -> AsukaPipeline:
    return make_tiny_pipeline("sd")


def test_equals_diffusers_inpaint_pipeline_with_same_embeddings():
    asuka = make_tiny_pipeline("sd", decoder=None)
    backbone = make_tiny_pipeline("sd-backbone")
    image, mask = random_image(64, 64), make_mask(64, 64)
    embeds = torch.randn(1, 16, 32, generator=seeded_generator(3))
    expected = backbone(
        prompt_embeds=embeds,
        image=image,
        mask_image=mask,
        height=64,
        width=64,
        guidance_scale=1.0,
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        output_type="np",
    ).images
    ours = asuka(
        image,
        mask,
        prompt_embeds=embeds,
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        keep_unmasked=False,
        output_type="np",
    ).images
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-5


def test_asuka_conditioning_differs_from_given_embeddings(pipe):
    image, mask = random_image(64, 64), make_mask(64, 64)
    prior_run = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    zeros_run = pipe(
        image,
        mask,
        prompt_embeds=torch.zeros(1, 16, 32),
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        output_type="np",
    ).images
    assert np.abs(prior_run - zeros_run).max() > 1e-4


@pytest.mark.parametrize("size", [(64, 64), (123, 77), (77, 1000), (1000, 750)])
def test_output_has_input_size_and_exact_unmasked_pixels(pipe, size):
    width, height = size
    image, mask = random_image(height, width), make_mask(height, width)
    out = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0)).images[0]
    assert out.size == (width, height)
    hole = np.asarray(mask) > 127
    assert np.array_equal(np.asarray(out)[~hole], np.asarray(image)[~hole])
    assert not np.array_equal(np.asarray(out)[hole], np.asarray(image)[hole])


def test_large_image_works_on_a_crop_around_a_small_mask(pipe):
    width, height = 4000, 3000
    mask = make_mask(height, width, box=(2000, 1500, 2040, 1530))
    hole = torch.from_numpy(np.asarray(mask) > 127)[None, None].float()
    region = plan_working_region(hole, pipe.default_working_resolution, pipe.vae_scale_factor)
    x0, y0, x1, y1 = region.box
    assert x0 <= 2000 and y0 <= 1500 and x1 >= 2040 and y1 >= 1530
    assert (x1 - x0) * (y1 - y0) < width * height / 100  # a crop, not a downscaled whole photo
    image = random_image(height, width)
    out = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), keep_unmasked=False).images[0]
    out_np, in_np = np.asarray(out), np.asarray(image)
    outside_crop = np.ones((height, width), bool)
    outside_crop[y0:y1, x0:x1] = False
    assert out.size == (width, height)
    assert np.array_equal(out_np[outside_crop], in_np[outside_crop])  # never resampled outside the crop


def test_empty_mask_returns_input_without_denoising(pipe):
    image = random_image(40, 50)
    calls = []
    out = pipe(
        image,
        make_mask(40, 50, box=(0, 0, 0, 0)),
        num_inference_steps=STEPS,
        callback_on_step_end=lambda p, i, t, kw: calls.append(i) or kw,
    ).images[0]
    assert calls == []
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_full_mask_gives_a_valid_image(pipe):
    image = random_image(64, 64)
    out = pipe(image, make_mask(64, 64, box=(0, 0, 64, 64)), num_inference_steps=STEPS, output_type="np").images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_determinism(pipe):
    image, mask = random_image(64, 64), make_mask(64, 64)

    def run(seed):
        return pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(seed), output_type="np").images

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types_and_num_images_per_prompt(pipe, output_type):
    image, mask = random_image(48, 64), make_mask(48, 64)
    images = pipe(
        [image, random_image(48, 64, seed=1)],
        mask,
        num_images_per_prompt=2,
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        output_type=output_type,
    ).images
    if output_type == "pil":
        assert len(images) == 4 and all(im.size == (64, 48) for im in images)
        assert np.asarray(images[0]).tolist() != np.asarray(images[1]).tolist()  # two samples of one image differ
    elif output_type == "np":
        assert images.shape == (4, 48, 64, 3)
    elif output_type == "pt":
        assert images.shape == (4, 3, 48, 64)
    else:
        assert images.shape == (4, 4, 24, 32)


def test_decoder_gets_a_binary_mask_whatever_the_mask_values():
    """The decoder does not inspect its mask (that would cost a device sync per decode): the pipeline binarises it."""
    pipe = make_tiny_pipeline("sd")
    seen = []
    decode = pipe.decoder.forward
    pipe.decoder.forward = lambda latents, image, mask, **kwargs: (
        seen.append(mask) or decode(latents, image, mask, **kwargs)
    )
    mask = torch.from_numpy(np.asarray(make_mask(64, 64), np.float32) / 255 * 3 - 0.5)  # values -0.5 and 2.5
    soft = pipe(
        random_image(64, 64), mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np"
    ).images
    binary = pipe(
        random_image(64, 64), mask > 0.5, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np"
    ).images
    assert len(seen) == 2 and all(set(m.unique().tolist()) == {0.0, 1.0} for m in seen)
    assert np.array_equal(soft, binary)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": b"not an image"}, "`image` has type bytes"),
        ({"image": "/nonexistent/photo.png"}, "could not read an image"),
        ({"mask_image": make_mask(64, 32)}, "aspect ratios differ"),
        ({"image": np.zeros((0, 10, 3), np.float32)}, "zero size"),
        ({"mask_image": [make_mask(64, 64)] * 3, "image": [random_image(64, 64)] * 2}, "batch size 3"),
        ({"prompt_embeds": torch.zeros(3, 16, 32)}, "`prompt_embeds` has batch size 3"),
        ({"output_type": "jpeg"}, "`output_type`"),
        ({"num_inference_steps": 0}, "`num_inference_steps`"),
        ({"num_images_per_prompt": 0}, "`num_images_per_prompt` is 0; expected a positive integer"),
        ({"num_images_per_prompt": 1.5}, "`num_images_per_prompt` is 1.5; expected a positive integer"),
        ({"guidance_scale": 5.0}, "negative_prompt_embeds"),
        ({"latents": torch.zeros(1, 4, 8, 8)}, "`latents` has shape"),
        ({"mae_input_preprocessing": "opencv"}, "`mae_input_preprocessing` is 'opencv'; accepted: 'visible'"),
    ],
)
def test_bad_input_raises_value_error(pipe, kwargs, message):
    call = {"image": random_image(64, 64), "mask_image": make_mask(64, 64), "num_inference_steps": 1}
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def test_truncated_file_is_a_value_error(pipe, tmp_path):
    path = tmp_path / "broken.png"
    random_image(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="could not read an image|could not be decoded"):
        pipe(str(path), make_mask(64, 64), num_inference_steps=1)


def test_save_and_load_round_trip(pipe, tmp_path):
    image, mask = random_image(64, 64), make_mask(64, 64)
    before = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    pipe.save_pretrained(tmp_path)
    assert all(
        (tmp_path / name / "diffusion_pytorch_model.safetensors").exists()
        for name in ("mae", "aligner", "decoder", "unet", "vae")
    )
    loaded = AsukaPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    assert np.array_equal(before, after)


def test_hub_format_loads_without_the_asuka_package(pipe, tmp_path):
    image, mask = random_image(64, 64), make_mask(64, 64)
    expected = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    folder = tmp_path / "hub"
    code = ("pipeline_asuka.py", "mae/mae.py", "aligner/aligner.py", "decoder/decoder.py")
    out = run_hub_format_without_asuka(pipe, folder, tmp_path, image, mask, STEPS, python_imports=code)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_asuka", "AsukaPipeline"]
    assert index["mae"] == ["mae", "AsukaMAE"] and (folder / "mae" / "mae.py").exists()
    assert np.array_equal(out, expected)


def test_mae_reconstruction_preview(pipe):
    image, mask = random_image(60, 90), make_mask(60, 90)
    preview = pipe.mae_reconstruction(image, mask)[0]
    hole = np.asarray(mask) > 127
    assert preview.size == (90, 60)
    assert np.array_equal(np.asarray(preview)[~hole], np.asarray(image)[~hole])


def test_asymmetric_vae_decoder_row():
    """The paper's decoder ablation: diffusers' AsymmetricAutoencoderKL in place of the ASUKA decoder."""
    torch.manual_seed(0)
    asymmetric = AsymmetricAutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        down_block_out_channels=[32, 64],
        layers_per_down_block=1,
        up_block_types=["UpDecoderBlock2D"] * 2,
        up_block_out_channels=[32, 64],
        layers_per_up_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).eval()
    pipe = make_tiny_pipeline("sd", decoder=asymmetric)
    image, mask = random_image(64, 64), make_mask(64, 64)
    latents = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="latent").images
    out = pipe(
        image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), keep_unmasked=False, output_type="pt"
    ).images
    init = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    hole = torch.from_numpy(np.asarray(mask) > 127)[None, None].float()
    expected = asymmetric.decode(latents / pipe.vae.config.scaling_factor, image=init, mask=hole).sample
    assert torch.allclose(out, (expected / 2 + 0.5).clamp(0, 1), atol=1e-5)


def test_decoder_tiling_in_the_pipeline():
    pipe = make_tiny_pipeline("sd")
    image, mask = random_image(64, 64), make_mask(64, 64)
    whole = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    pipe.vae.enable_tiling()
    pipe.decoder.enable_tiling(tile_sample_size=32)
    tiled = pipe(image, mask, num_inference_steps=STEPS, generator=seeded_generator(0), output_type="np").images
    hole = np.asarray(mask) > 127
    assert tiled.shape == whole.shape
    assert np.array_equal(tiled[0][~hole], whole[0][~hole])  # unmasked pixels are the input's either way
    assert not np.array_equal(tiled, whole)  # the hole was decoded in tiles


def test_vae_tiling_is_used_and_close_to_untiled():
    image, mask = random_image(64, 64), make_mask(64, 64)
    kwargs = dict(num_inference_steps=2, output_type="np")
    reference = make_tiny_pipeline("sd", decoder=None)(image, mask, generator=seeded_generator(0), **kwargs).images
    pipe = make_tiny_pipeline("sd", decoder=None)
    pipe.vae.enable_tiling()
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 16  # tiles smaller than the 64x64 input
    tiled = []
    for name in ("_tiled_encode", "tiled_decode"):
        original = getattr(pipe.vae, name)
        setattr(pipe.vae, name, lambda *a, _o=original, _n=name, **k: tiled.append(_n) or _o(*a, **k))
    out = pipe(image, mask, generator=seeded_generator(0), **kwargs).images
    assert set(tiled) == {"_tiled_encode", "tiled_decode"}
    assert np.abs(out - reference).mean() < 1e-2  # tiles are blended, so only close, not equal
