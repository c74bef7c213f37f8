"""The app's parts without a server: default method, Spaces, ZeroGPU duration, result files, load progress, the
`/inpaint` handler, the cache sweeper."""

import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tqdm import tqdm

import app  # app.py lives at the repository root, on pytest's pythonpath
import app_cache
from asuka import methods
from asuka.masks import grow_mask
from asuka.methods import memory
from asuka.methods.segment import image_key


def _editor(width: int, height: int) -> dict:
    """The editor value as the handler gets it; only the photo's size matters for the duration."""
    return {"background": SimpleNamespace(width=width, height=height), "layers": [], "composite": None}


# --- default method ---------------------------------------------------------------------------------


def test_default_method_follows_cuda(monkeypatch):
    assert app.choose_method(None, tiny=False, cuda_available=True) == "asuka-flux"
    with pytest.raises(app.NoDefaultMethod) as error:
        app.choose_method(None, tiny=False, cuda_available=False)
    message = str(error.value)
    assert "--tiny" in message
    for spec in methods.list_methods():  # which methods need what
        assert spec.name in message
    # asked-for methods and --tiny never depend on the hardware
    assert app.choose_method("sd", tiny=False, cuda_available=False) == "sd"
    assert app.choose_method(None, tiny=True, cuda_available=False) == methods.list_methods()[0].name
    with pytest.raises(ValueError, match="Unknown method"):
        app.choose_method("no-such-method", tiny=False, cuda_available=True)


