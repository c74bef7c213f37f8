"""Command line: `python -m asuka inpaint --image PATH|DIR --mask PATH|DIR --output DIR`.

Masks pair with images by the same file name (in the mask folder) or by `<name>_mask.<ext>`.
Bad or unpaired files are reported and skipped; the batch goes on and the exit code is 1 if
anything was skipped. Results are written as `<output>/<name>.png`; the command never writes into
an input folder and never overwrites a file unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2


@dataclass
class Job:
    """One image, its mask (None when unpaired) and where its result goes."""

    image: Path
    mask: Path | None
    output: Path


def _find_mask(image: Path, mask_dir: Path, same_dir: bool) -> Path | None:
    """`mask_dir/<image name>`, `<stem>.<ext>` or `<stem>_mask.<ext>` (first that exists)."""
    from asuka.imageio import IMAGE_EXTENSIONS

    candidates = [] if same_dir else [mask_dir / image.name]
    suffixes = [image.suffix] + [ext for ext in IMAGE_EXTENSIONS if ext != image.suffix.lower()]
    if not same_dir:
        candidates += [mask_dir / f"{image.stem}{ext}" for ext in suffixes]
    candidates += [mask_dir / f"{image.stem}_mask{ext}" for ext in suffixes]
    return next((path for path in candidates if path.is_file()), None)


def plan_jobs(image: Path, mask: Path, output: Path) -> list[Job]:
    """Pair images with masks. A single mask file applies to every image."""
    from asuka.imageio import is_image_file

    if image.is_dir():
        mask_is_dir = mask.is_dir()
        same_dir = mask_is_dir and mask.resolve() == image.resolve()
        images = sorted(p for p in image.iterdir() if p.is_file() and is_image_file(p))
        if same_dir:  # masks live beside the images as <name>_mask.<ext>
            images = [p for p in images if not p.stem.endswith("_mask")]
        jobs = []
        for path in images:
            paired = _find_mask(path, mask, same_dir) if mask_is_dir else mask
            jobs.append(Job(path, paired, output / f"{path.stem}.png"))
        return jobs
    paired = _find_mask(image, mask, False) if mask.is_dir() else mask
    return [Job(image, paired, output / f"{image.stem}.png")]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_output(output: Path, inputs: Sequence[Path]) -> str | None:
    for source in inputs:
        folder = source if source.is_dir() else source.parent
        if _inside(output, folder):
            return (
                f"--output {output} is inside the input folder {folder}; "
                "choose a separate folder (inputs are never written to)."
            )
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m asuka", description="asuka image inpainting")
    commands = parser.add_subparsers(dest="command", required=True)
    inpaint = commands.add_parser("inpaint", help="inpaint one image or a folder of images")
    inpaint.add_argument("--image", type=Path, required=True, help="an image file or a folder of images")
    inpaint.add_argument(
        "--mask",
        type=Path,
        required=True,
        help="a mask file or a folder of masks (white = repaint); paired by name or <name>_mask.<ext>",
    )
    inpaint.add_argument("--output", type=Path, required=True, help="folder for the results (<name>.png)")
    inpaint.add_argument(
        "--method",
        default=None,
        help="registered method (see asuka.methods); default: asuka-flux on a GPU device; with --tiny, asuka-sd",
    )
    inpaint.add_argument("--model", default=None, help="Hub id or local folder of the method's weights")
    inpaint.add_argument("--steps", type=int, default=None, help="denoising steps (default: the method's)")
    inpaint.add_argument("--seed", type=int, default=0)
    inpaint.add_argument("--condition-weight", type=float, default=None)
    inpaint.add_argument("--guidance-scale", type=float, default=None)
    inpaint.add_argument("--dilate", type=int, default=0, help="grow each mask by this many pixels")
    inpaint.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    inpaint.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: bfloat16 on GPU)")
    from asuka.methods.speedups import add_speed_arguments

    add_speed_arguments(inpaint)
    inpaint.add_argument("--tiny", action="store_true", help="random tiny weights, for trying the command")
    from asuka.methods.memory import add_memory_arguments  # --quantize, --offload (shared with the app)

    add_memory_arguments(inpaint)
    inpaint.add_argument("--overwrite", action="store_true", help="replace existing results")
    return parser


def inpaint_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from asuka import methods
    from asuka.defaults import resolve_device_dtype
    from asuka.imageio import load_image, load_mask
    from asuka.masks import dilate_mask
    from asuka.methods import memory

    for name, path in (("--image", args.image), ("--mask", args.mask)):
        if not path.exists():
            print(f"error: {name} {path} does not exist.", file=sys.stderr)
            return EXIT_USAGE
    problem = _check_output(args.output, [args.image, args.mask])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    jobs = plan_jobs(args.image, args.mask, args.output)
    if not jobs:
        print(f"error: no images found in {args.image}.", file=sys.stderr)
        return EXIT_USAGE

    try:
        device, dtype = resolve_device_dtype(args.device, args.dtype)
        spec = methods.get_method(methods.choose_method(args.method, args.tiny, torch.device(device).type == "cuda"))
        config, line = memory.memory_for_method(spec.name, args.quantize, args.offload, device)
        if line:
            print(line, file=sys.stderr)
        pipeline = methods.load_pipeline(spec.name, args.model, device, dtype, args.tiny, memory=config)
        speedups = methods.Speedups(tuple(args.lora), args.compile, fullgraph=args.cache is None)
        pipeline = methods.apply_speedups(pipeline, speedups, report=lambda line: print(line, file=sys.stderr))
        methods.use_step_cache(pipeline, args.cache, args.steps or spec.default_steps)  # a bad --cache fails here
    except (ValueError, methods.NoDefaultMethod, methods.ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE

    args.output.mkdir(parents=True, exist_ok=True)
    skipped, written = [], 0
    bar = tqdm(jobs, desc="inpainting", unit="image")
    for job in bar:
        reason = None
        if job.mask is None:
            reason = "no mask (expected the same file name in the mask folder, or <name>_mask.<ext>)"
        elif job.output.exists() and not args.overwrite:
            reason = f"{job.output} exists (pass --overwrite to replace it)"
        if reason is None:
            try:
                image = load_image(job.image)
                mask = load_mask(job.mask, size=image.size)
                if args.dilate:
                    mask = dilate_mask(mask, args.dilate)
                request = methods.InpaintRequest.from_settings(image, mask, args)
                result = methods.run_method(spec.name, pipeline, request)
                result.image.save(job.output)
                written += 1
            except ValueError as error:
                reason = str(error)
        if reason is not None:
            skipped.append(job.image)
            bar.write(f"skipped {job.image}: {reason}", file=sys.stderr)
    bar.close()
    print(f"{written} written to {args.output}, {len(skipped)} skipped.", file=sys.stderr)
    return EXIT_SKIPPED if skipped else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "inpaint":
        return inpaint_command(args)
    return EXIT_USAGE
