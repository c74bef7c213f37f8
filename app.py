"""asuka demo: a Gradio app for faithful image inpainting (UI only; models live in asuka.methods).

    python app.py                         # the first method with weights: ASUKA-FLUX on a GPU machine
    python app.py --tiny                  # random tiny weights, for trying the interface
    python app.py --method asuka-sd --model PATH  # ASUKA-SD from a folder written by save_pretrained

Paint the region to repaint on the image, click objects to select them (SAM 2.1), or upload a mask
(white = repaint), and press Run. The endpoints `/inpaint` and `/segment` are callable with gradio_client
(see docs/app.md). On a Hugging Face Space a model that cannot load does not stop the app: the page says how to
fix it and the other methods stay usable.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.context import LocalContext
from gradio.data_classes import FileData, ImageData
from gradio.helpers import patch_tqdm
from gradio.utils import get_upload_folder
from PIL import Image

from app_cache import start_cache_sweeper, sweep_interval
from asuka import methods
from asuka.defaults import resolve_device_dtype
from asuka.imageio import load_image, load_layer, load_mask, mask_from_layers
from asuka.masks import grow_mask, invert_mask, paste_feathered
from asuka.methods import NoDefaultMethod, choose_method, memory
from asuka.methods.segment import Segmenter, image_key, parse_prompts


try:  # On a ZeroGPU Space, `spaces.GPU` grants a GPU for the duration of each call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn=None, **options):
        """No-op stand-in for `spaces.GPU` (bare or with options such as `duration`) outside Spaces."""
        return fn if fn is not None else (lambda f: f)


EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TINY_BANNER = "⚠️ **Tiny mode: random weights, for trying the interface.** Results are noise, not inpainting."
MAX_SEED = 2**31 - 1
# Result files kept for download (newest first); older ones, and any past the cache age, are removed.
MAX_RESULT_FILES = 64
# Seconds after which uploads, outputs and result files are deleted (Gradio's `delete_cache` age).
CACHE_MAX_AGE_S = 6 * 3600

# How a Space owner passes what the guidance calls flags.
SPACES_HINT = (
    "On a Space, flags are Space variables (Settings -> Variables): ASUKA_METHOD=NAME, ASUKA_MODEL=PATH_OR_ID, "
    "ASUKA_TINY=1; a gated model also needs an HF_TOKEN secret of an account that accepted its licence."
)

# Seconds for everything around the denoising loop (moving weights, VAE/MAE passes, PNG encoding).
GPU_OVERHEAD_S = 15
# The longest ZeroGPU call asked for; longer estimates are capped (a Space visitor's quota is finite).
GPU_MAX_DURATION_S = 300
# ZeroGPU seconds asked for one click or `/segment` call (the first one also loads SAM 2.1, 156 MB).
SEGMENT_GPU_DURATION_S = 30
# The selection's colour over the photo in the "Click to select" view, and its opacity.
SELECTION_RGB, SELECTION_OPACITY = (255, 0, 255), 0.5
# A press and release this many photo pixels apart in the click view is a box drag, not a click.
DRAG_MIN_PX = 4
# Run on page load: remembers where a press on the click view started (photo pixels, placed as Gradio places the
# photo: contained, centred, never enlarged) and whether Shift or Alt was held, so that the release can select the
# box of a drag or subtract; and keeps the browser from dragging the picture itself.
DRAG_SETUP_JS = """
() => {
  const inView = (event) => event.target.closest && event.target.closest("#select-view");
  document.addEventListener("dragstart", (event) => { if (inView(event)) event.preventDefault(); }, true);
  document.addEventListener("mousedown", (event) => {
    const img = inView(event) && document.querySelector("#select-view img");
    window.asukaDragStart = null;
    if (!img || !img.naturalWidth) return;
    const box = img.getBoundingClientRect();
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight, 1);
    const x = Math.round((event.clientX - box.left - (box.width - img.naturalWidth * scale) / 2) / scale);
    const y = Math.round((event.clientY - box.top - (box.height - img.naturalHeight * scale) / 2) / scale);
    const inside = x >= 0 && y >= 0 && x < img.naturalWidth && y < img.naturalHeight;
    if (inside) window.asukaDragStart = [x, y, event.shiftKey || event.altKey];
  }, true);
}
"""
# Run before each click's handler: passes the press position along with the click.
DRAG_READ_JS = "(editor, upload, selection, mode, press) => [editor, upload, selection, mode, window.asukaDragStart]"


def on_spaces(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a Hugging Face Space (Spaces set `SYSTEM=spaces` and `SPACE_ID`)."""
    return environ.get("SYSTEM") == "spaces" or bool(environ.get("SPACE_ID"))


