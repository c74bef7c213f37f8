"""Awkward image files, and a check that a reader sees them exactly as `asuka.imageio.load_image` does.

Every component that reads images (pipelines, CLI, app, training and evaluation loaders) must give the same pixels
for the same file. `write_awkward_images` writes one file per trap (CMYK, 16-bit, palette with transparency,
EXIF rotation, alpha), `assert_reads_like_imageio` runs any reader over them:

```py
assert_reads_like_imageio(lambda path: np.asarray(my_loader(path)), write_awkward_images(tmp_path))
```
"""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from asuka.imageio import load_image


WIDTH, HEIGHT = 24, 16  # not square, so an EXIF rotation shows in the size


def _pattern() -> np.ndarray:
    """An RGB gradient with noise: every channel and both axes vary."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([xs * 255 // (WIDTH - 1), ys * 255 // (HEIGHT - 1), (xs + ys) * 6 % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def write_awkward_images(folder: Path) -> dict[str, Path]:
    """Write the trap files into `folder`; returns {case: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pattern())
    grey = np.asarray(rgb.convert("L"))
    paths = {
        "cmyk": folder / "cmyk.jpg",
        "gray16": folder / "gray16.png",
        "palette_alpha": folder / "palette_alpha.png",
        "exif_rotated": folder / "exif_rotated.jpg",
        "rgba": folder / "rgba.png",
    }
    rgb.convert("CMYK").save(paths["cmyk"], quality=95)
    Image.fromarray(grey.astype(np.uint16) * 257 + 100).save(paths["gray16"])  # low byte set: 16 bits matter
    palette = rgb.quantize(colors=16)
    palette.save(paths["palette_alpha"], transparency=int(np.asarray(palette)[0, 0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rgb.save(paths["exif_rotated"], exif=exif.tobytes(), quality=95)
    rgba = np.dstack([_pattern(), np.tile(np.linspace(0, 255, WIDTH).astype(np.uint8), (HEIGHT, 1))])
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    return paths


def _palette_transparent_is_white(pixels: np.ndarray, path: Path) -> bool:
    with Image.open(path) as palette:
        transparent = np.asarray(palette) == palette.info["transparency"]
    return transparent.any() and (pixels[transparent] == 255).all()


# What each trap must become, so that no reader passes vacuously.
EXPECTATIONS = {
    "cmyk": lambda pixels, path: pixels.shape[:2] == (HEIGHT, WIDTH),
    "gray16": lambda pixels, path: 0 < pixels.mean() < 255 and pixels.std() > 10,  # scaled, not clipped to white
    "palette_alpha": _palette_transparent_is_white,  # transparency flattened onto white
    "exif_rotated": lambda pixels, path: pixels.shape[:2] == (WIDTH, HEIGHT),  # turned upright
    "rgba": lambda pixels, path: pixels[:, 0].min() == 255,  # alpha 0 is white
}


def expected_pixels(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """`load_image`'s (H, W, 3) uint8 pixels per case, checked against `EXPECTATIONS`."""
    expected = {case: np.asarray(load_image(path)) for case, path in paths.items()}
    for case, pixels in expected.items():
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, case
        assert EXPECTATIONS[case](pixels, paths[case]), f"load_image reads {case} wrongly"
    return expected


def assert_reads_like_imageio(
    read: Callable[[Path], np.ndarray],
    paths: dict[str, Path],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """`read(path)` (an (H, W, 3) uint8 array) must equal `asuka.imageio.load_image(path)` bit for bit (after
    `transform`, for readers that crop by a documented rule)."""
    for case, pixels in expected_pixels(paths).items():
        pixels = transform(pixels) if transform else pixels
        got = np.asarray(read(paths[case]))
        assert got.shape == pixels.shape, f"{case}: shape {got.shape}, load_image gives {pixels.shape}"
        assert np.array_equal(got, pixels), f"{case}: max difference {np.abs(got.astype(int) - pixels).max()}"


def open_lazily(path: Path) -> Image.Image:
    """The file as a user's `PIL.Image.open` gives it: not yet decoded, EXIF tag unapplied."""
    return Image.open(io.BytesIO(path.read_bytes()))
