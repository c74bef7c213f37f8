"""What the ASUKA pipelines and methods give their MAE: the input cut to the working region at the input's own
resolution (as the reference reads the image it was given), and the call's input order."""

import PIL.Image
import pytest
import torch

from asuka.methods import InpaintRequest, load_pipeline, run_method
from asuka.pipelines.inpaint_steps import plan_working_region, standardise_inputs
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image


def make_inputs(width: int, height: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    mask = box_mask(height, width, rows=(height // 3, height // 2), cols=(width // 4, width // 2))
    return random_image(height, width), mask


def record_calls(monkeypatch, module: torch.nn.Module, name: str) -> list[tuple]:
    """The positional arguments of every `module.name(...)` call from now on (the method still runs)."""
    calls, method = [], getattr(module, name)

    def recorded(*args):
        calls.append(args)
        return method(*args)

    monkeypatch.setattr(module, name, recorded)
    return calls


@pytest.mark.parametrize("kind", ["sd", "flux"])
@pytest.mark.parametrize("width, height", [(60, 45), (300, 200)])  # resampled whole; a crop of a larger image
def test_the_mae_reads_the_working_region_at_the_input_resolution(kind, width, height, monkeypatch):
    pipe = make_tiny_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    image, mask = make_inputs(width, height)
    priors = record_calls(monkeypatch, pipe.mae, "prior")
    pipe(image, mask, num_inference_steps=1, mae_input_preprocessing="reference", output_type="np")
    pipe(image, mask, num_inference_steps=1, output_type="np")

    images, holes = standardise_inputs(image, mask)
    if kind == "sd":
        region = plan_working_region(holes, pipe.default_working_resolution, pipe.vae_scale_factor)
    else:
        region = plan_working_region(holes, pipe.config.working_resolution, pipe.vae_scale_factor * 2)
    assert not region.is_identity  # the backbone runs on a resampled image; the MAE must not
    (seen_image, seen_hole, preprocessing), (_, _, default) = priors
    x0, y0, x1, y1 = region.box
    assert seen_image.dtype == torch.float32  # on the 8-bit grid, whatever the MAE's dtype
    assert torch.equal(seen_image, images[..., y0:y1, x0:x1]) and torch.equal(seen_hole, holes[..., y0:y1, x0:x1])
    assert preprocessing == "reference" and default is None  # None: the MAE's config


@pytest.mark.parametrize("name", ["asuka-sd", "asuka-flux"])
def test_the_methods_show_the_prior_of_the_runs_input_order(name, monkeypatch):
    pipeline = load_pipeline(name, tiny=True)
    priors = record_calls(monkeypatch, pipeline.mae, "prior")
    reconstructions = record_calls(monkeypatch, pipeline.mae, "reconstruct")
    image, mask = make_inputs(56, 40)
    request = InpaintRequest(image, mask, steps=1, reconstruction=True, mae_input_preprocessing="reference")
    assert run_method(name, pipeline, request).reconstruction.size == image.size
    assert [call[2] for call in priors] == [call[2] for call in reconstructions] == ["reference"]