def _registered(name: str) -> methods.MethodSpec | None:
    """The spec of method `name`, or None for a name nobody registered (the handler refuses it)."""
    try:
        return methods.get_method(name)
    except ValueError:
        return None


def gpu_duration(
    editor: dict | None,
    mask_upload: Image.Image | None,
    method: str,
    steps: int,
    seed: int = 0,
    randomize_seed: bool = False,
    condition_weight: float = 1.0,
    guidance_scale: float = 1.0,
    keep_unmasked: bool = True,
    dilation: int = 0,
    run_backbone: bool = False,
    feather: int = 0,
    invert: bool = False,
    selection: dict | None = None,
    step_cache: str = "",
    progress: Any = None,
) -> int:
    """Seconds of ZeroGPU to request for one `/inpaint` call (`spaces.GPU` passes the handler's arguments).

    Denoising dominates: steps times the method's per-step cost (its spec's `gpu_seconds_per_step`; an unknown
    name: `methods.DEFAULT_GPU_SECONDS_PER_STEP`), once more for "also run the backbone", scaled up for photos
    above 4 MP (cropping, VAE and PNG work grow with the pixels), plus a fixed overhead.
    """
    background = (editor or {}).get("background")
    megapixels = background.width * background.height / 1e6 if background is not None else 1.0
    specs = [_registered(method)]
    if run_backbone and specs[0] is not None and specs[0].backbone:
        specs.append(_registered(specs[0].backbone))
    per_step = [methods.DEFAULT_GPU_SECONDS_PER_STEP if spec is None else spec.gpu_seconds_per_step for spec in specs]
    denoise = sum(int(steps) * seconds for seconds in per_step)
    estimate = GPU_OVERHEAD_S + denoise * max(1.0, megapixels / 4)
    return min(GPU_MAX_DURATION_S, math.ceil(estimate))


class PhotoEditor(gr.ImageEditor):
    """`gr.ImageEditor` whose uploads are read with asuka.imageio (EXIF rotation, 16-bit, any mode).

    A file that is not a readable image raises `gr.Error` with the reason, which Gradio shows in the page
    and sends to API clients (a plain exception here would reach them as a bare "Error").
    """

    def get_block_name(self) -> str:
        return "imageeditor"  # same front-end component as gr.ImageEditor

    def convert_and_format_image(self, file: FileData | bytes | None, flatten_on_white: bool = False) -> Any:
        if file is None:
            return None
        source = file.path if isinstance(file, FileData) else bytes(file)
        # Returns PIL images (this app uses type="pil"). The background and the composite are photos,
        # flattened to RGB; the painted layers keep their alpha, which is the mask.
        try:
            return load_image(source) if flatten_on_white else load_layer(source)
        except ValueError as error:
            what = "The image" if flatten_on_white else "A painted layer"
            raise gr.Error(f"{what} cannot be used: {error}") from error


class MaskUpload(gr.Image):
    """`gr.Image` for the optional mask, read with asuka.imageio into a binary `L` mask (255 = repaint)."""

    what = "The mask"

    def get_block_name(self) -> str:
        return "image"  # same front-end component as gr.Image

    def read(self, source: Any) -> Image.Image:
        return load_mask(source)

    def preprocess(self, payload: ImageData | None) -> Image.Image | None:
        if payload is None:
            return None
        try:
            return self.read(payload.path if payload.path else super().preprocess(payload))
        except ValueError as error:
            raise gr.Error(f"{self.what} cannot be used: {error}") from error


class PhotoUpload(MaskUpload):
    """`gr.Image` for a photo, read with asuka.imageio as the editor reads its background (RGB)."""

    what = "The image"

    def read(self, source: Any) -> Image.Image:
        return load_image(source)