def test_default_method_reads_cuda_when_not_told(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert app.choose_method(None, tiny=False) == "asuka-flux"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(app.NoDefaultMethod):
        app.choose_method(None, tiny=False)


def test_spaces_are_recognised_from_their_environment():
    assert app.on_spaces({"SYSTEM": "spaces", "SPACE_ID": "someone/asuka"})
    assert app.on_spaces({"SPACE_ID": "someone/asuka"})
    assert not app.on_spaces({})
    assert not app.on_spaces({"SYSTEM": "linux"})


# --- ZeroGPU duration -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [spec.name for spec in methods.list_methods()])
def test_gpu_duration_per_method(method):
    spec = methods.get_method(method)
    steps = spec.default_steps
    base = app.gpu_duration(_editor(1024, 768), None, method, steps)
    assert isinstance(base, int) and app.GPU_OVERHEAD_S < base <= app.GPU_MAX_DURATION_S
    assert base == math.ceil(app.GPU_OVERHEAD_S + steps * spec.gpu_seconds_per_step)  # under 4 MP: no scaling
    # more steps, a bigger photo and "also run the backbone" each ask for more time (below the cap)
    assert app.gpu_duration(_editor(1024, 768), None, method, steps // 2) < base
    assert app.gpu_duration(_editor(4000, 3000), None, method, steps) > base
    with_backbone = app.gpu_duration(_editor(1024, 768), None, method, steps, run_backbone=True)
    assert with_backbone > base if spec.backbone else with_backbone == base
    # never more than the cap, however large the request
    assert app.gpu_duration(_editor(40000, 40000), None, method, 100, run_backbone=True) == app.GPU_MAX_DURATION_S


def test_gpu_duration_ranks_methods_by_cost():
    photo = _editor(1024, 1024)
    flux = app.gpu_duration(photo, None, "asuka-flux", 28)
    sd = app.gpu_duration(photo, None, "asuka-sd", 28)
    assert flux > sd  # a 12B-parameter FLUX step costs far more than an SD-1.5 step
    # a method added by another package gets the slowest estimate, not a crash
    assert app.gpu_duration(photo, None, "someone-elses-method", 28) >= flux


def test_gpu_duration_reads_each_methods_cost_from_its_spec():
    photo = _editor(1024, 1024)
    sd = methods.get_method("sd")
    stated = dataclasses.replace(sd, name="test-stated-cost", gpu_seconds_per_step=0.25, backbone="sd")
    unstated = methods.MethodSpec(
        name="test-unstated-cost", label="Unstated", default_model=None, load=sd.load, run=sd.run
    )
    for spec in (stated, unstated):
        methods.register_method(spec)
    try:
        assert app.gpu_duration(photo, None, stated.name, 40) == math.ceil(app.GPU_OVERHEAD_S + 40 * 0.25)
        with_backbone = app.gpu_duration(photo, None, stated.name, 40, run_backbone=True)
        assert with_backbone == math.ceil(app.GPU_OVERHEAD_S + 40 * (0.25 + sd.gpu_seconds_per_step))
        # a spec that states no cost is as slow as the slowest built-in method
        slowest = max(
            spec.gpu_seconds_per_step for spec in methods.list_methods() if not spec.name.startswith("test-")
        )
        assert unstated.gpu_seconds_per_step == methods.DEFAULT_GPU_SECONDS_PER_STEP == slowest
        assert app.gpu_duration(photo, None, unstated.name, 40) == math.ceil(app.GPU_OVERHEAD_S + 40 * slowest)
    finally:
        for spec in (stated, unstated):
            methods.unregister_method(spec.name)


def test_gpu_decorator_is_applied_with_the_duration_function(monkeypatch):
    durations = []

    def fake_gpu(fn=None, **options):
        durations.append(options.get("duration"))
        return fn if fn is not None else (lambda f: f)

    monkeypatch.setattr(app, "gpu", fake_gpu)
    app.build_demo(methods.PipelineCache(tiny=True), "asuka-sd", tiny=True)
    # /inpaint asks for the computed duration; a click and /segment (SAM 2.1 runs on the GPU too) a fixed one
    assert sorted(durations, key=str) == sorted(
        [app.gpu_duration, app.SEGMENT_GPU_DURATION_S, app.SEGMENT_GPU_DURATION_S], key=str
    )


# --- bounded result files ---------------------------------------------------------------------------


def test_result_files_are_bounded_in_number_and_age(tmp_path):
    results = app.ResultFiles(tmp_path / "results", max_files=3, max_age_s=60)
    paths = [results.save(Image.new("RGB", (8, 8), (i, 0, 0))) for i in range(7)]
    on_disk = sorted(str(p) for p in (tmp_path / "results").rglob("*.png"))
    assert on_disk == sorted(paths[-3:])  # the newest three
    assert all(path.endswith("inpainted.png") for path in paths)  # the download keeps a friendly name
    old = tmp_path / "results" / os.listdir(tmp_path / "results")[0]
    stale = time.time() - 120
    os.utime(old, (stale, stale))
    results.prune()
    assert not old.exists() and len(list((tmp_path / "results").iterdir())) == 2


# --- progress while loading -------------------------------------------------------------------------


class RecordingProgress(app.gr.Progress):
    """Stands in for the page's progress bar: records what the page would show."""

    def __init__(self):
        super().__init__()
        self.shown = []

    def _progress_callback(self):
        return lambda iterables: self.shown.extend((it.desc, it.unit, it.index, it.length) for it in iterables)


def test_loading_reports_downloads_in_bytes_and_each_stage():
    page = RecordingProgress()
    with app.reporting_load(page, "ASUKA-FLUX"):
        for _ in tqdm(range(3), desc="Fetching 2 files"):
            pass
        with tqdm(total=3_000_000, desc="mae_300.pth", unit="B", unit_scale=True) as bar:
            bar.update(1_000_000)
            bar.update(2_000_000)
        for _ in tqdm(range(2), desc="Converting the release"):
            pass
        for _ in tqdm(range(5), desc="Loading pipeline components..."):
            pass
    descs = [desc for desc, *_ in page.shown]
    assert "ASUKA-FLUX: downloading — Fetching 2 files" in descs
    assert ("ASUKA-FLUX: downloading — mae_300.pth", "B", 3_000_000, 3_000_000) in page.shown
    assert "ASUKA-FLUX: converting — Converting the release" in descs
    assert "ASUKA-FLUX: loading — Loading pipeline components..." in descs
    assert any("preparing the weights" in (desc or "") for desc in descs)  # between bars
    # outside a load, tqdm bars are not sent to the page
    count = len(page.shown)
    for _ in tqdm(range(3), desc="denoising", disable=True):
        pass
    assert len(page.shown) == count


def test_loading_stage_from_bar():
    assert app.load_stage("model.safetensors", "B") == "downloading"
    assert app.load_stage("Fetching 23 files", "it") == "downloading"
    assert app.load_stage("Converting ASUKA-FLUX", "it") == "converting"
    assert app.load_stage("Loading checkpoint shards", "it") == "loading"


def test_cache_sweep_deletes_old_tracked_files_but_not_kept_ones(tmp_path):
    files = [tmp_path / f"{name}.png" for name in ("upload", "output", "example")]
    for file in files:
        file.write_bytes(b"png")
    tracked = {str(file) for file in files}
    demo = SimpleNamespace(blocks={0: SimpleNamespace(keep_in_cache={str(files[2])})}, temp_file_sets=[tracked])
    results = app.ResultFiles(tmp_path / "results", max_files=3, max_age_s=3600)
    app_cache.sweep_cache(demo, results, max_age_s=3600)  # nothing is old yet
    assert all(file.exists() for file in files) and len(tracked) == 3
    app_cache.sweep_cache(demo, results, max_age_s=-1)  # everything is old
    assert not files[0].exists() and not files[1].exists() and files[2].exists()
    assert tracked == {str(files[2])}


def test_cache_sweeper_survives_a_failed_sweep(tmp_path):
    sweeps = []

    class FlakyDemo:
        blocks = {}

        @property
        def temp_file_sets(self):
            sweeps.append(time.monotonic())
            if len(sweeps) == 1:
                raise RuntimeError("Set changed size during iteration")  # what ends Gradio's own clean-up
            return []

    stop = threading.Event()
    thread = app_cache.start_cache_sweeper(
        FlakyDemo(), app.ResultFiles(tmp_path), max_age_s=1, every_s=0.05, stop=stop
    )
    deadline = time.monotonic() + 10
    while len(sweeps) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=5)
    assert len(sweeps) >= 3 and not thread.is_alive()


def _sweepers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "asuka-cache-sweeper"]


