"""asuka.methods: registering, lookup errors, fix-it load errors, caching, and faithful runs of the SD entries."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from asuka import methods
from asuka.methods import InpaintRequest, InpaintResult, MethodSpec, ModelLoadError
from asuka.testing import make_tiny_pipeline
from tests.support.app_launcher import ROOT, quiet_env


def _request(steps=2, seed=3, reconstruction=False):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (10, 8, 30, 24))
    return InpaintRequest(image=image, mask=mask, steps=steps, seed=seed, reconstruction=reconstruction)


def test_builtin_sd_entries_and_unknown_names():
    names = [spec.name for spec in methods.list_methods()]
    assert names[:2] == ["asuka-sd", "sd"]
    assert methods.get_method("asuka-sd").backbone == "sd"
    with pytest.raises(ValueError, match="known methods: .*asuka-sd"):
        methods.get_method("no-such-method")


def test_registering_a_method_makes_it_available_everywhere():
    received = []
    spec = MethodSpec(
        name="test-identity",
        label="Identity",
        default_model=None,
        load=lambda model, device, dtype: "pipe",
        run=lambda pipe, request, progress: received.append(request) or InpaintResult(image=request.image),
        default_steps=7,
        default_guidance=4.5,
    )
    methods.register_method(spec)
    try:
        assert methods.get_method("test-identity") is spec
        assert spec in methods.list_methods()
        with pytest.raises(ValueError, match="already registered"):
            methods.register_method(MethodSpec(**{**spec.__dict__, "label": "Other"}))
        request = _request()
        assert methods.run_method("test-identity", "pipe", request).image is request.image
        # run functions get the spec's defaults for what the request leaves unset
        methods.run_method("test-identity", "pipe", InpaintRequest(image=request.image, mask=request.mask))
        assert (received[-1].steps, received[-1].guidance_scale) == (7, 4.5)
    finally:
        methods.unregister_method("test-identity")


def test_load_failures_become_guidance():
    def failing(model, device, dtype):
        raise OSError(f"{model} is not a local folder and is not a valid model identifier")

    spec = MethodSpec(
        name="test-failing", label="Failing", default_model="someone/gated", load=failing, run=lambda *a: None
    )
    methods.register_method(spec)
    try:
        with pytest.raises(ModelLoadError) as info:
            methods.load_pipeline("test-failing")
        message = str(info.value)
        for hint in ("someone/gated", "hf auth login", "accept its licence", "--model", "--tiny"):
            assert hint in message
    finally:
        methods.unregister_method("test-failing")
    with pytest.raises(ModelLoadError, match="no default checkpoint"):
        methods.load_pipeline("asuka-sd")  # no public ASUKA-SD weights: the user must pass --model


def test_real_loader_offline_gives_guidance(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        methods.load_pipeline("sd", model="no-such-user/no-such-model")
    with pytest.raises(ModelLoadError, match=str(tmp_path / "missing")):
        methods.load_pipeline("asuka-sd", model=str(tmp_path / "missing"))


def test_cache_loads_once():
    cache = methods.PipelineCache(tiny=True)
    assert cache.get("asuka-sd") is cache.get("asuka-sd")
    assert cache.loaded() == ["asuka-sd"]


def test_asuka_sd_entry_equals_a_direct_pipeline_call_and_reports_progress():
    request = _request(reconstruction=True)
    pipe = methods.load_pipeline("asuka-sd", tiny=True)
    seen = []
    result = methods.run_method("asuka-sd", pipe, request, lambda done, total: seen.append((done, total)))
    direct = make_tiny_pipeline("sd")(
        image=request.image, mask_image=request.mask, num_inference_steps=2, generator=torch.Generator().manual_seed(3)
    ).images[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(direct))
    assert seen[0] == (1, 2) and seen[-1] == (2, 2)
    assert result.reconstruction.size == request.image.size


def test_sd_backbone_entry_keeps_size_and_unmasked_pixels():
    request = _request()
    result = methods.run_method("sd", methods.load_pipeline("sd", tiny=True), request)
    out, image = np.asarray(result.image), np.asarray(request.image)
    hole = np.asarray(request.mask) > 0
    assert out.shape == image.shape and np.array_equal(out[~hole], image[~hole]) and (out[hole] != image[hole]).any()


def test_run_rejects_mismatched_sizes_and_bad_steps():
    request = _request()
    request.mask = request.mask.resize((10, 10))
    with pytest.raises(ValueError, match="differ"):
        methods.run_method("sd", None, request)
    with pytest.raises(ValueError, match="steps"):
        methods.run_method("sd", None, _request(steps=0))


@pytest.mark.parametrize(
    "name, size, box, multiple",
    [("sd", (150, 90), (100, 30, 130, 50), 2), ("flux-fill", (136, 72), (90, 20, 120, 40), 16)],
)
def test_backbone_baselines_use_the_asuka_working_region_on_a_large_non_square_input(
    monkeypatch, name, size, box, multiple
):
    """Bigger than the tiny backbones' 64 px working resolution (AsukaPipeline's and the tiny AsukaFluxPipeline's):
    like them, the baseline runs on a crop around the hole at that resolution, and the output has the input's size
    with every unmasked pixel exact."""
    from asuka.pipelines.inpaint_steps import plan_working_region, standardise_inputs

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = Image.new("L", image.size, 0)
    mask.paste(255, box)
    request = InpaintRequest(image=image, mask=mask, steps=2, seed=1)
    pipe = methods.load_pipeline(name, tiny=True)
    sizes = []
    original_call = type(pipe).__call__

    def recording_call(self, *args, **kwargs):
        sizes.append((kwargs["width"], kwargs["height"]))
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording_call)
    result = methods.run_method(name, pipe, request)
    expected = plan_working_region(standardise_inputs(image, mask)[1], 64, multiple)
    assert sizes == [expected.size] and expected.box != (0, 0, *size)  # a crop, not the whole image
    out, source, hole = np.asarray(result.image), np.asarray(image), np.asarray(mask) > 0
    assert out.shape == source.shape and np.array_equal(out[~hole], source[~hole])
    assert (out[hole] != source[hole]).any()


def test_tiny_is_built_by_the_mechanism_and_loaders_never_see_it():
    calls = []
    spec = MethodSpec(
        name="test-tiny",
        label="Tiny only",
        default_model="someone/model",
        load=lambda model, device, dtype: calls.append(model),
        run=lambda pipe, request, progress: InpaintResult(image=request.image),
        tiny_kind="sd",
    )
    methods.register_method(spec)
    try:
        assert type(methods.load_pipeline("test-tiny", tiny=True)).__name__ == "AsukaPipeline" and calls == []
        methods.load_pipeline("test-tiny", model="other/model")
        assert calls == ["other/model"]
        spec.tiny_kind = None
        with pytest.raises(ModelLoadError, match="no tiny version"):
            methods.load_pipeline("test-tiny", tiny=True)
    finally:
        methods.unregister_method("test-tiny")


def test_default_method_needs_a_gpu_and_the_guidance_lists_every_method(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert methods.default_method() == "asuka-flux"  # the first method (not a baseline) with public weights
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert methods.default_method() is None
    assert methods.default_method(cuda_available=True) == "asuka-flux"
    guidance = methods.no_default_guidance()
    assert "--tiny" in guidance and "GPU" in guidance
    for spec in methods.list_methods():
        assert f"  {spec.name} " in guidance and methods.method_needs(spec) in guidance
    assert "training/" in methods.method_needs(methods.get_method("asuka-sd"))
    assert "black-forest-labs/FLUX.1-Fill-dev" in methods.method_needs(methods.get_method("asuka-flux"))


def _hub_error(cls, message):
    """An error as huggingface_hub raises it (its HTTP errors carry the server's response)."""
    import httpx2

    response = httpx2.Response(403, request=httpx2.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(message, response=response)


def _load_failure(monkeypatch, error, needs_gpu=False, device="cpu"):
    """The ModelLoadError message for a loader that raises `error` (wrapped in an OSError, as diffusers does)."""

    def failing(model, device, dtype):
        try:
            raise error
        except Exception as cause:
            raise OSError(f"Cannot load model {model}") from cause

    spec = MethodSpec(
        name="test-cause",
        label="Cause",
        default_model="someone/model",
        load=failing,
        run=lambda *a: None,
        needs_gpu=needs_gpu,
        gated_repo="someone/base" if needs_gpu else None,
        requirements="a GPU with 24 GB",
    )
    methods.register_method(spec)
    try:
        with pytest.raises(ModelLoadError) as info:
            methods.load_pipeline("test-cause", device=device)
        return str(info.value)
    finally:
        methods.unregister_method("test-cause")


def test_load_error_advice_fits_the_cause(monkeypatch):
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    gated = _load_failure(monkeypatch, _hub_error(GatedRepoError, "Access to model someone/base is restricted"), True)
    assert "accept the licence on https://huggingface.co/someone/base" in gated and "hf auth login" in gated
    assert "HF_HUB_OFFLINE" not in gated

    missing = _load_failure(monkeypatch, _hub_error(RepositoryNotFoundError, "404 Repository Not Found"))
    assert "check the repository id 'someone/model'" in missing and "licence" not in missing

    for error in (LocalEntryNotFoundError("not in the cache"), OfflineModeIsEnabled("offline mode is enabled")):
        offline = _load_failure(monkeypatch, error)
        assert "not in the local Hugging Face cache" in offline and "hf download someone/model" in offline
        assert offline.index("hf download") < offline.index("licence")  # the cause's fix comes first

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = _load_failure(monkeypatch, OfflineModeIsEnabled("offline mode is enabled"))
    assert "HF_HUB_OFFLINE is set" in offline and "hf download" in offline
    monkeypatch.delenv("HF_HUB_OFFLINE")

    no_gpu = _load_failure(monkeypatch, RuntimeError("not enough memory"), needs_gpu=True, device="cpu")
    assert "needs a CUDA GPU" in no_gpu and "24 GB" in no_gpu and "--tiny" in no_gpu and "hf auth login" not in no_gpu

    with pytest.raises(ModelLoadError) as info:
        methods.load_pipeline("asuka-sd")  # no public checkpoint: how to get one, no login advice
    assert "no public checkpoint" in str(info.value) and "training/" in str(info.value)
    assert "hf auth login" not in str(info.value) and "licence" not in str(info.value)


def test_entry_point_group_adds_a_method(tmp_path):
    """A package exposing a provider module in the `asuka.methods` entry-point group gets its method listed."""
    (tmp_path / "third_party_inpaint.py").write_text(
        "from asuka.methods import InpaintResult, MethodSpec, register_method\n"
        "register_method(MethodSpec(name='third-party', label='Third party', default_model=None,\n"
        "    load=lambda model, device, dtype: None, run=lambda p, r, progress: InpaintResult(image=r.image)))\n"
    )
    dist = tmp_path / "third_party_inpaint-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-party-inpaint\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[asuka.methods]\nthird-party = third_party_inpaint\n")
    code = "import json; from asuka import methods; print(json.dumps([s.name for s in methods.list_methods()]))"
    env = quiet_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    process = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    names = json.loads(process.stdout.strip().splitlines()[-1])
    assert names[-1] == "third-party" and names[:2] == ["asuka-sd", "sd"]