class ResultFiles:
    """The downloadable result PNGs, one sub-folder each under `root`, bounded in number and age.

    `root` lies in Gradio's cache, so Gradio serves the files without copying them and its
    `delete_cache` removes them too; [`~ResultFiles.save`] prunes the rest.
    """

    def __init__(self, root: Path, max_files: int = MAX_RESULT_FILES, max_age_s: float = CACHE_MAX_AGE_S):
        self.root, self.max_files, self.max_age_s = Path(root), max_files, max_age_s

    def save(self, image: Image.Image) -> str:
        """Write `image` as `<root>/<unique>/inpainted.png` after removing expired results; returns its path."""
        self.prune(keep=self.max_files - 1)
        folder = self.root / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        path = folder / "inpainted.png"
        image.save(path)
        return str(path)

    def prune(self, keep: int | None = None) -> None:
        """Delete results older than the age limit and all but the newest `keep` (default: the limit)."""
        keep = self.max_files if keep is None else keep
        dated = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            try:
                dated.append((folder.stat().st_mtime, folder))
            except FileNotFoundError:  # removed meanwhile by the sweeper thread
                continue
        now = time.time()
        for index, (mtime, folder) in enumerate(sorted(dated, reverse=True)):
            if index >= keep or now - mtime > self.max_age_s:
                shutil.rmtree(folder, ignore_errors=True)


def results_in_gradio_cache(max_files: int = MAX_RESULT_FILES, max_age_s: float = CACHE_MAX_AGE_S) -> ResultFiles:
    """The result files in Gradio's cache (`asuka-results/`), which Gradio serves without copying them."""
    return ResultFiles(Path(get_upload_folder()) / "asuka-results", max_files, max_age_s)


def load_stage(desc: str | None, unit: str | None) -> str:
    """The stage a progress bar of a model load belongs to, from its description and unit."""
    text = (desc or "").lower()
    if unit in ("B", "iB") or text.startswith(("fetching", "download")):
        return "downloading"
    if "convert" in text:
        return "converting"
    return "loading"


class LoadProgress(gr.Progress):
    """Forwards the tqdm bars opened while a model loads (Hub downloads in bytes, conversion, loading)
    to the page's progress bar, each named with its stage."""

    def __init__(self, page: gr.Progress, label: str):
        super().__init__()
        self.page, self.label = page, label

    def _progress_callback(self):
        return self.page._progress_callback()

    def tqdm(self, iterable, desc=None, total=None, unit="steps", _tqdm=None):
        named = f"{self.label}: {load_stage(desc, unit)}" + (f" — {desc}" if desc else "")
        return super().tqdm(iterable, named, total, unit, _tqdm)

    def close(self, _tqdm):
        super().close(_tqdm)
        if not self.iterables:  # between bars (e.g. converting a downloaded release): say what is going on
            self.page(None, desc=f"{self.label}: preparing the weights (converting / loading)")


@contextmanager
def reporting_load(progress: gr.Progress, label: str) -> Iterator[None]:
    """While active, every tqdm bar in this thread reports to `progress` as a [`LoadProgress`]."""
    patch_tqdm()  # Gradio's tqdm hook (idempotent); it reads the progress from LocalContext
    progress(0, desc=f"{label}: loading (the first use downloads and prepares the weights)")
    token = LocalContext.progress.set(LoadProgress(progress, label))
    try:
        yield
    finally:
        LocalContext.progress.reset(token)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="asuka inpainting demo")
    # Spaces cannot pass flags: ASUKA_METHOD / ASUKA_MODEL / ASUKA_TINY / ASUKA_QUANTIZE / ASUKA_OFFLOAD set defaults
    env = os.environ.get
    parser.add_argument(
        "--method",
        default=env("ASUKA_METHOD") or None,
        help="registered method shown first (default: the first one with weights: asuka-flux on a GPU)",
    )
    parser.add_argument("--model", default=env("ASUKA_MODEL"), help="Hub id or local folder of that method's weights")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: bfloat16 on GPU)")
    parser.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=env("ASUKA_TINY", "") in ("1", "true"),
        help="random tiny weights, for trying the interface",
    )
    memory.add_memory_arguments(parser, quantize=env("ASUKA_QUANTIZE"), offload=env("ASUKA_OFFLOAD"))
    methods.add_speed_arguments(parser)  # --cache (the settings' default), --lora, --compile
    parser.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait; more are refused")
    parser.add_argument(
        "--cache-max-age",
        type=int,
        default=int(env("ASUKA_CACHE_MAX_AGE", CACHE_MAX_AGE_S)),
        help=f"seconds before uploads and results are deleted (default {CACHE_MAX_AGE_S})",
    )
    parser.add_argument(
        "--segment-model",
        default=env("ASUKA_SEGMENT_MODEL") or None,
        help="Hub id or folder of the SAM 2 model behind click-to-select (default facebook/sam2.1-hiera-tiny)",
    )
    parser.add_argument(
        "--max-results",
        type=int,
        default=MAX_RESULT_FILES,
        help=f"result files kept for download (default {MAX_RESULT_FILES})",
    )
    return parser.parse_args(argv)


