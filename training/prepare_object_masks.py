"""Extract binary object-shape masks from COCO-format instance annotations.

The paper's object family (Sec. 3.1) draws silhouettes of real objects. This script turns every
instance annotation of a COCO-style JSON file (polygons or uncompressed RLE; crowd regions are
skipped because they are not single objects) into a PNG cropped to the object's bounding box,
white = object, which `asuka.masks.MaskGenerator(object_mask_dir=...)` reads.

    python training/prepare_object_masks.py --annotations instances_train2017.json --output_dir object_masks
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, help="COCO-format instances JSON file.")
    parser.add_argument("--output_dir", required=True, help="Folder the PNG masks are written to.")
    parser.add_argument(
        "--min_area_ratio", type=float, default=0.01, help="Skip objects smaller than this fraction of their image."
    )
    parser.add_argument(
        "--max_area_ratio", type=float, default=0.8, help="Skip objects larger than this fraction of their image."
    )
    parser.add_argument(
        "--min_size", type=int, default=16, help="Skip objects whose bounding box is narrower than this (pixels)."
    )
    parser.add_argument("--categories", nargs="*", default=None, help="Keep only these category names (default: all).")
    parser.add_argument("--max_masks", type=int, default=None, help="Stop after writing this many masks.")
    return parser.parse_args(argv)


def decode_annotation(annotation: dict, height: int, width: int) -> np.ndarray | None:
    """Rasterise one COCO segmentation (polygon list or uncompressed RLE) into a boolean (H, W) mask.

    Returns None for compressed RLE strings (crowd regions), which this script does not use.
    """
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([(float(x), float(y)) for x, y in zip(polygon[0::2], polygon[1::2])], fill=255)
        return np.asarray(canvas) > 0
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        # Uncompressed RLE: alternating run lengths of 0s and 1s over the column-major (Fortran) order.
        rle_height, rle_width = segmentation["size"]
        flat = np.zeros(rle_height * rle_width, dtype=bool)
        position, value = 0, False
        for run in segmentation["counts"]:
            flat[position : position + run] = value
            position += run
            value = not value
        return flat.reshape((rle_width, rle_height)).T
    return None


def extract_masks(args: argparse.Namespace) -> list[Path]:
    """Write one cropped PNG per kept annotation; returns the written paths."""
    with open(args.annotations, encoding="utf-8") as handle:
        coco = json.load(handle)
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"{args.annotations}: not a COCO instances file (no {key!r} list).")
    images = {image["id"]: image for image in coco["images"]}
    keep_categories = None
    if args.categories:
        names = {category["id"]: category["name"] for category in coco.get("categories", [])}
        keep_categories = {cid for cid, name in names.items() if name in set(args.categories)}

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for annotation in coco["annotations"]:
        if args.max_masks is not None and len(written) >= args.max_masks:
            break
        if annotation.get("iscrowd", 0) or (
            keep_categories is not None and annotation.get("category_id") not in keep_categories
        ):
            continue
        image = images.get(annotation["image_id"])
        if image is None:
            continue
        mask = decode_annotation(annotation, int(image["height"]), int(image["width"]))
        if mask is None or not mask.any():
            continue
        ratio = mask.mean()
        rows, cols = np.nonzero(mask)
        crop = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        if not args.min_area_ratio <= ratio <= args.max_area_ratio or min(crop.shape) < args.min_size:
            continue
        path = output_dir / f"{annotation['image_id']}_{annotation['id']}.png"
        Image.fromarray(crop.astype(np.uint8) * 255, mode="L").save(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    written = extract_masks(args)
    print(f"wrote {len(written)} object masks to {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
