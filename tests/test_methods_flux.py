"""The FLUX methods (asuka.methods.flux), in tiny (offline) mode."""

import numpy as np
import PIL.Image

from asuka.methods import InpaintRequest, get_method, load_pipeline, run_method


def request() -> InpaintRequest:
    rng = np.random.RandomState(0)
    image = PIL.Image.fromarray((rng.rand(40, 56, 3) * 255).astype(np.uint8))
    mask = np.zeros((40, 56), dtype=np.uint8)
    mask[10:25, 20:40] = 255
    return InpaintRequest(image=image, mask=PIL.Image.fromarray(mask), steps=2, seed=0)


def test_asuka_flux_and_flux_fill_are_registered_and_run_tiny():
    spec = get_method("asuka-flux")
    assert spec.uses_condition_weight and spec.uses_guidance and spec.backbone == "flux-fill"
    assert get_method("flux-fill").default_model == "black-forest-labs/FLUX.1-Fill-dev"
    req = request()
    keep = np.asarray(req.mask) == 0
    for name in ("asuka-flux", "flux-fill"):
        result = run_method(name, load_pipeline(name, tiny=True), req)
        assert result.image.size == req.image.size
        assert np.array_equal(np.asarray(result.image)[keep], np.asarray(req.image)[keep])
        if name == "asuka-flux":
            assert result.reconstruction.size == req.image.size


def test_flux_fill_baseline_uses_asuka_fluxs_working_region_on_a_large_non_square_input(monkeypatch):
    """Like AsukaFluxPipeline (tiny: 64 px), the baseline works on a crop around the hole at the working resolution;
    the output has the input's size and every unmasked pixel exact."""
    from asuka.pipelines.pipeline_asuka import plan_working_region, standardise_inputs
    from asuka.testing.flux import TINY_WORKING_RESOLUTION

    rng = np.random.RandomState(1)
    image = PIL.Image.fromarray((rng.rand(72, 136, 3) * 255).astype(np.uint8))
    mask = np.zeros((72, 136), dtype=np.uint8)
    mask[20:40, 90:120] = 255
    req = InpaintRequest(image=image, mask=PIL.Image.fromarray(mask), steps=2, seed=0)
    pipe = load_pipeline("flux-fill", tiny=True)
    sizes = []
    original_call = type(pipe).__call__

    def recording_call(self, *args, **kwargs):
        sizes.append((kwargs["width"], kwargs["height"]))
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording_call)
    result = run_method("flux-fill", pipe, req)
    region = plan_working_region(standardise_inputs(req.image, req.mask)[1], TINY_WORKING_RESOLUTION, 16)
    assert sizes == [region.size] and region.box != (0, 0, 136, 72)
    keep = mask == 0
    out = np.asarray(result.image)
    assert out.shape == np.asarray(image).shape and np.array_equal(out[keep], np.asarray(image)[keep])