def _editor_mask(editor: dict | None, mask: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    """The uploaded mask if there is one, else what the user painted (union of layer alphas)."""
    if mask is not None:
        return load_mask(mask, size=size)
    return mask_from_layers((editor or {}).get("layers") or [], size)


def _selected(selection: dict | None, image: Image.Image) -> np.ndarray | None:
    """The clicked selection (boolean `(H, W)`) if it was made on `image`, else None."""
    if selection and selection.get("key") == image_key(image):
        return selection["mask"]
    return None


def overlay_selection(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """`image` with `mask` tinted in the selection colour, as the "Click to select" view shows it."""
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = photo * (1 - SELECTION_OPACITY) + np.asarray(SELECTION_RGB, dtype=np.float32) * SELECTION_OPACITY
    return Image.fromarray(np.where(mask[..., None], tint, photo).round().astype(np.uint8), mode="RGB")


def mask_to_use(
    editor: dict | None,
    mask_upload: Image.Image | None,
    selection: dict | None,
    grow: int = 0,
    invert: bool = False,
) -> Image.Image:
    """The mask a run uses: the upload (or the painting) merged with the clicked selection, inverted if asked,
    then grown (or shrunk, `grow` < 0); `L`, 255 = repaint. `ValueError` for a mask that cannot be used."""
    image = editor["background"]
    mask = np.asarray(_editor_mask(editor, mask_upload, image.size)) > 127
    selected = _selected(selection, image)
    if selected is not None:
        mask = mask | selected
    mask = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    if invert:
        mask = invert_mask(mask)
    return grow_mask(mask, int(grow)) if grow else mask


def inpaint(
    editor: dict | None,
    mask_upload: Image.Image | None,
    method: str,
    steps: int,
    seed: int,
    randomize_seed: bool,
    condition_weight: float,
    guidance_scale: float,
    keep_unmasked: bool,
    dilation: int,
    run_backbone: bool,
    feather: int = 0,
    invert: bool = False,
    selection: dict | None = None,
    step_cache: str = "",
    progress: gr.Progress = gr.Progress(),
    *,
    cache: methods.PipelineCache,
    results: ResultFiles,
) -> tuple:
    """`/inpaint`: run one request from the page's inputs through `cache`'s pipelines and save its download in
    `results`.

    The mask is the upload (or the painting) merged with the clicked `selection`, inverted if asked, grown by
    `dilation`; `feather` softens the paste-back (with `keep_unmasked` only). Returns the result, the before/after
    pair, the backbone's result (with `run_backbone`), the MAE reconstruction, the download's path, the seed used,
    the mask used and the run time. What the user can fix (no image, an empty or unusable mask, a model that does
    not load, bad settings) raises `gr.Error` with the reason.
    """
    if not editor or editor.get("background") is None:
        raise gr.Error("Upload an image first, then paint over the part to repaint.")
    image = editor["background"]
    try:
        mask = mask_to_use(editor, mask_upload, selection, int(dilation), bool(invert))
    except ValueError as error:
        raise gr.Error(f"The mask cannot be used: {error}") from error
    if not np.asarray(mask).any():
        raise gr.Error(
            'The mask is empty: paint over the region to repaint, click an object in "Click to select", '
            "or upload a mask (white = repaint)."
        )
    feather = max(0, int(feather)) if keep_unmasked else 0  # the feather softens the paste-back
    spec = methods.get_method(method)
    if randomize_seed:
        seed = random.randint(0, MAX_SEED)
    request = methods.InpaintRequest(
        image=image,
        mask=mask,
        steps=int(steps),
        seed=int(seed),
        condition_weight=float(condition_weight) if spec.uses_condition_weight else None,
        guidance_scale=float(guidance_scale) if spec.uses_guidance else None,
        keep_unmasked=bool(keep_unmasked) and not feather,  # a feathered paste-back needs the decoded ring
        reconstruction=True,  # shown in the "MAE reconstruction" tab
        step_cache=(step_cache or "").strip() or None,
    )

    def run(name: str, label: str, request: methods.InpaintRequest) -> methods.InpaintResult:
        try:
            with reporting_load(progress, label):
                pipeline = cache.get(name)
        except methods.ModelLoadError as error:
            raise gr.Error(str(error), duration=None) from error
        try:
            outcome = methods.run_method(
                name, pipeline, request, lambda done, total: progress((done, total), desc=label, unit="steps")
            )
        except ValueError as error:
            raise gr.Error(str(error)) from error
        if feather:
            outcome.image = paste_feathered(image, outcome.image, mask, feather)
        return outcome

    start = time.perf_counter()
    result = run(spec.name, spec.label, request)
    seconds = time.perf_counter() - start
    backbone = None
    if run_backbone and spec.backbone:  # the backbone alone: diffusers' own pipeline, without a step cache
        backbone_request = dataclasses.replace(request, step_cache=None)
        backbone = run(spec.backbone, methods.get_method(spec.backbone).label, backbone_request).image
    elif run_backbone:
        gr.Warning(f"{spec.label} has no separate backbone to compare with.")
    download = results.save(result.image)
    took = f"{spec.label}: {seconds:.2f} s for {request.steps} steps" + (
        f" (step cache {request.step_cache})" if request.step_cache else ""
    )
    return (result.image, (image, result.image), backbone, result.reconstruction, download, seed, mask, took)


def launch_settings(cache: methods.PipelineCache) -> str:
    """The memory and speed choices the models were loaded with, for the Settings panel: they need a reload, so
    they are launch flags (or a Space's variables) rather than per-run controls."""
    weights = cache.memory.describe() if cache.memory is not None else "as loaded (no quantization or offloading)"
    loras = ", ".join(cache.speedups.loras) or "none"
    compiled = "yes" if cache.speedups.compile else "no"
    return (
        f"**Loaded with** memory `{weights}`, LoRAs: {loras}, compiled: {compiled}. To change them, restart with "
        "`--quantize`, `--offload`, `--lora`, `--compile` (on a Space: `ASUKA_QUANTIZE`, `ASUKA_OFFLOAD`)."
    )


def build_demo(
    cache: methods.PipelineCache,
    default_method: str,
    tiny: bool = False,
    max_queue: int = 16,
    guidance: str | None = None,
    results: ResultFiles | None = None,
    cache_max_age: int = CACHE_MAX_AGE_S,
    segmenter: Segmenter | None = None,
    step_cache: str | None = None,
) -> gr.Blocks:
    """The Blocks UI; every model call goes through `cache` and the methods, every click through `segmenter`
    (default: SAM 2.1 on the cache's device, tiny and random when the cache is).

    `step_cache` (`NAME[:VALUE]`, e.g. `first-block:0.12`) is the settings' default step cache for the ASUKA
    methods; the page shows the seconds each run took.

    `guidance` (why the first model could not load, and how to fix it) is shown where the result goes.
    The downloads go to `results` (default: `results_in_gradio_cache`); Gradio deletes uploads and outputs
    `cache_max_age` seconds after they were written. Building the page starts nothing: `main` starts the
    sweeper (`app_cache.start_cache_sweeper`) as it launches the page.
    """
    choices = [(spec.label, spec.name) for spec in methods.list_methods()]
    first = methods.get_method(default_method)
    cache_max_age = max(1, cache_max_age)
    results = results or results_in_gradio_cache(max_age_s=cache_max_age)
    segmenter = segmenter or Segmenter(device=cache.device, tiny=cache.tiny)

    def selection_view(editor: dict | None, mask_upload: Image.Image | None, selection: dict | None):
        """The photo with the mask so far (painting or upload, and the clicked selection) tinted over it."""
        image = (editor or {}).get("background")
        if image is None:
            return None
        try:
            mask = np.asarray(mask_to_use(editor, mask_upload, selection)) > 127
        except ValueError:  # an upload that does not fit shows as no mask here; Run says why
            mask = np.zeros((image.height, image.width), dtype=bool)
        return overlay_selection(image, mask)

    def show_selection(editor: dict | None, mask_upload: Image.Image | None, selection: dict | None):
        image = (editor or {}).get("background")
        if image is not None and _selected(selection, image) is None:
            selection = None  # a new photo starts a new selection
        return selection_view(editor, mask_upload, selection), selection

    @gpu(duration=SEGMENT_GPU_DURATION_S)
    def on_click(
        editor: dict | None,
        mask_upload: Image.Image | None,
        selection: dict | None,
        mode: str,
        press: list | None,
        event: gr.SelectData,
        progress: gr.Progress = gr.Progress(),
    ):
        """A click in the "Click to select" view: add (or subtract) the object under it, or set a box corner; a drag
        selects its box. `press`: where the press started and whether Shift or Alt was held (subtract)."""
        image = (editor or {}).get("background")
        if image is None:
            raise gr.Error("No image is loaded yet: upload an image in Paint (or pick an example), then click on it.")
        if not event.index or len(event.index) != 2:
            raise gr.Error("The click was outside the image: click on the photo.")
        x, y = (int(v) for v in event.index)
        key = image_key(image)
        start = _selected(selection, image)
        corner = selection.get("corner") if start is not None and mode == "Box" else None
        if press and max(abs(press[0] - x), abs(press[1] - y)) >= DRAG_MIN_PX:
            mode, corner = "Box", (int(press[0]), int(press[1]))
        elif press and len(press) > 2 and press[2] and mode == "Add":
            mode = "Subtract"
        if mode == "Box" and corner is None:
            gr.Info(f"First corner at ({x}, {y}); click the opposite corner.")
            start = np.zeros((image.height, image.width), dtype=bool) if start is None else start
            return gr.skip(), {"key": key, "mask": start, "corner": (x, y)}
        try:
            with reporting_load(progress, "Segmentation model") if not segmenter.loaded else nullcontext():
                if mode == "Box":
                    mask = segmenter.select(image, box=(*corner, x, y), start=start)
                else:
                    mask = segmenter.select(image, [(x, y, mode != "Subtract")], start=start)
        except methods.ModelLoadError as error:
            raise gr.Error(str(error), duration=None) from error
        except ValueError as error:
            raise gr.Error(str(error)) from error
        selection = {"key": key, "mask": mask, "corner": None}
        return selection_view(editor, mask_upload, selection), selection

    def clear_mask(editor: dict | None):
        """Start the mask over: no selection, no painting, no uploaded mask."""
        image = (editor or {}).get("background")
        cleared = gr.skip() if image is None else {"background": image, "layers": [], "composite": image}
        return cleared, None, None, image

    @gpu(duration=SEGMENT_GPU_DURATION_S)
    def segment_api(image: Image.Image | None, points: Any, box: Any) -> Image.Image:
        """`/segment`: the mask (`L`, 255 = selected) of the objects under `points` / inside `box`."""
        try:
            selected = segmenter.select(image, *parse_prompts(points, box))
        except methods.ModelLoadError as error:
            raise gr.Error(str(error)) from error
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return Image.fromarray(selected.astype(np.uint8) * 255, mode="L")

    def on_method(method: str):
        spec = methods.get_method(method)
        return (
            gr.update(value=spec.default_steps),
            gr.update(visible=spec.uses_condition_weight),
            gr.update(visible=spec.uses_guidance, value=spec.default_guidance),
            gr.update(interactive=spec.backbone is not None),
            gr.update(value=spec.paper),
        )

    # Uploads and outputs are deleted by age: by Gradio's delete_cache (which also empties the cache at shut-down)
    # and by the sweeper `main` starts (see app_cache), on the same schedule.
    with gr.Blocks(title="asuka inpainting", delete_cache=(sweep_interval(cache_max_age), cache_max_age)) as demo:
        gr.Markdown(
            "# asuka — faithful inpainting\nPaint over what should be repainted, click objects in **Click to select** "
            "(or upload a mask), then **Run**."
        )
        if tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Paint", id="paint"):
                        editor = PhotoEditor(
                            label="Image — paint the region to repaint",
                            type="pil",
                            image_mode="RGBA",
                            format="png",
                            sources=("upload", "clipboard"),
                            transforms=(),
                            layers=False,
                            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                            eraser=gr.Eraser(),
                            height=400,
                            elem_id="editor",
                        )
                    with gr.Tab("Click to select", id="select") as select_tab:
                        select_view = gr.Image(
                            label="Click an object to select it (the photo comes from Paint)",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=400,
                            elem_id="select-view",
                        )
                        with gr.Row():
                            select_mode = gr.Radio(
                                ["Add", "Subtract", "Box"],
                                value="Add",
                                show_label=False,
                                info="A click adds the object under it (Shift-click subtracts); drag for a box",
                                elem_id="select-mode",
                                scale=3,
                            )
                            clear_button = gr.Button("Clear mask", elem_id="clear-mask", scale=1)
                    with gr.Tab("Upload a mask", id="mask"):
                        mask_upload = MaskUpload(
                            label="Mask (optional, overrides the painting; white = repaint)",
                            type="pil",
                            image_mode=None,
                            sources=("upload", "clipboard"),
                            elem_id="mask-upload",
                            height=400,
                        )
                with gr.Row():
                    method = gr.Dropdown(choices=choices, value=first.name, label="Model", elem_id="method", scale=3)
                    run_button = gr.Button("Run", variant="primary", elem_id="run", scale=1)
                paper = gr.Markdown(first.paper, elem_id="method-paper")
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    steps = gr.Slider(1, 100, value=first.default_steps, step=1, label="Steps")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                        randomize = gr.Checkbox(value=False, label="Randomise seed")
                    condition_weight = gr.Slider(
                        0.0, 2.0, value=1.0, step=0.05, label="Condition weight", visible=first.uses_condition_weight
                    )
                    guidance_slider = gr.Slider(
                        0.0,
                        50.0,
                        value=first.default_guidance,
                        step=0.5,
                        label="Guidance",
                        visible=first.uses_guidance,
                    )
                    keep_unmasked = gr.Checkbox(value=True, label="Keep unmasked pixels exactly")
                    with gr.Row():
                        dilation = gr.Slider(
                            -32, 64, value=0, step=1, label="Grow (+) / shrink (−) mask (px)", elem_id="grow"
                        )
                        feather = gr.Slider(
                            0,
                            32,
                            value=0,
                            step=1,
                            label="Feather the seam (px)",
                            info="0: hard paste-back; pixels farther than this stay exactly the input",
                            elem_id="feather",
                        )
                    invert = gr.Checkbox(value=False, label="Invert mask (repaint everything else)")
                    run_backbone = gr.Checkbox(
                        value=False, label="Also run the backbone alone", interactive=first.backbone is not None
                    )
                    step_cache_box = gr.Textbox(
                        value=step_cache or "",
                        label="Step cache (ASUKA methods; empty: none)",
                        info=methods.CACHE_HELP,
                    )
                    gr.Markdown(launch_settings(cache), elem_id="launch-settings")
            with gr.Column(scale=1):
                if guidance:
                    gr.Markdown(f"### No model loaded at start-up\n\n```\n{guidance}\n```", elem_id="load-guidance")
                with gr.Tabs(elem_id="outputs"):
                    with gr.Tab("Result", id="result-tab"):
                        result = gr.Image(
                            label="Result", type="pil", format="png", interactive=False, height=400, elem_id="result"
                        )
                    with gr.Tab("Before / after", id="slider-tab"):
                        slider = gr.ImageSlider(
                            label="Before / after", type="pil", format="png", interactive=False, height=400
                        )
                    with gr.Tab("Backbone alone", id="backbone-tab"):
                        backbone = gr.Image(label="Backbone alone", type="pil", format="png", interactive=False)
                    with gr.Tab("MAE reconstruction", id="reconstruction-tab"):
                        reconstruction = gr.Image(
                            label="MAE reconstruction (what the prior thinks)",
                            type="pil",
                            format="png",
                            interactive=False,
                        )
                    with gr.Tab("Mask used", id="mask-tab"):
                        used_mask = gr.Image(
                            label="Mask used", type="pil", format="png", interactive=False, elem_id="mask-used"
                        )
                with gr.Row():
                    download = gr.DownloadButton("Download (full resolution PNG)", elem_id="download", scale=2)
                    used_seed = gr.Number(label="Seed used", precision=0, interactive=False, scale=1)
                run_time = gr.Textbox(label="Run time", interactive=False, elem_id="run-time")

        selection = gr.State(None)
        press = gr.JSON(visible=False)  # where a drag in the click view started (set in the page, see DRAG_READ_JS)
        with gr.Row(visible=False):  # the `/segment` endpoint's inputs and output (API only)
            segment_image = PhotoUpload(label="image", type="pil", image_mode=None)
            segment_points = gr.JSON(label="points")
            segment_box = gr.JSON(label="box")
            segment_mask = gr.Image(label="mask", type="pil", format="png")
            segment_button = gr.Button()

        examples = _examples()
        if examples:
            gr.Examples(examples=examples, inputs=[editor, mask_upload], label="Examples (mask included)")

        method.change(
            on_method,
            inputs=method,
            outputs=[steps, condition_weight, guidance_slider, run_backbone, paper],
            api_visibility="private",
        )
        run_button.click(
            gpu(duration=gpu_duration)(functools.partial(inpaint, cache=cache, results=results)),
            inputs=[
                editor,
                mask_upload,
                method,
                steps,
                seed,
                randomize,
                condition_weight,
                guidance_slider,
                keep_unmasked,
                dilation,
                run_backbone,
                feather,
                invert,
                selection,
                step_cache_box,
            ],
            outputs=[result, slider, backbone, reconstruction, download, used_seed, used_mask, run_time],
            api_name="inpaint",
            api_description=False,  # docs/app.md documents the endpoint; a partial's docstring is not its own
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        select_tab.select(
            show_selection,
            inputs=[editor, mask_upload, selection],
            outputs=[select_view, selection],
            api_visibility="private",
        )
        demo.load(None, js=DRAG_SETUP_JS)
        select_view.select(
            on_click,
            inputs=[editor, mask_upload, selection, select_mode, press],
            js=DRAG_READ_JS,
            outputs=[select_view, selection],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id="segment",
        )
        clear_button.click(
            clear_mask, inputs=editor, outputs=[editor, mask_upload, selection, select_view], api_visibility="private"
        )
        segment_button.click(
            segment_api,
            inputs=[segment_image, segment_points, segment_box],
            outputs=segment_mask,
            api_name="segment",
            concurrency_limit=1,
            concurrency_id="segment",
        )
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    return demo


def _examples() -> list[list[str]]:
    """[image, mask] pairs from examples/ (<name>.<ext> with <name>_mask.png)."""
    pairs = []
    for mask in sorted(EXAMPLES_DIR.glob("*_mask.png")):
        image = next(
            (
                p
                for p in sorted(EXAMPLES_DIR.glob(mask.name[: -len("_mask.png")] + ".*"))
                if not p.name.endswith("_mask.png")
            ),
            None,
        )
        if image is not None:
            pairs.append([str(image), str(mask)])
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    # applied as each pipeline loads, stated in the log; a step cache's hooks break a full graph
    speedups = methods.Speedups(tuple(args.lora), args.compile, fullgraph=args.cache is None)
    cache = methods.PipelineCache(device=device, dtype=dtype, tiny=args.tiny, speedups=speedups)
    name, guidance = None, None
    try:
        name = choose_method(args.method, args.tiny, cuda_available=device.startswith("cuda"))
        if args.model:
            cache.models[name] = args.model
        cache.memory, line = memory.memory_for_method(name, args.quantize, args.offload, device)
        if line:
            print(line, file=sys.stderr)
        cache.get(name)  # load the first model now, so a bad model id fails at start-up
    except (ValueError, NoDefaultMethod, methods.ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        if not on_spaces():
            raise SystemExit(2)
        # A Space that crashes shows only "Runtime error": start the page and put the fix-it text in it.
        guidance = f"{error}\n\n{SPACES_HINT}"
        name = name or methods.list_methods()[0].name
    segmenter = Segmenter(args.segment_model, device=cache.device, tiny=args.tiny)
    cache_max_age = max(1, args.cache_max_age)
    results = results_in_gradio_cache(args.max_results, cache_max_age)
    demo = build_demo(
        cache,
        name,
        tiny=args.tiny,
        max_queue=args.max_queue,
        guidance=guidance,
        results=results,
        cache_max_age=cache_max_age,
        segmenter=segmenter,
        step_cache=args.cache,
    )
    start_cache_sweeper(demo, results, cache_max_age, sweep_interval(cache_max_age))
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
