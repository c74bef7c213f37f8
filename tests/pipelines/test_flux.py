"""AsukaFluxPipeline on tiny random FLUX.1-Fill components (no network, seconds on CPU)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL

from asuka import AsukaFluxPipeline
from asuka.methods import seeded_generator
from asuka.models import AsukaDecoder, AsukaVAEEncoder
from asuka.testing import make_tiny_pipeline
from asuka.testing.flux import (
    make_tiny_flux_backbone_pipeline,
    make_tiny_flux_components,
    make_tiny_masked_image_encoder,
)
from tests.support.hub import run_hub_format_without_asuka
from tests.support.inputs import box_mask, random_image


STEPS = 2


def make_mask(height: int, width: int) -> PIL.Image.Image:
    """A hole a third of each side, left of the middle."""
    rows, cols = (height // 4, height // 4 + max(1, height // 3)), (width // 3, width // 3 + max(1, width // 3))
    return box_mask(height, width, rows=rows, cols=cols)


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(kind="flux")


def test_equals_diffusers_flux_fill_with_explicit_embeddings():
    """Plain VAE decode, keep_unmasked=False, same embeddings/seed/steps: identical to FluxFillPipeline."""
    flux_fill = make_tiny_flux_backbone_pipeline(seed=0)
    asuka = make_tiny_pipeline(kind="flux", seed=0, decoder=None)
    image, mask = random_image(32, 48), make_mask(32, 48)
    embeds = torch.randn(1, 7, 32, generator=seeded_generator(1))
    pooled = torch.randn(1, 24, generator=seeded_generator(2))

    both = dict(
        image=image,
        mask_image=mask,
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        num_inference_steps=3,
        guidance_scale=30.0,
        output_type="np",
    )
    expected = flux_fill(**both, height=32, width=48, generator=seeded_generator(0)).images
    actual = asuka(**both, generator=seeded_generator(0), keep_unmasked=False).images
    assert actual.shape == expected.shape == (1, 32, 48, 3)
    assert np.abs(actual - expected).max() <= 1e-5


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (23, 120), (77, 1000)])
def test_any_size_output_at_input_size_and_unmasked_pixels_exact(pipe, size):
    height, width = size
    image, mask = random_image(height, width), make_mask(height, width)
    out = pipe(image=image, mask_image=mask, num_inference_steps=STEPS, generator=seeded_generator(0)).images[0]
    assert out.size == (width, height)
    keep = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(out)[keep], np.asarray(image)[keep])
    assert not np.array_equal(np.asarray(out)[~keep], np.asarray(image)[~keep])


def test_large_image_processed_on_a_crop(pipe):
    """A big image with a small hole: output at full size, every unmasked pixel bit-identical."""
    image, mask = random_image(300, 400, seed=3), np.zeros((300, 400), dtype=np.uint8)
    mask[140:170, 200:240] = 255
    out = pipe(
        image=image,
        mask_image=PIL.Image.fromarray(mask),
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        output_type="np",
    ).images[0]
    assert out.shape == (300, 400, 3)
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(image, dtype=np.float32)[keep] / 255.0)


def test_condition_weight_zero_is_exactly_the_null_conditioning(pipe):
    image, mask = random_image(32, 32), make_mask(32, 32)
    with torch.no_grad():
        tokens, pooled = pipe.encode_prior(
            torch.rand(1, 3, 32, 32, generator=seeded_generator(4)), torch.ones(1, 1, 32, 32), condition_weight=0.0
        )
    token_null = pipe.token_aligner.null_embed.detach()
    pooled_null = pipe.pooled_aligner.null_embed.detach()
    assert torch.equal(tokens, token_null) and torch.equal(pooled, pooled_null)

    kwargs = dict(image=image, mask_image=mask, num_inference_steps=STEPS, output_type="np")
    null_run = pipe(**kwargs, condition_weight=0.0, generator=seeded_generator(0)).images
    explicit = pipe(
        **kwargs, prompt_embeds=token_null, pooled_prompt_embeds=pooled_null, generator=seeded_generator(0)
    ).images
    default = pipe(**kwargs, generator=seeded_generator(0)).images  # condition_weight 0.5 from the aligners
    assert np.array_equal(null_run, explicit)
    assert not np.array_equal(null_run, default)


def test_condition_is_interpolated_with_the_weight(pipe):
    image, hole = torch.rand(1, 3, 32, 32, generator=seeded_generator(5)), torch.zeros(1, 1, 32, 32)
    hole[..., 8:20, 8:20] = 1
    with torch.no_grad():
        full_tokens, full_pooled = pipe.encode_prior(image, hole, condition_weight=1.0)
        half_tokens, half_pooled = pipe.encode_prior(image, hole)  # the aligners' default, 0.5
    token_null, pooled_null = pipe.token_aligner.null_embed, pipe.pooled_aligner.null_embed
    assert torch.allclose(half_tokens, token_null + 0.5 * (full_tokens - token_null), atol=1e-6)
    assert torch.allclose(half_pooled, pooled_null + 0.5 * (full_pooled - pooled_null), atol=1e-6)
    assert full_tokens.shape == (1, pipe.mae.num_patches, 32) and full_pooled.shape == (1, 24)


def test_decoder_is_used_and_unscales_latents(pipe):
    """The AsukaDecoder gets FLUX-unscaled latents: built from the VAE with an all-ones mask it equals vae.decode."""
    latents = torch.randn(1, 16, 4, 4, generator=seeded_generator(6))
    image, hole = torch.rand(1, 3, 32, 32) * 2 - 1, torch.ones(1, 1, 32, 32)
    decoder = AsukaDecoder.from_vae(pipe.vae)
    flux = AsukaFluxPipeline(**{**pipe.components, "decoder": decoder})
    plain = AsukaFluxPipeline(**{**pipe.components, "decoder": None})
    with torch.no_grad():
        expected = pipe.vae.decode(latents / 0.3611 + 0.1159).sample
        assert torch.allclose(flux.decode_latents(latents, image, hole), expected, atol=1e-5)
        assert torch.allclose(plain.decode_latents(latents, image, hole), expected, atol=1e-6)


def test_determinism_and_seeds(pipe):
    image, mask = random_image(32, 32), make_mask(32, 32)

    def run(seed):
        return pipe(
            image=image, mask_image=mask, num_inference_steps=STEPS, generator=seeded_generator(seed), output_type="np"
        ).images

    first, again, other = run(0), run(0), run(1)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_output_types_and_num_images(pipe):
    image, mask = random_image(32, 48), make_mask(32, 48)
    kwargs = dict(image=image, mask_image=mask, num_inference_steps=STEPS, num_images_per_prompt=2)
    pil = pipe(**kwargs, generator=seeded_generator(0)).images
    array = pipe(**kwargs, generator=seeded_generator(0), output_type="np").images
    tensor = pipe(**kwargs, generator=seeded_generator(0), output_type="pt").images
    latents = pipe(**kwargs, generator=seeded_generator(0), output_type="latent").images
    assert len(pil) == 2 and pil[0].size == (48, 32)
    assert array.shape == (2, 32, 48, 3) and tensor.shape == (2, 3, 32, 48)
    assert np.allclose(tensor.permute(0, 2, 3, 1).numpy(), array)
    assert np.array_equal(np.asarray(pil[1]), (array[1] * 255).round().astype(np.uint8))
    assert latents.shape == (2, (32 // 16) * (48 // 16), 16 * 4)  # packed, as FluxFillPipeline returns them
    assert isinstance(pipe(**kwargs, return_dict=False), tuple)


def test_full_mask_gives_a_valid_image(pipe):
    out = pipe(
        image=random_image(40, 24),
        mask_image=PIL.Image.new("L", (24, 40), 255),
        num_inference_steps=STEPS,
        generator=seeded_generator(0),
        output_type="np",
    ).images
    assert out.shape == (1, 40, 24, 3) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_empty_mask_returns_input(pipe):
    image = random_image(30, 40)
    out = pipe(image=image, mask_image=PIL.Image.new("L", (40, 30), 0), num_inference_steps=STEPS).images[0]
    assert np.array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output_type="jpeg"), "output_type"),
        (dict(prompt_embeds=torch.zeros(1, 4, 32)), "pooled_prompt_embeds"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(mask_image=PIL.Image.new("L", (10, 40))), "aspect"),
        (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "callback_on_step_end_tensor_inputs"),
        (dict(mae_input_preprocessing="opencv"), "`mae_input_preprocessing` is 'opencv'; accepted: 'visible'"),
    ],
)
def test_bad_inputs_raise_value_error(pipe, kwargs, message):
    call = dict(image=random_image(32, 32), mask_image=make_mask(32, 32), num_inference_steps=STEPS)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def with_encoder(pipe, **components) -> AsukaFluxPipeline:
    """`pipe`'s components with others replaced or added (e.g. `masked_image_encoder`)."""
    out = AsukaFluxPipeline(**{**pipe.components, **components})
    out.set_progress_bar_config(disable=True)
    return out