def test_building_the_page_starts_nothing_and_main_starts_the_sweeper_before_launching(monkeypatch):
    running = len(_sweepers())
    app.build_demo(methods.PipelineCache(tiny=True), "asuka-sd", tiny=True)
    assert len(_sweepers()) == running  # building the UI has no side effects

    events = []
    monkeypatch.setattr(app, "start_cache_sweeper", lambda *arguments: events.append(("sweeper", *arguments)))
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda demo, **options: events.append(("launch", demo)))
    monkeypatch.delenv("ASUKA_METHOD", raising=False)
    app.main(["--tiny", "--device", "cpu", "--cache-max-age", "40", "--max-results", "3"])
    (_, demo, results, max_age, every), launch = events
    assert launch == ("launch", demo)  # the sweeper runs before the page serves
    assert isinstance(results, app.ResultFiles) and results.max_files == 3 and results.max_age_s == max_age == 40
    assert every == app_cache.sweep_interval(40) == 10  # the same schedule as Gradio's delete_cache
    assert demo.delete_cache == (10, 40)


def test_on_a_space_without_gpu_the_page_starts_with_the_guidance(monkeypatch):
    launched = []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda demo, **options: launched.append(demo))
    for name, value in {"SYSTEM": "spaces", "SPACE_ID": "someone/asuka"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ASUKA_METHOD", raising=False)
    monkeypatch.delenv("ASUKA_TINY", raising=False)
    app.main(["--device", "cpu"])  # a CPU Space run as Spaces run it: no flags
    (demo,) = launched
    page = json.dumps(demo.config, default=repr)  # (a gr.State's config holds its delete callback)
    assert "No CUDA GPU was found" in page and "--tiny" in page and "ASUKA_TINY=1" in page
    assert "load-guidance" in page

    monkeypatch.delenv("SYSTEM")
    monkeypatch.delenv("SPACE_ID")
    with pytest.raises(SystemExit) as exit_:  # the same start outside Spaces fails fast
        app.main(["--device", "cpu"])
    assert exit_.value.code == 2 and len(launched) == 1


# --- the mask a run uses ----------------------------------------------------------------------------


def test_the_selection_merges_with_the_painting_then_invert_and_grow_apply():
    photo = Image.new("RGB", (30, 20), (10, 20, 30))
    layer = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (2, 2, 6, 6))  # a painted 4x4 square
    editor = {"background": photo, "layers": [layer], "composite": None}
    selected = np.zeros((20, 30), dtype=bool)
    selected[10:15, 20:25] = True
    selection = {"key": image_key(photo), "mask": selected, "corner": None}
    painted = np.zeros((20, 30), dtype=bool)
    painted[2:6, 2:6] = True

    def used(**tools):
        return np.asarray(app.mask_to_use(editor, None, selection, **tools)) > 127

    assert np.array_equal(used(), painted | selected)
    assert np.array_equal(used(invert=True), ~(painted | selected))
    assert used(grow=2).sum() == (grow_mask(painted | selected, 2) > 0.5).sum() > (painted | selected).sum()
    assert np.array_equal(used(grow=-2), grow_mask(painted | selected, -2) > 0.5)
    # a selection made on another photo is not used on this one
    other = {"key": image_key(Image.new("RGB", (30, 20))), "mask": selected, "corner": None}
    assert np.array_equal(np.asarray(app.mask_to_use(editor, None, other)) > 127, painted)
    # the view tints exactly the selected pixels
    view = np.asarray(app.overlay_selection(photo, selected))
    assert np.array_equal((view != np.asarray(photo)).any(axis=-1), selected)


