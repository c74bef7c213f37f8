"""Robust image and mask loading: the only code in asuka that opens image and mask files.

Photos arrive in every mode PIL knows (RGBA, LA, P, CMYK, 16-bit, float), rotated by EXIF tags,
truncated, or as masks drawn in any colour. These helpers turn all of that into the two things the
pipelines accept -- an RGB image and an `L` mask (255 = hole) of the same size -- or raise
`ValueError` saying what was wrong. One rule each:

* files: a name ending in one of `IMAGE_EXTENSIONS` (hidden files excluded);
* orientation: the EXIF orientation tag is applied to everything opened here (paths, bytes, PIL images);
* bit depth: integer modes (16-bit `I;16*` and 32-bit `I`) hold 16-bit values and are scaled to 8 bits
  by `round(v / 257)`, as are uint16 arrays; floats in [0, 1] by `round(v * 255)`;
* colour: palette, transparency and alpha are flattened onto white; CMYK uses PIL's plain conversion.

The pipelines read path and PIL inputs through this module, and the Hub exporter bundles it with them, so it
imports only numpy and PIL.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def _open(source: ImageSource) -> Image.Image:
    """Open `source` fully (so truncated files fail here) with EXIF rotation applied."""
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    else:
        is_bytes = isinstance(source, (bytes, bytearray))
        name = "the PIL image" if isinstance(source, Image.Image) else "<bytes>" if is_bytes else str(source)
        try:
            image = (
                source if isinstance(source, Image.Image) else Image.open(io.BytesIO(source) if is_bytes else source)
            )
            image.load()  # decode now, also a lazily opened PIL image, so truncated data fails here
        except FileNotFoundError as error:
            raise ValueError(f"Image file not found: {name}.") from error
        except Image.DecompressionBombError as error:
            raise ValueError(f"{name} is too large to decode safely ({error}).") from error
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(
                f"Could not read {name} as an image ({error}); accepted: a complete image file ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}."
            ) from error
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Image has zero size ({image.width}x{image.height}); accepted: at least 1x1 pixels.")
    return ImageOps.exif_transpose(image)


def _from_array(array: np.ndarray) -> Image.Image:
    """uint8/uint16/float arrays of shape (H, W), (H, W, 1|3|4) to a PIL image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"Image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}.")
    if array.dtype == np.uint16:
        array = _16bit_to_8bit(array)
    elif np.issubdtype(array.dtype, np.floating):
        array = _unit_float_to_8bit(array)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(
            f"Image array dtype {array.dtype} is not supported; accepted: uint8, uint16, float in [0, 1], bool."
        )
    return Image.fromarray(array)


def _16bit_to_8bit(values: np.ndarray) -> np.ndarray:
    """The one 16-bit rule: 0..65535 to 0..255 by `round(v / 257)` (values outside are clipped)."""
    return np.clip(np.asarray(values, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)


def _unit_float_to_8bit(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (NaN as 0, outside clipped) to 0..255 by `round(v * 255)`."""
    return (np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth single-channel modes to `L`: integer modes (I;16*, I) as 16-bit values, float (F) as [0, 1]
    values (or 0..255 ones, when its maximum is above 1)."""
    if image.mode.startswith("I"):
        return Image.fromarray(_16bit_to_8bit(np.asarray(image)), mode="L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        return Image.fromarray(
            _unit_float_to_8bit(values if values.max(initial=0) <= 1.0 else values / 255.0), mode="L"
        )
    return image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB; transparent areas are flattened onto `background` (white)."""
    image = _to_8bit(image)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return image.convert("RGB")  # CMYK: PIL's plain conversion (ICC profiles are not applied)


def load_image(source: ImageSource) -> Image.Image:
    """Load a path, bytes, PIL image or array as an upright RGB image."""
    return to_rgb(_open(source))


def mask_to_l(image: Image.Image, threshold: int = 127) -> Image.Image:
    """Binarise a mask picture to `L` (255 = hole).

    If the picture has real transparency (a stroke painted on a transparent layer), the hole is
    where it is opaque, whatever the colour; otherwise it is where the picture is bright.
    """
    image = _to_8bit(image)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            return Image.fromarray(np.where(alpha > threshold, 255, 0).astype(np.uint8), mode="L")
    grey = np.asarray(image.convert("L"))
    return Image.fromarray(np.where(grey > threshold, 255, 0).astype(np.uint8), mode="L")


def load_mask(source: ImageSource, size: tuple[int, int] | None = None) -> Image.Image:
    """Load a mask as a binary `L` image (255 = hole), resized (nearest) to `size` if given.

    A mask whose aspect ratio differs from `size` by more than one pixel raises `ValueError`:
    stretching it would move the hole.
    """
    mask = mask_to_l(_open(source))
    if size is not None and mask.size != tuple(size):
        width, height = size
        if abs(mask.width * height / width - mask.height) > 1.0:
            raise ValueError(
                f"Mask size {mask.width}x{mask.height} does not match the image size {width}x{height}; "
                "accepted: a mask of the same size or the same aspect ratio."
            )
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return mask


def load_layer(source: ImageSource) -> Image.Image:
    """A painted editor layer as `RGBA`: its alpha is the paint (see `mask_from_layers`)."""
    return _open(source).convert("RGBA")


def mask_from_layers(layers: list[Image.Image | np.ndarray | None], size: tuple[int, int]) -> Image.Image:
    """The union of painted strokes (alpha > 0) over editor layers, as an `L` mask of `size`."""
    hole = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else _from_array(np.asarray(layer))
        if layer.size != tuple(size):
            layer = layer.resize(size, Image.Resampling.NEAREST)
        if "A" in layer.getbands():
            painted = np.asarray(layer.getchannel("A")) > 0
        else:  # layers without alpha: anything not black counts as paint
            painted = np.asarray(layer.convert("L")) > 0
        hole |= painted
    return Image.fromarray(hole.astype(np.uint8) * 255, mode="L")


def composite_unmasked(result: Image.Image, image: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste `image`'s pixels back wherever `mask` is not a hole (for backbones that don't)."""
    result = result.convert("RGB")
    if result.size != image.size:
        result = result.resize(image.size, Image.Resampling.BICUBIC)
    return Image.composite(result, image.convert("RGB"), mask.convert("L").point(lambda v: 255 if v > 127 else 0))


def is_image_file(path: Path) -> bool:
    """Whether `path` has an image extension this module reads (hidden files excluded)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
