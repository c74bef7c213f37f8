"""asuka demo: a Gradio app for faithful image inpainting (UI only; models live in asuka.methods).

    python app.py --tiny                  # random tiny weights, for trying the interface
    python app.py --model PATH_OR_HUB_ID  # ASUKA-SD from a folder written by save_pretrained
    python app.py --method asuka-flux     # another registered method, with its default weights

Paint the region to repaint on the image (or upload a mask: white = repaint) and press Run.
The endpoint ``/inpaint`` is callable with gradio_client (see docs/app.md).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from PIL import Image

from asuka import methods
from asuka.defaults import default_device, default_dtype
from asuka.imageio import load_image, load_mask, mask_from_layers
from asuka.masks import dilate_mask


try:  # On a ZeroGPU Space, `spaces.GPU` grants a GPU for the duration of each call.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        """No-op stand-in for `spaces.GPU` outside Hugging Face Spaces."""
        return fn


EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
TINY_BANNER = "⚠️ **Tiny mode: random weights, for trying the interface.** Results are noise, not inpainting."
MAX_SEED = 2**31 - 1


class PhotoEditor(gr.ImageEditor):
    """`gr.ImageEditor` whose uploads are read with asuka.imageio (EXIF rotation, 16-bit, any mode)."""

    def get_block_name(self) -> str:
        return "imageeditor"  # same front-end component as gr.ImageEditor

    def convert_and_format_image(self, file: FileData | bytes | None, flatten_on_white: bool = False) -> Any:
        if file is None:
            return None
        source = file.path if isinstance(file, FileData) else bytes(file)
        # Returns PIL images (this app uses type="pil"). The background and the composite are photos,
        # flattened to RGB; the painted layers keep their alpha, which is the mask.
        if flatten_on_white:
            return load_image(source)
        return Image.open(source if isinstance(source, str) else io.BytesIO(source)).convert("RGBA")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="asuka inpainting demo")
    env = os.environ.get  # Spaces cannot pass flags: ASUKA_METHOD / ASUKA_MODEL / ASUKA_TINY set the defaults
    parser.add_argument(
        "--method", default=env("ASUKA_METHOD", "asuka-sd"), help="registered method shown first (default asuka-sd)"
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
    parser.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait; more are refused")
    return parser.parse_args(argv)


def _editor_mask(editor: dict | None, mask_file: str | None, size: tuple[int, int]) -> Image.Image:
    """The uploaded mask if there is one, else what the user painted (union of layer alphas)."""
    if mask_file:
        return load_mask(mask_file, size=size)
    return mask_from_layers((editor or {}).get("layers") or [], size)


def build_demo(
    cache: methods.PipelineCache, default_method: str, tiny: bool = False, max_queue: int = 16
) -> gr.Blocks:
    """The Blocks UI; every model call goes through ``cache`` and asuka.methods."""
    choices = [(spec.label, spec.name) for spec in methods.list_methods()]
    first = methods.get_method(default_method)

    @gpu
    def inpaint(
        editor: dict | None,
        mask_file: str | None,
        method: str,
        steps: int,
        seed: int,
        randomize_seed: bool,
        condition_weight: float,
        guidance_scale: float,
        keep_unmasked: bool,
        dilation: int,
        run_backbone: bool,
        progress: gr.Progress = gr.Progress(),
    ):
        if not editor or editor.get("background") is None:
            raise gr.Error("Upload an image first, then paint over the part to repaint.")
        image = editor["background"]
        try:
            mask = _editor_mask(editor, mask_file, image.size)
        except ValueError as error:
            raise gr.Error(str(error))
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
        )

        def run(name: str, label: str) -> methods.InpaintResult:
            progress(0, desc=f"Loading {label}…")
            try:
                pipeline = cache.get(name)
            except methods.ModelLoadError as error:
                raise gr.Error(str(error), duration=None)
            try:
                return methods.run_method(
                    name, pipeline, request, lambda done, total: progress((done, total), desc=label, unit="steps")
                )
            except ValueError as error:
                raise gr.Error(str(error))

        result = run(spec.name, spec.label)
        backbone = None
        if run_backbone and spec.backbone:
            backbone = run(spec.backbone, methods.get_method(spec.backbone).label).image
        elif run_backbone:
            gr.Warning(f"{spec.label} has no separate backbone to compare with.")
        download = Path(tempfile.mkdtemp(prefix="asuka_")) / "inpainted.png"
        result.image.save(download)
        return (result.image, (image, result.image), backbone, result.reconstruction, str(download), seed, mask)

    def on_method(method: str):
        spec = methods.get_method(method)
        return (
            gr.update(value=spec.default_steps),
            gr.update(visible=spec.uses_condition_weight),
            gr.update(visible=spec.uses_guidance, value=spec.default_guidance),
            gr.update(interactive=spec.backbone is not None),
        )

    with gr.Blocks(title="asuka inpainting") as demo:
        gr.Markdown(
            "# asuka — faithful inpainting\n"
            "Paint over what should be repainted (or upload a mask), then press **Run**."
        )
        if tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        with gr.Row():
            with gr.Column():
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
                    elem_id="editor",
                )
                mask_upload = gr.Image(
                    label="Mask (optional, overrides the painting; white = repaint)",
                    type="filepath",
                    image_mode=None,
                    sources=("upload", "clipboard"),
                    elem_id="mask-upload",
                    height=200,
                )
                method = gr.Dropdown(choices=choices, value=first.name, label="Model", elem_id="method")
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(1, 100, value=first.default_steps, step=1, label="Steps")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                        randomize = gr.Checkbox(value=False, label="Randomise seed")
                    condition_weight = gr.Slider(
                        0.0, 2.0, value=1.0, step=0.05, label="Condition weight", visible=first.uses_condition_weight
                    )
                    guidance = gr.Slider(
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
                run_button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="result")
                slider = gr.ImageSlider(label="Before / after", type="pil", format="png", interactive=False)
                download = gr.DownloadButton("Download (full resolution PNG)", elem_id="download")
                backbone = gr.Image(label="Backbone alone", type="pil", format="png", interactive=False)
                reconstruction = gr.Image(
                    label="MAE reconstruction (what the prior thinks)", type="pil", format="png", interactive=False
                )
                used_seed = gr.Number(label="Seed used", precision=0, interactive=False)
                used_mask = gr.Image(
                    label="Mask used", type="pil", format="png", interactive=False, elem_id="mask-used"
                )

        examples = _examples()
        if examples:
            gr.Examples(examples=examples, inputs=[editor, mask_upload], label="Examples (mask included)")

        method.change(
            on_method,
            inputs=method,
            outputs=[steps, condition_weight, guidance, run_backbone],
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
                guidance,
                keep_unmasked,
                dilation,
                run_backbone,
            ],
            outputs=[result, slider, backbone, reconstruction, download, used_seed, used_mask],
            api_name="inpaint",
            concurrency_limit=1,
            concurrency_id="gpu",
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
    device = args.device or default_device()
    dtype = args.dtype or default_dtype(device)
    try:
        spec = methods.get_method(args.method)
        cache = methods.PipelineCache(
            device=device, dtype=dtype, tiny=args.tiny, models={args.method: args.model} if args.model else None
        )
        cache.get(spec.name)  # load the first model now, so a bad model id fails at start-up
    except (ValueError, methods.ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    demo = build_demo(cache, spec.name, tiny=args.tiny, max_queue=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