def run_two_per_image(pipe) -> np.ndarray:
    """Two outputs of one image, one generator each (so the masked image is encoded with a list of generators)."""
    return pipe(
        image=random_image(32, 48),
        mask_image=make_mask(32, 48),
        num_inference_steps=STEPS,
        num_images_per_prompt=2,
        generator=[seeded_generator(0), seeded_generator(1)],
        output_type="np",
    ).images


def test_a_masked_image_encoder_equal_to_the_vaes_changes_nothing(pipe):
    """Where the release's encoder equals the backbone's, encoding with it gives today's output bit for bit."""
    same = make_tiny_masked_image_encoder(pipe.vae)
    same.encoder.load_state_dict(pipe.vae.encoder.state_dict())
    assert np.array_equal(run_two_per_image(with_encoder(pipe, masked_image_encoder=same)), run_two_per_image(pipe))


def test_the_masked_image_encoder_encodes_the_masked_image(pipe, tmp_path):
    """Another encoder: the output is that of FluxFillPipeline's encoding with a diffusers VAE holding its weights,
    not the backbone VAE's; it survives save_pretrained / from_pretrained."""
    encoder = make_tiny_masked_image_encoder(pipe.vae)
    asuka = with_encoder(pipe, masked_image_encoder=encoder)
    vae = AutoencoderKL.from_config(pipe.vae.config).eval()  # the reference: the VAE, with the release's encoder
    vae.load_state_dict(
        {**pipe.vae.state_dict(), **{f"encoder.{k}": v for k, v in encoder.encoder.state_dict().items()}}
    )
    expected = run_two_per_image(with_encoder(pipe, vae=vae))
    out = run_two_per_image(asuka)
    assert np.array_equal(out, expected)
    assert np.abs(out - run_two_per_image(pipe)).max() > 1e-3  # the backbone VAE's encoding gives another output

    asuka.save_pretrained(tmp_path / "pipe")
    loaded = AsukaFluxPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.masked_image_encoder, AsukaVAEEncoder)
    assert np.abs(run_two_per_image(loaded) - out).max() <= 1e-5  # loaded tensors may round differently (see below)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = AsukaFluxPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.working_resolution == pipe.config.working_resolution
    kwargs = dict(
        image=random_image(32, 32), mask_image=make_mask(32, 32), num_inference_steps=STEPS, output_type="np"
    )
    # Identical weights; loaded tensors may take other BLAS paths, hence float32 round-off only.
    assert (
        np.abs(
            pipe(**kwargs, generator=seeded_generator(0)).images
            - loaded(**kwargs, generator=seeded_generator(0)).images
        ).max()
        <= 1e-5
    )


