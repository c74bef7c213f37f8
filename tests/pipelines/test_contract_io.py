"""diffusers' usage contract for the three pipelines: the call arguments its pipeline tests require, batching with
`num_images_per_prompt` and per-sample generators, given `latents`, dtype round trips, rebuilding from `components`,
and PIL / numpy / torch inputs of the same 8-bit image."""

import inspect

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from asuka.methods import seeded_generator
from asuka.pipelines.pipeline_strdiffusion import extract_structure
from tests.support.pipeline_contract import (
    CASES,
    REQUIRED_OPTIONAL_PARAMS,
    make_image,
    make_mask,
    make_pipe,
    run,
)


def test_call_signature_has_the_arguments_diffusers_pipeline_tests_require(pipe, case):
    parameters = inspect.signature(type(pipe).__call__).parameters
    missing = sorted((case.params | case.batch_params) - set(parameters))
    assert not missing, f"`__call__` does not take {missing}"
    optional = {name for name, parameter in parameters.items() if parameter.default is not inspect.Parameter.empty}
    missing = sorted(REQUIRED_OPTIONAL_PARAMS - optional)
    assert not missing, f"`__call__` does not take {missing} as optional arguments"


def test_num_images_per_prompt_times_a_batch_of_two(pipe, case):
    images = [make_image(case, seed=0), make_image(case, seed=1)]
    masks = [make_mask(case), make_mask(case, shift=2)]
    out = run(pipe, case, images, masks, num_images_per_prompt=2, output_type="pil")
    assert len(out) == 4 and all(im.size == case.size for im in out)

    # With one generator per output, each output is the single run of its input with its generator.
    batched = run(
        pipe, case, images, masks, num_images_per_prompt=2, generator=[seeded_generator(10 + j) for j in range(4)]
    )
    assert batched.shape == (4, case.size[1], case.size[0], 3)
    for j in range(4):
        single = run(pipe, case, images[j // 2], masks[j // 2], generator=seeded_generator(10 + j))
        assert np.abs(batched[j] - single[0]).max() <= 1e-4, f"output {j}"
    assert np.abs(batched[0] - batched[1]).max() > 1e-3  # two samples of one input differ


def test_given_latents_start_the_run(pipe, case):
    # A run's latent output is its final latents, so it has the shape of the latents the run starts from.
    shape = run(pipe, case, output_type="latent").shape
    latents = torch.randn(shape, generator=seeded_generator(5))
    given = run(pipe, case, latents=latents)
    assert np.array_equal(run(pipe, case, latents=latents.clone()), given)
    assert np.abs(run(pipe, case, latents=torch.randn(shape, generator=seeded_generator(6))) - given).max() > 1e-3
    assert np.abs(run(pipe, case) - given).max() > 1e-3  # the drawn latents are other ones
    wrong = torch.randn(shape[0], shape[1] + 1, *shape[2:])
    with pytest.raises(ValueError, match=r"`latents` has shape .*; expected"):
        run(pipe, case, latents=wrong)


def test_save_and_from_pretrained_with_torch_dtype(pipe, case, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    loaded.set_progress_bar_config(disable=True)
    modules = {name: m for name, m in loaded.components.items() if isinstance(m, torch.nn.Module)}
    assert modules and all(m.dtype == torch.bfloat16 for m in modules.values())
    reference = make_pipe(case).to(torch.bfloat16)
    expected = run(reference, case)
    assert np.isfinite(expected).all()
    assert np.abs(run(loaded, case) - expected).max() <= 1e-5

    same_dtype = type(pipe).from_pretrained(tmp_path, torch_dtype=torch.float32)
    same_dtype.set_progress_bar_config(disable=True)
    assert np.abs(run(same_dtype, case) - run(pipe, case)).max() <= 1e-5


# StrDiffusion in float16 is left out: its discriminator's accept/resample decisions flip, so whole steps differ.
HALF_PRECISION = [(case, torch.bfloat16) for case in CASES]
HALF_PRECISION += [(case, torch.float16) for case in CASES if case.kind != "strdiffusion"]


@pytest.mark.parametrize("case, dtype", HALF_PRECISION, ids=lambda value: str(value).replace("torch.", ""))
def test_to_half_precision_casts_every_model_and_stays_close_to_float32(case, dtype):
    half = make_pipe(case).to(dtype)
    modules = {name: m for name, m in half.components.items() if isinstance(m, torch.nn.Module)}
    assert modules and {m.dtype for m in modules.values()} == {dtype}
    out = run(half, case, output_type="pt")
    assert out.shape == (1, 3, case.size[1], case.size[0]) and torch.isfinite(out).all()
    difference = np.abs(run(half, case) - run(make_pipe(case), case))
    assert difference.mean() < 5e-3 and difference.max() < 0.5  # the same picture, up to rounding


def test_rebuilding_from_components_is_identical(pipe, case):
    # diffusers' split: `components` are the modules, `parameters` the pipeline's own settings (config entries).
    rebuilt = type(pipe)(**pipe.components, **pipe.parameters)
    rebuilt.set_progress_bar_config(disable=True)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(rebuilt.config) == public(pipe.config)
    assert all(getattr(rebuilt, name) is module for name, module in pipe.components.items())
    assert np.array_equal(run(rebuilt, case), run(pipe, case))
    # Without the parameters the modules are shared and every setting takes its default.
    shared = type(pipe)(**pipe.components)
    assert all(getattr(shared, name) is module for name, module in pipe.components.items())
    assert all(
        shared.config[name] == inspect.signature(type(pipe)).parameters[name].default for name in pipe.parameters
    )


def test_pil_numpy_and_torch_inputs_of_one_8bit_image_agree(pipe, case):
    image, mask = make_image(case), make_mask(case)
    pixels, hole = np.asarray(image), np.asarray(mask)
    as_float = pixels.astype(np.float32) / 255
    tensor = torch.from_numpy(as_float).permute(2, 0, 1)
    variants = {
        "numpy uint8": (pixels, hole),
        "numpy float": (as_float, hole.astype(np.float32) / 255),
        "torch (C,H,W)": (tensor, torch.from_numpy(hole / 255.0)),
        "torch (B,C,H,W)": (tensor[None], torch.from_numpy(hole > 127)[None, None].float()),
        "lists": ([image], [mask]),
    }
    expected = run(pipe, case, image, mask)
    for name, (image_input, mask_input) in variants.items():
        assert np.abs(run(pipe, case, image_input, mask_input) - expected).max() <= 1e-6, name


# ------------------------------------------------------------------------------------- StrDiffusion's start states


def test_strdiffusion_latents_and_initial_structure_state_replace_the_first_draws():
    """The sampler starts from `mean + max_sigma * z` (texture state `latents`, then structure); passing those states
    by hand and the generator advanced past their draws gives the run that drew them."""
    case = CASES[2]
    pipe = make_pipe(case)
    image, mask = make_image(case), make_mask(case)
    drawn = run(pipe, case, generator=seeded_generator(3))

    width, height = case.size
    pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / 255).permute(2, 0, 1)[None]
    known = 1 - torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    _, edges = extract_structure(pixels, pipe.config.canny_sigma)
    noise_generator = seeded_generator(3)
    texture_noise = randn_tensor((1, 3, height, width), generator=noise_generator)
    structure_noise = randn_tensor((1, 1, height, width), generator=noise_generator)
    max_sigma = pipe.scheduler.max_sigma
    given = run(
        pipe,
        case,
        image,
        mask,
        generator=noise_generator,
        latents=pixels * known + max_sigma * texture_noise,
        initial_structure_state=edges * known + max_sigma * structure_noise,
    )
    assert np.abs(given - drawn).max() <= 1e-5
    other = run(pipe, case, generator=seeded_generator(3), latents=torch.zeros(1, 3, height, width))
    assert np.abs(other - drawn).max() > 1e-3
    with pytest.raises(ValueError, match="`latents` has shape"):
        run(pipe, case, latents=torch.zeros(1, 3, height + 1, width))
