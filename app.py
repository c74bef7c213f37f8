"""asuka demo: a Gradio app for faithful image inpainting (UI only; models live in asuka.methods).

    python app.py                         # the first method with weights: ASUKA-FLUX on a GPU machine
    python app.py --tiny                  # random tiny weights, for trying the interface
    python app.py --method asuka-sd --model PATH  # ASUKA-SD from a folder written by save_pretrained

Paint the region to repaint on the image (or upload a mask: white = repaint) and press Run.
The endpoint ``/inpaint`` is callable with gradio_client (see docs/app.md). On a Hugging Face Space a
model that cannot load does not stop the app: the page says how to fix it and the other methods stay usable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.context import LocalContext
from gradio.data_classes import FileData, ImageData
from gradio.helpers import patch_tqdm
from gradio.utils import get_upload_folder
from PIL import Image

from asuka import methods
from asuka.defaults import resolve_device_dtype
from asuka.imageio import load_image, load_layer, load_mask, mask_from_layers
from asuka.masks import dilate_mask
from asuka.methods import NoDefaultMethod, choose_method


try:  # On a ZeroGPU Space, `spaces.GPU` grants a GPU for the duration of each call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn=None, **options):
        """No-op stand-in for `spaces.GPU` (bare or with options such as ``duration``) outside Spaces."""
        return fn if fn is not None else (lambda f: f)


EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TINY_BANNER = "⚠️ **Tiny mode: random weights, for trying the interface.** Results are noise, not inpainting."
MAX_SEED = 2**31 - 1
#: Result files kept for download (newest first); older ones, and any past the cache age, are removed.
MAX_RESULT_FILES = 64
#: Seconds after which uploads, outputs and result files are deleted (Gradio's ``delete_cache`` age).
CACHE_MAX_AGE_S = 6 * 3600

#: How a Space owner passes what the guidance calls flags.
SPACES_HINT = (
    "On a Space, flags are Space variables (Settings -> Variables): ASUKA_METHOD=NAME, ASUKA_MODEL=PATH_OR_ID, "
    "ASUKA_TINY=1; a gated model also needs an HF_TOKEN secret of an account that accepted its licence."
)

#: ZeroGPU estimate per method: seconds per denoising step at the method's working size on one GPU slice.
GPU_SECONDS_PER_STEP = {"asuka-flux": 0.6, "flux-fill": 0.5, "asuka-sd": 0.08, "sd": 0.06, "strdiffusion": 0.08}
#: Methods added by other packages are assumed to be as slow as the slowest built-in one.
GPU_SECONDS_PER_STEP_UNKNOWN = 0.6
#: Seconds for everything around the denoising loop (moving weights, VAE/MAE passes, PNG encoding).
GPU_OVERHEAD_S = 15
#: The longest ZeroGPU call asked for; longer estimates are capped (a Space visitor's quota is finite).
GPU_MAX_DURATION_S = 300


def on_spaces(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a Hugging Face Space (Spaces set ``SYSTEM=spaces`` and ``SPACE_ID``)."""
    return environ.get("SYSTEM") == "spaces" or bool(environ.get("SPACE_ID"))


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
    step_cache: str = "",
    progress: Any = None,
) -> int:
    """Seconds of ZeroGPU to request for one `/inpaint` call (``spaces.GPU`` passes the handler's arguments).

    Denoising dominates: steps times the method's per-step cost, once more for "also run the backbone",
    scaled up for photos above 4 MP (cropping, VAE and PNG work grow with the pixels), plus a fixed overhead.
    """
    background = (editor or {}).get("background")
    megapixels = background.width * background.height / 1e6 if background is not None else 1.0
    names = [method]
    if run_backbone:
        try:
            backbone = methods.get_method(method).backbone
        except ValueError:
            backbone = None
        names += [backbone] if backbone else []
    denoise = sum(int(steps) * GPU_SECONDS_PER_STEP.get(name, GPU_SECONDS_PER_STEP_UNKNOWN) for name in names)
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
    """`gr.Image` for the optional mask, read with asuka.imageio into a binary ``L`` mask (255 = repaint)."""

    def get_block_name(self) -> str:
        return "image"  # same front-end component as gr.Image

    def preprocess(self, payload: ImageData | None) -> Image.Image | None:
        if payload is None:
            return None
        try:
            return load_mask(payload.path if payload.path else super().preprocess(payload))
        except ValueError as error:
            raise gr.Error(f"The mask cannot be used: {error}") from error