def test_hub_format_loads_without_the_asuka_package(pipe, tmp_path):
    """`save_pretrained(hub_format=True)` as for `AsukaPipeline`: the folder and its code load with one diffusers
    call where `import asuka` fails, and give the pipeline's output.

    The FLUX transformer's matmuls round differently (~2e-6) on loaded, memory-mapped weights and with other thread
    counts than the subprocess's one, so the exact reference is a plain save of the pipeline loaded with `asuka`, run
    on one thread; the in-memory pipeline agrees to float32 round-off.
    """
    image, mask = random_image(32, 48), make_mask(32, 48)
    folder = tmp_path / "hub"
    code = ("pipeline_asuka_flux.py", "decode.py", "mae/mae.py", "token_aligner/aligner.py", "decoder/decoder.py")
    out = run_hub_format_without_asuka(pipe, folder, tmp_path, image, mask, STEPS, python_imports=code)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_asuka_flux", "AsukaFluxPipeline"]
    assert index["token_aligner"] == index["pooled_aligner"] == ["aligner", "AsukaAligner"]
    assert index["decoder"] == ["decoder", "AsukaDecoder"] and index["working_resolution"] == 64

    pipe.save_pretrained(tmp_path / "plain")
    loaded = AsukaFluxPipeline.from_pretrained(tmp_path / "plain")
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(image=image, mask_image=mask, num_inference_steps=STEPS, output_type="np")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = loaded(**kwargs, generator=seeded_generator(0)).images
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(out, reference)
    assert np.abs(out - pipe(**kwargs, generator=seeded_generator(0)).images).max() <= 1e-5


def test_assembly_from_flux_repo_and_converted_asuka_folder(tmp_path):
    """from_pretrained(flux_folder, asuka=converted_folder): base parts from one, ASUKA parts from the other."""
    from asuka.convert.asuka_flux import write_components

    components = make_tiny_flux_components(seed=0)
    flux_dir, asuka_dir = tmp_path / "flux-fill", tmp_path / "asuka"
    for name in ("vae", "transformer", "scheduler"):
        components[name].save_pretrained(flux_dir / name)
    write_components(components, asuka_dir, card="# tiny\n", metadata={"format": "asuka-flux"})

    pipe = AsukaFluxPipeline.from_pretrained(flux_dir, asuka=asuka_dir, working_resolution=64)
    pipe.set_progress_bar_config(disable=True)
    assert set(pipe.components) == {
        "vae",
        "transformer",
        "scheduler",
        "mae",
        "token_aligner",
        "pooled_aligner",
        "decoder",
        "masked_image_encoder",
    }
    assert pipe.masked_image_encoder is None  # the folder has none
    reference = make_tiny_pipeline(kind="flux", seed=0)
    kwargs = dict(
        image=random_image(32, 32), mask_image=make_mask(32, 32), num_inference_steps=STEPS, output_type="np"
    )
    actual, expected = (
        pipe(**kwargs, generator=seeded_generator(0)).images,
        reference(**kwargs, generator=seeded_generator(0)).images,
    )
    assert np.abs(actual - expected).max() <= 1e-5

    with pytest.raises(ValueError, match="Unsupported argument"):
        AsukaFluxPipeline.from_pretrained(flux_dir, asuka=asuka_dir, text_encoder=None)
