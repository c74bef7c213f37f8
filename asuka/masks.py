"""Training masks (ASUKA, Sec. 3.1) and the mask tools of the app and CLI (grow/shrink, invert, feathered paste).

The paper trains on a mixture of three mask families:

* `"object"`: object silhouettes read from a folder of binary masks (see
  `training/prepare_object_masks.py`); half of them are combined with irregular strokes;
* `"irregular"`: free-form brush strokes in the LaMa / Co-Mod-GAN style;
* `"regular"`: a rectangle hole, or its complement (everything but a rectangle).

Mixture weights default to 50/40/10. A folder of ready-made masks (`mask_dir`, e.g. the masks released with
MISATO) can replace or mix with that mixture. Every mask is a float32 `(H, W)` array, 1 = hole.
Only numpy, PIL and `asuka.imageio` (which reads the object masks, with the same extension list and
decoding rules as everywhere else) are imported, so data loaders and the app can use this module cheaply.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .imageio import is_image_file, load_mask


FAMILIES: tuple[str, str, str] = ("object", "irregular", "regular")

MaskLike = np.ndarray | Image.Image


def mask_ratio(mask: np.ndarray) -> float:
    """Fraction of hole pixels (values > 0.5) in a `(H, W)` mask."""
    return float((np.asarray(mask) > 0.5).mean())


def masked_patch_fraction(mask: np.ndarray, patch_size: int) -> float:
    """Fraction of `patch_size` patches holding any hole pixel (the MAE's notion of a masked token)."""
    return float(_patch_any(np.asarray(mask) > 0.5, patch_size).mean())


def _patch_any(hole: np.ndarray, patch_size: int) -> np.ndarray:
    height, width = hole.shape
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    padded = np.zeros((rows * patch_size, cols * patch_size), dtype=bool)
    padded[:height, :width] = hole
    return padded.reshape(rows, patch_size, cols, patch_size).any(axis=(1, 3))


def _dilate_bool(hole: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a disk of radius `pixels` (row-wise running windows; O(pixels * H * W))."""
    height, width = hole.shape
    # Row-wise window sums from a cumulative sum; original column x sits at padded column x + pixels + 1.
    padded = np.pad(hole.astype(np.int32), ((0, 0), (pixels + 1, pixels)))
    cumsum = np.cumsum(padded, axis=1)
    out = np.zeros_like(hole)
    for dy in range(-pixels, pixels + 1):
        half = int(math.floor(math.sqrt(pixels * pixels - dy * dy)))
        upper = cumsum[:, pixels + 1 + half : pixels + 1 + half + width]
        lower = cumsum[:, pixels - half : pixels - half + width]
        window = upper - lower
        row_hit = window > 0
        # Shift vertically by dy: output row y sees input row y + dy.
        if dy >= 0:
            out[: height - dy] |= row_hit[dy:]
        else:
            out[-dy:] |= row_hit[: height + dy]
    return out


def dilate_mask(mask: MaskLike, pixels: int) -> MaskLike:
    """Grow the hole of `mask` by a disk of radius `pixels`; returns the same type it got.

    Accepts a PIL image (any mode; non-zero = hole, returned as mode `"L"` 0/255) or a 2-D numpy
    array (> 0.5 = hole, returned as float32 0/1). `pixels=0` returns a binarised copy. Used to
    cover the soft border of user masks before inpainting.
    """
    pixels = _check_pixels(pixels, "dilate_mask")
    hole = _hole_of(mask, "dilate_mask")
    return _as_input_type(_dilate_bool(hole, pixels) if pixels else hole, mask)


def _erode_bool(hole: np.ndarray, pixels: int) -> np.ndarray:
    return ~_dilate_bool(~hole, pixels)


# ---------------------------------------------------------------------------------------------
# Mask tools of the demo: grow/shrink, invert, feathered paste-back
# ---------------------------------------------------------------------------------------------


def _hole_of(mask: MaskLike, what: str) -> np.ndarray:
    """The boolean hole of a PIL mask (non-zero = hole) or a 2-D array (> 0.5 = hole)."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) > 0
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (H, W) mask array or a PIL image, got shape {array.shape}.")
    return array > 0.5


def _as_input_type(hole: np.ndarray, like: MaskLike) -> MaskLike:
    if isinstance(like, Image.Image):
        return Image.fromarray(hole.astype(np.uint8) * 255, mode="L")
    return hole.astype(np.float32)


def _check_pixels(pixels: object, what: str, signed: bool = False) -> int:
    if not isinstance(pixels, (int, np.integer)) or isinstance(pixels, bool) or (pixels < 0 and not signed):
        kind = "an int (negative shrinks)" if signed else "a non-negative int"
        raise ValueError(f"{what}: `pixels` must be {kind}, got {pixels!r}.")
    return int(pixels)


def grow_mask(mask: MaskLike, pixels: int) -> MaskLike:
    """Grow the hole of `mask` by a disk of radius `pixels`, or shrink it by `-pixels` when negative.

    Same types as [`dilate_mask`]. Shrinking treats the outside of the image as hole, so a hole touching the
    border keeps touching it (OpenCV's default for erosion).
    """
    pixels = _check_pixels(pixels, "grow_mask", signed=True)
    hole = _hole_of(mask, "grow_mask")
    if pixels > 0:
        hole = _dilate_bool(hole, pixels)
    elif pixels < 0:
        hole = _erode_bool(hole, -pixels)
    return _as_input_type(hole, mask)


def invert_mask(mask: MaskLike) -> MaskLike:
    """The complement of the hole of `mask` (what was kept is repainted); same types as [`dilate_mask`]."""
    return _as_input_type(~_hole_of(mask, "invert_mask"), mask)


def distance_to_hole(hole: np.ndarray, limit: int) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest pixel of the boolean `hole`, exact up to `limit`.

    Pixels farther than `limit` (or all of them, for an empty hole) get `inf`. Separable: the distance along
    each column first, then the nearest of the `2 * limit + 1` columns around each pixel (O(limit * H * W)).
    """
    height, width = hole.shape
    rows = np.arange(height, dtype=np.float64)[:, None]
    above = np.maximum.accumulate(np.where(hole, rows, -np.inf), axis=0)
    below = np.minimum.accumulate(np.where(hole, rows, np.inf)[::-1], axis=0)[::-1]
    vertical = np.minimum(rows - above, below - rows)  # inf in a column without hole pixels
    vertical[vertical > limit] = np.inf
    squared = vertical**2
    best = squared.copy()
    for dx in range(1, limit + 1):
        best[:, dx:] = np.minimum(best[:, dx:], squared[:, :-dx] + dx * dx)
        best[:, :-dx] = np.minimum(best[:, :-dx], squared[:, dx:] + dx * dx)
    distance = np.sqrt(best)
    distance[distance > limit] = np.inf
    return distance


def feather_weights(mask: MaskLike, pixels: int) -> np.ndarray:
    """How much of the inpainted result each pixel takes in a feathered paste-back, float32 `(H, W)` in [0, 1].

    1 inside the hole, falling linearly with the distance `d` outside it (`1 - d / (pixels + 1)`), and exactly
    0 farther than `pixels` from the hole. `pixels=0`: the hole itself (a hard paste-back).
    """
    pixels = _check_pixels(pixels, "feather_weights")
    hole = _hole_of(mask, "feather_weights")
    if pixels == 0:
        return hole.astype(np.float32)
    distance = distance_to_hole(hole, pixels)
    return np.where(np.isfinite(distance), 1.0 - distance / (pixels + 1), 0.0).astype(np.float32)


def paste_feathered(image: Image.Image, result: Image.Image, mask: MaskLike, pixels: int) -> Image.Image:
    """`result` inside the hole of `mask`, blended into `image` over `pixels` outside it (RGB).

    Every pixel farther than `pixels` from the hole is `image`'s own, exactly; `pixels=0` is the hard
    paste-back of `keep_unmasked`.
    """
    if result.size != image.size:
        raise ValueError(f"paste_feathered: the result is {result.size}, the image {image.size}; they must match.")
    weights = feather_weights(mask, pixels)
    if weights.shape != (image.height, image.width):
        raise ValueError(f"paste_feathered: the mask is {weights.shape[::-1]}, the image {image.size}.")
    original = np.asarray(image.convert("RGB"))
    blended = original * (1.0 - weights[..., None]) + np.asarray(result.convert("RGB")) * weights[..., None]
    out = np.where(weights[..., None] > 0, np.round(blended).astype(np.uint8), original)
    return Image.fromarray(out, mode="RGB")


def _image_files(folder: str | Path, name: str) -> list[Path]:
    """The image files under `folder` (recursive, sorted), as `asuka.imageio.is_image_file` names them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"MaskGenerator: {name} {str(folder)!r} is not a folder.")
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file())


