"""The FLUX methods (asuka.methods.flux), in tiny (offline) mode."""

import json

import numpy as np

import asuka.convert.asuka_flux
from asuka.methods import InpaintRequest, get_method, load_pipeline, run_method
from asuka.methods.flux import converted_release
from tests.support.inputs import box_mask, random_image


def request() -> InpaintRequest:
    image, mask = random_image(40, 56), box_mask(40, 56, rows=(10, 25), cols=(20, 40))
    return InpaintRequest(image=image, mask=mask, steps=2, seed=0, reconstruction=True)


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


def test_the_release_is_converted_once_for_each_backbone(monkeypatch, tmp_path):
    """The converter keeps the release's masked-image encoder or not by comparing it with the backbone's, so each
    FLUX repo the release runs on (`ASUKA_FLUX_BASE`) gets its own conversion, checked against it."""
    calls = []

    def convert(model, out, overwrite, backbone):
        calls.append((model, backbone))
        for name, config in (("decoder", {}), ("mae", {"input_preprocessing": "reference"})):
            (out / name).mkdir(parents=True)
            (out / name / "config.json").write_text(json.dumps(config))

    monkeypatch.setenv("ASUKA_CACHE", str(tmp_path))
    monkeypatch.setattr(asuka.convert.asuka_flux, "convert_asuka_flux", convert)
    first = converted_release("release", "base-a")
    assert converted_release("release", "base-a") == first  # once
    assert converted_release("release", "base-b") != first
    assert calls == [("release", "base-a"), ("release", "base-b")]


def test_a_cached_release_conversion_is_redone_when_it_predates_the_mae_input_order(tmp_path, monkeypatch):
    """The app converts the release into its cache once; a conversion whose MAE config lacks `input_preprocessing`
    would load as "visible", so it is converted again (into the release's "reference")."""

    monkeypatch.setenv("ASUKA_CACHE", str(tmp_path))
    conversions = []
    monkeypatch.setattr(asuka.convert.asuka_flux, "convert_asuka_flux", lambda *args, **kwargs: conversions.append(1))
    out = converted_release("owner/release", "base")
    assert len(conversions) == 1  # nothing cached yet
    for name, config in (("decoder", {}), ("mae", {"input_preprocessing": "reference"})):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text(json.dumps(config))
    assert converted_release("owner/release", "base") == out and len(conversions) == 1  # current: reused
    (out / "mae" / "config.json").write_text("{}")  # written before the MAE had an input order
    converted_release("owner/release", "base")
    assert len(conversions) == 2
