"""asuka.registry: registering, lookup errors, fix-it load errors, caching, and faithful runs of the SD entries."""

import numpy as np
import pytest
import torch
from PIL import Image

from asuka import registry
from asuka.registry import InpaintRequest, InpaintResult, MethodSpec, ModelLoadError
from asuka.testing import make_tiny_pipeline


def _request(steps=2, seed=3):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (10, 8, 30, 24))
    return InpaintRequest(image=image, mask=mask, steps=steps, seed=seed)


def test_builtin_sd_entries_and_unknown_names():
    names = [spec.name for spec in registry.list_methods()]
    assert names[:2] == ["asuka-sd", "sd"]
    assert registry.get_method("asuka-sd").backbone == "sd"
    with pytest.raises(ValueError, match="known methods: .*asuka-sd"):
        registry.get_method("no-such-method")


def test_registering_a_method_makes_it_available_everywhere():
    spec = MethodSpec(
        name="test-identity",
        label="Identity",
        default_model=None,
        load=lambda model, device, dtype, tiny: "pipe",
        run=lambda pipe, request, progress: InpaintResult(image=request.image),
    )
    registry.register_method(spec)
    try:
        assert registry.get_method("test-identity") is spec
        assert spec in registry.list_methods()
        with pytest.raises(ValueError, match="already registered"):
            registry.register_method(MethodSpec(**{**spec.__dict__, "label": "Other"}))
        request = _request()
        assert registry.run_method("test-identity", "pipe", request).image is request.image
    finally:
        registry._METHODS.pop("test-identity")


def test_load_failures_become_guidance():
    def failing(model, device, dtype, tiny):
        raise OSError(f"{model} is not a local folder and is not a valid model identifier")

    spec = MethodSpec(
        name="test-failing", label="Failing", default_model="someone/gated", load=failing, run=lambda *a: None
    )
    registry.register_method(spec)
    try:
        with pytest.raises(ModelLoadError) as info:
            registry.load_pipeline("test-failing")
        message = str(info.value)
        for hint in ("someone/gated", "hf auth login", "accept its licence", "--model", "--tiny"):
            assert hint in message
    finally:
        registry._METHODS.pop("test-failing")
    with pytest.raises(ModelLoadError, match="no default checkpoint"):
        registry.load_pipeline("asuka-sd")  # no public ASUKA-SD weights: the user must pass --model


def test_real_loader_offline_gives_guidance(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        registry.load_pipeline("sd", model="no-such-user/no-such-model")
    with pytest.raises(ModelLoadError, match=str(tmp_path / "missing")):
        registry.load_pipeline("asuka-sd", model=str(tmp_path / "missing"))


def test_cache_loads_once():
    cache = registry.PipelineCache(tiny=True)
    assert cache.get("asuka-sd") is cache.get("asuka-sd")
    assert cache.loaded() == ["asuka-sd"]


def test_asuka_sd_entry_equals_a_direct_pipeline_call_and_reports_progress():
    request = _request()
    pipe = registry.load_pipeline("asuka-sd", tiny=True)
    seen = []
    result = registry.run_method("asuka-sd", pipe, request, lambda done, total: seen.append((done, total)))
    direct = make_tiny_pipeline("sd")(
        image=request.image, mask_image=request.mask, num_inference_steps=2, generator=torch.Generator().manual_seed(3)
    ).images[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(direct))
    assert seen[0] == (1, 2) and seen[-1] == (2, 2)
    assert result.reconstruction.size == request.image.size


def test_sd_backbone_entry_keeps_size_and_unmasked_pixels():
    request = _request()
    result = registry.run_method("sd", registry.load_pipeline("sd", tiny=True), request)
    out, image = np.asarray(result.image), np.asarray(request.image)
    hole = np.asarray(request.mask) > 0
    assert out.shape == image.shape and np.array_equal(out[~hole], image[~hole]) and (out[hole] != image[hole]).any()


def test_run_rejects_mismatched_sizes_and_bad_steps():
    request = _request()
    request.mask = request.mask.resize((10, 10))
    with pytest.raises(ValueError, match="differ"):
        registry.run_method("sd", None, request)
    with pytest.raises(ValueError, match="steps"):
        registry.run_method("sd", None, _request(steps=0))