# --- the /inpaint handler, called directly ----------------------------------------------------------


def test_the_inpaint_handler_runs_a_request_as_the_methods_do(tmp_path):
    cache = methods.PipelineCache(tiny=True)
    results = app.ResultFiles(tmp_path / "results", max_files=2)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), (16, 20, 40, 44))  # the painted hole
    editor = {"background": photo, "layers": [layer], "composite": None}
    page = RecordingProgress()
    image, (before, after), backbone, reconstruction, download, seed, mask, took = app.inpaint(
        editor, None, "asuka-sd", 2, 7, False, 1.0, 1.0, True, 0, True, progress=page, cache=cache, results=results
    )

    painted = np.zeros((64, 64), dtype=bool)
    painted[20:44, 16:40] = True
    assert np.array_equal(np.asarray(mask) > 127, painted) and seed == 7
    # the same request through the methods, on the same pipelines: the same pixels
    request = methods.InpaintRequest(
        image=photo, mask=mask, steps=2, seed=7, condition_weight=1.0, reconstruction=True
    )
    reference = methods.run_method("asuka-sd", cache.get("asuka-sd"), request)
    assert np.array_equal(np.asarray(image), np.asarray(reference.image))
    assert np.array_equal(np.asarray(reconstruction), np.asarray(reference.reconstruction))
    assert np.array_equal(np.asarray(backbone), np.asarray(methods.run_method("sd", cache.get("sd"), request).image))
    assert before is photo and after is image
    assert Path(download).is_relative_to(results.root)
    assert np.array_equal(np.asarray(Image.open(download)), np.asarray(image))
    assert took.startswith("ASUKA-SD: ") and took.endswith(" s for 2 steps")
    assert ("ASUKA-SD", "steps", 2, 2) in page.shown  # the denoising steps reached the page's progress bar

    inputs = ("asuka-sd", 2, 7, False, 1.0, 1.0, True, 0, False)
    context = {"progress": page, "cache": cache, "results": results}
    with pytest.raises(app.gr.Error, match="Upload an image first"):
        app.inpaint({"background": None, "layers": []}, None, *inputs, **context)
    with pytest.raises(app.gr.Error, match="The mask is empty"):
        app.inpaint({"background": photo, "layers": []}, None, *inputs, **context)
    with pytest.raises(app.gr.Error, match="steps must be a positive integer"):
        app.inpaint(editor, None, "asuka-sd", 0, *inputs[2:], **context)


def test_the_settings_show_the_memory_and_speed_choices_the_models_were_loaded_with():
    cache = methods.PipelineCache(tiny=True, speedups=methods.Speedups(("owner/turbo:0.5",), compile=True))
    cache.memory = memory.Configuration("int8", "model")
    text = app.launch_settings(cache)
    assert "--quantize int8 --offload model" in text and "owner/turbo:0.5" in text and "compiled: yes" in text
    page = json.dumps(app.build_demo(cache, "asuka-sd", tiny=True).config, default=repr)
    assert "launch-settings" in page and "--quantize int8 --offload model" in page
    plain = app.launch_settings(methods.PipelineCache(tiny=True))
    assert "no quantization or offloading" in plain and "LoRAs: none" in plain and "compiled: no" in plain