class ResultFiles:
    """The downloadable result PNGs, one sub-folder each under ``root``, bounded in number and age.

    ``root`` lies in Gradio's cache, so Gradio serves the files without copying them and its
    ``delete_cache`` removes them too; :meth:`save` prunes the rest.
    """

    def __init__(self, root: Path, max_files: int = MAX_RESULT_FILES, max_age_s: float = CACHE_MAX_AGE_S):
        self.root, self.max_files, self.max_age_s = Path(root), max_files, max_age_s

    def save(self, image: Image.Image) -> str:
        """Write ``image`` as ``<root>/<unique>/inpainted.png`` after removing expired results; returns its path."""
        self.prune(keep=self.max_files - 1)
        folder = self.root / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        path = folder / "inpainted.png"
        image.save(path)
        return str(path)

    def prune(self, keep: int | None = None) -> None:
        """Delete results older than the age limit and all but the newest ``keep`` (default: the limit)."""
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


def sweep_cache(demo: gr.Blocks, results: ResultFiles, max_age_s: float) -> None:
    """Delete the uploads and outputs Gradio tracks for ``demo`` that are older than ``max_age_s``, and old results.

    What Gradio's ``delete_cache`` does, but on a snapshot of each set: Gradio 6.31 walks the live sets from
    a worker thread, so a request that finishes during its sweep ("Set changed size during iteration")
    ends its clean-up task for good, and the disk fills from then on.
    """
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    now = time.time()
    for files in demo.temp_file_sets:
        gone = set()
        for file in list(files):  # one atomic copy; requests may add files meanwhile
            if file in keep:
                continue
            try:
                if now - os.lstat(file).st_ctime > max_age_s:
                    os.remove(file)
                    gone.add(file)
            except FileNotFoundError:
                gone.add(file)
        files.difference_update(gone)
    results.prune()