@dataclass
class MaskSample:
    """One generated mask and how it was made."""

    mask: np.ndarray  # float32 (H, W), 1 = hole
    family: str  # one of FAMILIES, or "folder" for a mask read from `mask_dir`
    with_irregular: bool = False  # object mask combined with strokes
    mae_enlarged: bool = False  # extra patches were added for MAE training
    skipped: tuple[str, ...] = ()  # "path: reason" of each unreadable `mask_dir` file passed over to draw this one


class MaskGenerator:
    """The paper's mask mixture, deterministic from a seed.

    Args:
        resolution (`int` or `tuple[int, int]`, *optional*, defaults to 512):
            Output size, `int` (square) or `(height, width)`.
        object_mask_dir (`str` or `Path`, *optional*):
            Folder of binary object masks (non-zero = object). `None` or an empty folder makes the object share fall
            back to the other families (with a warning).
        family_probs (`Sequence[float]`, *optional*, defaults to `(0.5, 0.4, 0.1)`):
            Probabilities of object / irregular / regular (default 0.5 / 0.4 / 0.1).
        object_irregular_prob (`float`, *optional*, defaults to 0.5):
            Chance that an object mask is combined with strokes (0.5).
        hole_range (`tuple[float, float]`, *optional*, defaults to `(0.05, 0.7)`):
            `(min, max)` fraction of hole pixels each mask must fall into.
        mae_mode (`bool`, *optional*, defaults to `False`):
            Enlarge masks to at least `mae_min_patch_ratio` masked `patch_size` patches by masking randomly chosen
            extra patches (used for MAE training; may exceed `hole_range[1]` by design).
        patch_size (`int`, *optional*, defaults to 16):
            Side of the patches `mae_mode` counts.
        mae_min_patch_ratio (`float`, *optional*, defaults to 0.75):
            The fraction of masked patches `mae_mode` reaches at least.
        seed (`int`, *optional*):
            Seed of the generator's own stream (`__call__`); `sample(index=i)` gives the same mask for the same
            `(seed, i)` regardless of call order (safe for data loaders).
        mask_dir (`str` or `Path`, *optional*):
            Folder of ready-made masks (searched recursively), read by `asuka.imageio.load_mask`: grey value > 127 is
            a hole (or opaque, for a picture with transparency); one of another size is resized (nearest) to cover
            `resolution` and its centre cut out, as training images are. A missing or corrupt file is passed over
            for the next file (listed in `MaskSample.skipped`). These masks are used as they are (`hole_range` does
            not apply; `mae_mode` does).
        mask_dir_prob (`float`, *optional*, defaults to 1.0):
            Chance that a sample is a `mask_dir` mask rather than a generated one (default 1: all).
    """

    def __init__(
        self,
        resolution: int | tuple[int, int] = 512,
        object_mask_dir: str | Path | None = None,
        family_probs: Sequence[float] = (0.5, 0.4, 0.1),
        object_irregular_prob: float = 0.5,
        hole_range: tuple[float, float] = (0.05, 0.7),
        mae_mode: bool = False,
        patch_size: int = 16,
        mae_min_patch_ratio: float = 0.75,
        seed: int | None = None,
        mask_dir: str | Path | None = None,
        mask_dir_prob: float = 1.0,
    ) -> None:
        self.height, self.width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if self.height < 8 or self.width < 8:
            raise ValueError(f"MaskGenerator: resolution must be at least 8x8, got {resolution!r}.")
        low, high = float(hole_range[0]), float(hole_range[1])
        if not 0.0 <= low <= high <= 1.0 or high == 0.0:
            raise ValueError(
                f"MaskGenerator: hole_range must satisfy 0 <= min <= max <= 1 and max > 0, got {hole_range!r}."
            )
        probs = np.asarray(family_probs, dtype=np.float64)
        if probs.shape != (3,) or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError(
                "MaskGenerator: family_probs must be three non-negative weights (object, irregular, regular), "
                f"got {family_probs!r}."
            )
        if not 0.0 <= object_irregular_prob <= 1.0:
            raise ValueError(f"MaskGenerator: object_irregular_prob must be in [0, 1], got {object_irregular_prob!r}.")
        if patch_size < 1 or not 0.0 < mae_min_patch_ratio <= 1.0:
            raise ValueError("MaskGenerator: patch_size must be >= 1 and mae_min_patch_ratio in (0, 1].")
        if not 0.0 <= mask_dir_prob <= 1.0:
            raise ValueError(f"MaskGenerator: mask_dir_prob must be in [0, 1], got {mask_dir_prob!r}.")

        self.hole_range = (low, high)
        self.object_irregular_prob = float(object_irregular_prob)
        self.mae_mode = bool(mae_mode)
        self.patch_size = int(patch_size)
        self.mae_min_patch_ratio = float(mae_min_patch_ratio)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.mask_dir_prob = float(mask_dir_prob)
        self.mask_paths = [] if mask_dir is None else _image_files(mask_dir, "mask_dir")
        if mask_dir is not None:
            if not self.mask_paths:
                raise ValueError(
                    f"MaskGenerator: mask_dir {str(mask_dir)!r} holds no mask images (accepted: the files "
                    "`asuka.imageio.is_image_file` names, e.g. PNG, JPEG, WebP; hidden files are ignored)."
                )
            self._folder_mask(0)  # fail now, not mid-training, when no file of the folder is readable

        self.object_paths = [] if object_mask_dir is None else _image_files(object_mask_dir, "object_mask_dir")
        if not self.object_paths and probs[0] > 0:
            if probs[1:].sum() == 0:
                raise ValueError(
                    "MaskGenerator: only object masks were requested but no object mask folder/files were given."
                )
            if not self.mask_paths or self.mask_dir_prob < 1.0:  # silent when every mask comes from mask_dir
                warnings.warn(
                    "MaskGenerator: no object masks available (object_mask_dir missing or empty); the object share "
                    "falls back to the irregular and regular families in proportion.",
                    stacklevel=2,
                )
            probs[0] = 0.0
        self.family_probs = probs / probs.sum()
        # Stroke geometry scales with the short side (constants are tuned for 512 px).
        self._scale = min(self.height, self.width) / 512.0

    # ------------------------------------------------------------------ public API
    def __call__(self) -> np.ndarray:
        """Next mask from the generator's own seeded stream."""
        return self.sample().mask

    def sample(self, rng: np.random.Generator | None = None, index: int | None = None) -> MaskSample:
        """Draw one mask. `index` derives an independent stream from `(seed, index)`."""
        if rng is None:
            rng = self._rng if index is None else np.random.default_rng([self.seed or 0, int(index)])
        if self.mask_paths and rng.random() < self.mask_dir_prob:
            hole, skipped = self._folder_mask(int(rng.integers(len(self.mask_paths))))
            enlarged = False
            if self.mae_mode:
                hole, enlarged = self._mae_enlarge(rng, hole)
            return MaskSample(hole.astype(np.float32), "folder", mae_enlarged=enlarged, skipped=skipped)
        family = FAMILIES[int(rng.choice(3, p=self.family_probs))]
        low, high = self.hole_range
        with_irregular = False
        if family == "object":
            hole = self._object(rng, rng.uniform(low, high))
            if rng.random() < self.object_irregular_prob:
                with_irregular = True
                target = rng.uniform(max(mask_ratio(hole), low), high)
                hole = self._strokes(rng, target, start=hole)
        elif family == "irregular":
            hole = self._strokes(rng, rng.uniform(low, high))
        else:
            hole = self._rectangle(rng, rng.uniform(low, high))
        hole = self._fit_ratio(hole)
        enlarged = False
        if self.mae_mode:
            hole, enlarged = self._mae_enlarge(rng, hole)
        return MaskSample(hole.astype(np.float32), family, with_irregular, enlarged)

    # ------------------------------------------------------------------ families
    def _rectangle(self, rng: np.random.Generator, target: float) -> np.ndarray:
        """A rectangle hole, or (half the time) a hole everywhere except a rectangle."""
        complement = bool(rng.random() < 0.5)
        area = (1.0 - target) if complement else target
        height, width = self.height, self.width
        # Height from a random aspect ratio (kept where a width <= W can still give the area), then the
        # integer width closest to the target among those that keep the hole ratio inside the range.
        low, high = self.hole_range
        pixels = height * width
        aspect = math.exp(rng.uniform(math.log(0.33), math.log(3.0)))
        rect_h = int(
            np.clip(round(math.sqrt(area * pixels * aspect)), max(1, math.ceil(area * pixels / width)), height)
        )
        min_area, max_area = (
            ((1.0 - high) * pixels, (1.0 - low) * pixels) if complement else (low * pixels, high * pixels)
        )
        w_min, w_max = max(1, math.ceil(min_area / rect_h)), min(width, math.floor(max_area / rect_h))
        if w_min > w_max:  # no integer width fits a very narrow range; _fit_ratio corrects afterwards
            w_min, w_max = 1, width
        rect_w = int(np.clip(round(area * pixels / rect_h), w_min, w_max))
        top = int(rng.integers(0, height - rect_h + 1))
        left = int(rng.integers(0, width - rect_w + 1))
        rect = np.zeros((height, width), dtype=bool)
        if area > 0:
            rect[top : top + rect_h, left : left + rect_w] = True
        return ~rect if complement else rect

    def _strokes(self, rng: np.random.Generator, target: float, start: np.ndarray | None = None) -> np.ndarray:
        """Free-form brush strokes (polylines with round joints) added until `target` is reached.

        A stroke that would push the hole beyond `hole_range[1]` is redrawn thinner or dropped,
        so the result stays inside the range whenever possible.
        """
        height, width = self.height, self.width
        high = self.hole_range[1]
        canvas = Image.fromarray(
            (start if start is not None else np.zeros((height, width), bool)).astype(np.uint8) * 255
        )
        current = mask_ratio(np.asarray(canvas) > 0)
        for _ in range(64):
            if current >= target:
                break
            width_px = max(2, int(rng.uniform(12, 48) * self._scale))
            for _attempt in range(4):
                trial = canvas.copy()
                self._draw_stroke(ImageDraw.Draw(trial), rng, width_px)
                trial_ratio = mask_ratio(np.asarray(trial) > 0)
                if trial_ratio <= high:
                    canvas, current = trial, trial_ratio
                    break
                width_px = max(2, width_px // 2)
        return np.asarray(canvas) > 0

    def _draw_stroke(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, width_px: int) -> None:
        """One LaMa / Co-Mod-style stroke: a random walk of 4-18 vertices with bounded turning."""
        height, width = self.height, self.width
        num_vertices = int(rng.integers(4, 19))
        mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
        avg_radius = math.hypot(height, width) / 8
        heading = rng.uniform(0, 2 * math.pi)  # zig-zag around a random overall direction
        x, y = float(rng.integers(0, width)), float(rng.integers(0, height))
        points = [(x, y)]
        for i in range(num_vertices):
            turn = rng.uniform(mean_angle - angle_range, mean_angle + angle_range)
            angle = heading + ((2 * math.pi - turn) if i % 2 == 0 else turn)
            length = float(np.clip(rng.normal(avg_radius, avg_radius / 2), 0, 2 * avg_radius))
            x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=width_px)
        radius = width_px / 2
        for px, py in points:
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=255)

    def _object(self, rng: np.random.Generator, target: float) -> np.ndarray:
        """A random object silhouette, rescaled to cover about `target` of the image, placed at random."""
        height, width = self.height, self.width
        for _ in range(8):
            path = self.object_paths[int(rng.integers(len(self.object_paths)))]
            try:
                obj = np.asarray(load_mask(path)) > 0  # white (or opaque, for a stroke layer) = object
            except ValueError:  # unreadable file
                continue
            rows, cols = np.nonzero(obj)
            if rows.size == 0:
                continue
            obj = obj[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            scale = math.sqrt(target * height * width / obj.sum())
            if rng.random() < 0.5:
                obj = obj[:, ::-1]
            new_h = int(np.clip(round(obj.shape[0] * scale), 1, height))
            new_w = int(np.clip(round(obj.shape[1] * scale), 1, width))
            resized = Image.fromarray(obj.astype(np.uint8) * 255).resize((new_w, new_h), Image.NEAREST)
            top = int(rng.integers(0, height - new_h + 1))
            left = int(rng.integers(0, width - new_w + 1))
            hole = np.zeros((height, width), dtype=bool)
            hole[top : top + new_h, left : left + new_w] = np.asarray(resized) > 0
            return hole
        raise ValueError(f"MaskGenerator: could not read a non-empty object mask from {len(self.object_paths)} files.")

    def _folder_mask(self, start: int) -> tuple[np.ndarray, tuple[str, ...]]:
        """The first readable `mask_dir` mask from position `start` on (wrapping), and the files passed over."""
        skipped = []
        for offset in range(len(self.mask_paths)):
            path = self.mask_paths[(start + offset) % len(self.mask_paths)]
            try:
                mask = load_mask(path)
            except ValueError as error:  # missing or corrupt
                skipped.append(f"{path}: {error}")
                continue
            return np.asarray(self._cover_crop(mask)) > 0, tuple(skipped)
        raise ValueError(
            f"MaskGenerator: none of the {len(self.mask_paths)} files of mask_dir could be read as a mask "
            f"({'; '.join(skipped[:3])}); accepted: complete image files (PNG, JPEG, WebP, ...)."
        )

    def _cover_crop(self, mask: Image.Image) -> Image.Image:
        """`mask` resized (nearest) until it covers the training size, then its centre cut out, as training images
        are resized and cropped: a mask of another aspect ratio keeps its shapes instead of being stretched."""
        if mask.size == (self.width, self.height):
            return mask
        scale = max(self.width / mask.width, self.height / mask.height)
        size = (max(self.width, round(mask.width * scale)), max(self.height, round(mask.height * scale)))
        mask = mask.resize(size, Image.Resampling.NEAREST)
        left, top = (size[0] - self.width) // 2, (size[1] - self.height) // 2
        return mask.crop((left, top, left + self.width, top + self.height))

    # ------------------------------------------------------------------ constraints
    def _fit_ratio(self, hole: np.ndarray) -> np.ndarray:
        """Grow or shrink the hole one pixel at a time until its ratio lies in `hole_range`."""
        low, high = self.hole_range
        for _ in range(max(self.height, self.width)):
            ratio = mask_ratio(hole)
            if ratio < low:
                grown = _dilate_bool(hole, 1)
                if not hole.any():
                    grown[self.height // 2, self.width // 2] = True
                if mask_ratio(grown) > high:  # a ring too coarse for a narrow range: stop at the closest
                    break
                hole = grown
            elif ratio > high:
                hole = _erode_bool(hole, 1)
            else:
                break
        return hole

    def _mae_enlarge(self, rng: np.random.Generator, hole: np.ndarray) -> tuple[np.ndarray, bool]:
        """Mask random extra whole patches until at least `mae_min_patch_ratio` of patches are masked."""
        size = self.patch_size
        masked = _patch_any(hole, size)
        needed = math.ceil(self.mae_min_patch_ratio * masked.size - 1e-9) - int(masked.sum())
        if needed <= 0:
            return hole, False
        free = np.flatnonzero(~masked.ravel())
        chosen = rng.choice(free, size=needed, replace=False)
        hole = hole.copy()
        cols = masked.shape[1]
        for index in chosen:
            row, col = divmod(int(index), cols)
            hole[row * size : (row + 1) * size, col * size : (col + 1) * size] = True
        return hole, True
