"""Benchmark layouts, per-file loading with readable errors, and the composite rule.

Two layouts are understood, both a folder with `image/` and `mask/` sub-folders:
- MISATO (512 or 1024): `0000.png` ... `1999.png`; 0000-0499 outdoor, 0500-0999 indoor,
  1000-1499 building, 1500-1999 background. At 1024 the masks are named `"00" + name`.
- generic (Places2 or your own): any image names; the mask of `x.jpg` is the mask file with the
  same name, or the same stem with any image extension. One domain, "all".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from asuka.imageio import IMAGE_EXTENSIONS, load_image, load_mask


MISATO_DOMAINS = (("outdoor", 0, 500), ("indoor", 500, 1000), ("building", 1000, 1500), ("background", 1500, 2000))
LAYOUTS = ("auto", "misato", "folder")
_IMAGE_DIRS = ("image", "images")
_MASK_DIRS = ("mask", "masks")


class SampleError(ValueError):
    """A single benchmark file could not be used; the run reports it and goes on."""


@dataclass(frozen=True)
class Sample:
    """One benchmark item. `name` is the output file name (`stem.png`)."""

    name: str
    image_path: Path
    mask_path: Path | None
    domain: str


@dataclass(frozen=True)
class Benchmark:
    """The samples of a benchmark folder, in sorted order."""

    root: Path
    layout: str
    samples: tuple[Sample, ...]

    @property
    def domains(self) -> list[str]:
        """Domains in benchmark order (MISATO's four, or "all")."""
        return list(dict.fromkeys(sample.domain for sample in self.samples))


def _subdir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise ValueError(
        f"{root} has no {' or '.join(n + '/' for n in names)} folder; accepted: a folder with image/ and mask/."
    )


def misato_domain(stem: str) -> str:
    """The MISATO domain of a 4-digit file stem, e.g. "0512" -> "indoor"."""
    index = int(stem)
    for domain, start, stop in MISATO_DOMAINS:
        if start <= index < stop:
            return domain
    raise ValueError(f"MISATO file {stem!r} is outside 0000-1999.")


def _find_mask(mask_dir: Path, image_path: Path, misato: bool) -> Path | None:
    candidates = [mask_dir / image_path.name]
    if misato:
        candidates.append(mask_dir / ("00" + image_path.name))  # MISATO@1K naming
    candidates += [mask_dir / (image_path.stem + ext) for ext in IMAGE_EXTENSIONS]
    return next((path for path in candidates if path.is_file()), None)


def discover(root: str | Path, layout: str = "auto") -> Benchmark:
    """List the samples under `root`. `auto` picks MISATO when every stem is a number in 0000-1999."""
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}.")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Benchmark folder {root} does not exist.")
    image_dir, mask_dir = _subdir(root, _IMAGE_DIRS), _subdir(root, _MASK_DIRS)
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not images:
        raise ValueError(f"{image_dir} contains no files.")
    is_misato = all(re.fullmatch(r"\d{4}", p.stem) and int(p.stem) < 2000 for p in images)
    if layout == "misato" and not is_misato:
        raise ValueError(f"{image_dir} is not a MISATO folder; accepted: files named 0000 to 1999.")
    misato = layout == "misato" or (layout == "auto" and is_misato)
    samples = tuple(
        Sample(
            name=path.stem + ".png",
            image_path=path,
            mask_path=_find_mask(mask_dir, path, misato),
            domain=misato_domain(path.stem) if misato else "all",
        )
        for path in images
    )
    if len({s.name for s in samples}) != len(samples):
        raise ValueError(f"{image_dir} has two images with the same stem; output names would collide.")
    return Benchmark(root, "misato" if misato else "folder", samples)


def load_sample(sample: Sample) -> tuple[Image.Image, Image.Image]:
    """The RGB image and binary L mask (255 = hole) of `sample`, or SampleError saying why not."""
    if sample.mask_path is None:
        raise SampleError(f"{sample.image_path.name}: no mask found for this image.")
    try:
        image, mask = load_image(sample.image_path), load_mask(sample.mask_path)
    except ValueError as error:
        raise SampleError(f"{sample.image_path.name}: {error}") from error
    if image.size != mask.size:
        raise SampleError(
            f"{sample.image_path.name}: image is {image.width}x{image.height} but mask is {mask.width}x{mask.height}."
        )
    return image, mask


def load_prediction(path: Path, size: tuple[int, int]) -> Image.Image:
    """A generated output, which must exist, be readable and have the ground truth's `size`."""
    if not path.is_file():
        raise SampleError(f"{path.name}: no generated output at {path}.")
    try:
        pred = load_image(path)
    except ValueError as error:
        raise SampleError(f"{path.name}: {error}") from error
    if pred.size != tuple(size):
        raise SampleError(
            f"{path.name}: output is {pred.width}x{pred.height} but the ground truth is {size[0]}x{size[1]}."
        )
    return pred


def composite(pred: Image.Image, target: Image.Image, mask: Image.Image) -> Image.Image:
    """Generated pixels where mask > 0.5 (of 255), ground-truth pixels elsewhere: only the hole is judged."""
    hole = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 > 0.5)[..., None]
    return Image.fromarray(np.where(hole, np.asarray(pred.convert("RGB")), np.asarray(target.convert("RGB"))))