def start_cache_sweeper(
    demo: gr.Blocks, results: ResultFiles, max_age_s: float, every_s: float, stop: threading.Event | None = None
) -> threading.Thread:
    """Run :func:`sweep_cache` every ``every_s`` seconds in a daemon thread until ``stop`` is set; a failed
    sweep is logged and retried."""
    stop = stop or threading.Event()

    def sweep_forever() -> None:
        while not stop.wait(every_s):
            try:
                sweep_cache(demo, results, max_age_s)
            except Exception:  # a clean-up that stops for good would let the disk fill
                logging.getLogger(__name__).exception("Cache clean-up failed; retrying in %s s", every_s)

    thread = threading.Thread(target=sweep_forever, name="asuka-cache-sweeper", daemon=True)
    thread.start()
    return thread


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
    """While active, every tqdm bar in this thread reports to ``progress`` as a :class:`LoadProgress`."""
    patch_tqdm()  # Gradio's tqdm hook (idempotent); it reads the progress from LocalContext
    progress(0, desc=f"{label}: loading (the first use downloads and prepares the weights)")
    token = LocalContext.progress.set(LoadProgress(progress, label))
    try:
        yield
    finally:
        LocalContext.progress.reset(token)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="asuka inpainting demo")
    env = os.environ.get  # Spaces cannot pass flags: ASUKA_METHOD / ASUKA_MODEL / ASUKA_TINY set the defaults
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
    methods.add_speed_arguments(parser)  # --cache (the settings' default), --lora, --compile
    parser.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait; more are refused")
    parser.add_argument(
        "--cache-max-age",
        type=int,
        default=int(env("ASUKA_CACHE_MAX_AGE", CACHE_MAX_AGE_S)),
        help=f"seconds before uploads and results are deleted (default {CACHE_MAX_AGE_S})",
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


def build_demo(
    cache: methods.PipelineCache,
    default_method: str,
    tiny: bool = False,
    max_queue: int = 16,
    guidance: str | None = None,
    max_results: int = MAX_RESULT_FILES,
    cache_max_age: int = CACHE_MAX_AGE_S,
    step_cache: str | None = None,
) -> gr.Blocks:
    """The Blocks UI; every model call goes through ``cache`` and the methods.

    ``step_cache`` (``NAME[:VALUE]``, e.g. ``first-block:0.12``) is the settings' default step cache for the ASUKA
    methods; the page shows the seconds each run took.

    ``guidance`` (why the first model could not load, and how to fix it) is shown where the result goes.
    Uploads, outputs and result files are deleted ``cache_max_age`` seconds after they were written, and
    at most ``max_results`` result files are kept.
    """
    choices = [(spec.label, spec.name) for spec in methods.list_methods()]
    first = methods.get_method(default_method)
    cache_max_age = max(1, cache_max_age)
    results = ResultFiles(Path(get_upload_folder()) / "asuka-results", max_results, cache_max_age)

    @gpu(duration=gpu_duration)
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
        step_cache: str = "",
        progress: gr.Progress = gr.Progress(),
    ):
        if not editor or editor.get("background") is None:
            raise gr.Error("Upload an image first, then paint over the part to repaint.")
        image = editor["background"]
        try:
            mask = _editor_mask(editor, mask_upload, image.size)
        except ValueError as error:
            raise gr.Error(f"The mask cannot be used: {error}") from error
        if dilation:
            mask = dilate_mask(mask, int(dilation))
        if not np.asarray(mask).any():
            raise gr.Error("The mask is empty: paint over the region to repaint, or upload a mask (white = repaint).")
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
            keep_unmasked=bool(keep_unmasked),
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
                return methods.run_method(
                    name, pipeline, request, lambda done, total: progress((done, total), desc=label, unit="steps")
                )
            except ValueError as error:
                raise gr.Error(str(error)) from error

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

    def on_method(method: str):
        spec = methods.get_method(method)
        return (
            gr.update(value=spec.default_steps),
            gr.update(visible=spec.uses_condition_weight),
            gr.update(visible=spec.uses_guidance, value=spec.default_guidance),
            gr.update(interactive=spec.backbone is not None),
            gr.update(value=spec.paper),
        )

    # Uploads and outputs are deleted by age, every quarter of the age (at most hourly): by Gradio's
    # delete_cache (which also empties the cache at shut-down) and by start_cache_sweeper (see sweep_cache).
    sweep_every = max(1, min(3600, cache_max_age // 4))
    with gr.Blocks(title="asuka inpainting", delete_cache=(sweep_every, cache_max_age)) as demo:
        gr.Markdown(
            "# asuka — faithful inpainting\nPaint over what should be repainted (or upload a mask), then **Run**."
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
                with gr.Accordion("Settings", open=False):
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
                    dilation = gr.Slider(0, 64, value=0, step=1, label="Mask dilation (px)")
                    run_backbone = gr.Checkbox(
                        value=False, label="Also run the backbone alone", interactive=first.backbone is not None
                    )
                    step_cache_box = gr.Textbox(
                        value=step_cache or "",
                        label="Step cache (ASUKA methods; empty: none)",
                        info=methods.CACHE_HELP,
                    )
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
            inpaint,
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
                step_cache_box,
            ],
            outputs=[result, slider, backbone, reconstruction, download, used_seed, used_mask, run_time],
            api_name="inpaint",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
    demo.queue(max_size=max_queue, default_concurrency_limit=1)
    start_cache_sweeper(demo, results, cache_max_age, sweep_every)
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
        cache.get(name)  # load the first model now, so a bad model id fails at start-up
    except (ValueError, NoDefaultMethod, methods.ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        if not on_spaces():
            raise SystemExit(2)
        # A Space that crashes shows only "Runtime error": start the page and put the fix-it text in it.
        guidance = f"{error}\n\n{SPACES_HINT}"
        name = name or methods.list_methods()[0].name
    demo = build_demo(
        cache,
        name,
        tiny=args.tiny,
        max_queue=args.max_queue,
        guidance=guidance,
        max_results=args.max_results,
        cache_max_age=args.cache_max_age,
        step_cache=args.cache,
    )
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
