"""asuka.imageio: every image mode, EXIF rotation, broken files and masks in any form."""

import io

import numpy as np
import pytest
from PIL import Image

from asuka.imageio import composite_unmasked, load_image, load_mask, mask_from_layers, mask_to_l


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_loads_as_rgb_of_the_same_size(tmp_path, mode):
    source = Image.fromarray(RGB)
    if mode == "I;16":
        source = Image.fromarray(np.asarray(source.convert("L")).astype(np.uint16) * 257)
    elif mode == "F":
        source = Image.fromarray(np.asarray(source.convert("L")).astype(np.float32) / 255.0)
    elif mode == "I":
        source = Image.fromarray(np.asarray(source.convert("L")).astype(np.int32) * 257)
    else:
        source = source.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "F", "I") else "x.png")
    source.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)
    if mode in ("I;16", "I", "F"):  # high bit depth is scaled, not clipped to white
        grey = np.asarray(Image.fromarray(RGB).convert("L"), dtype=np.int16)
        assert np.abs(np.asarray(image)[..., 0].astype(np.int16) - grey).max() <= 1


def test_rgba_is_flattened_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 10
    rgba[:2, :, 3] = 255  # top half opaque dark, bottom half fully transparent
    image = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert (image[:2] == 10).all() and (image[2:] == 255).all()


def test_exif_rotation_is_applied():
    base = Image.fromarray(RGB)  # 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = load_image(_png_bytes(base, exif=exif.tobytes()))
    assert image.size == (20, 30)
    assert np.array_equal(np.asarray(image), np.rot90(RGB, k=-1))  # turned 90 degrees clockwise


def test_truncated_and_missing_files_raise_value_error(tmp_path):
    data = _png_bytes(Image.fromarray(RGB))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="Could not read"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="Could not read"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_arrays_of_several_dtypes():
    assert load_image(RGB).size == (30, 20)
    assert np.array_equal(np.asarray(load_image(RGB.astype(np.uint16) * 257)), RGB)
    assert np.array_equal(np.asarray(load_image(RGB / 255.0)), RGB)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 3, 5), dtype=np.uint8))


def test_masks_bright_or_painted_on_transparency():
    grey = np.zeros((20, 30), dtype=np.uint8)
    grey[5:10, 5:10] = 200
    assert (np.asarray(mask_to_l(Image.fromarray(grey))) == np.where(grey > 127, 255, 0)).all()
    stroke = np.zeros((20, 30, 4), dtype=np.uint8)
    stroke[2:4, :, :3] = (0, 0, 0)  # a black stroke on a transparent layer is still a hole
    stroke[2:4, :, 3] = 255
    mask = np.asarray(mask_to_l(Image.fromarray(stroke, "RGBA")))
    assert mask[2:4].min() == 255 and mask[:2].max() == 0 and mask[4:].max() == 0


def test_load_mask_resizes_same_aspect_and_rejects_other_aspects():
    small = Image.new("L", (15, 10), 0)
    small.paste(255, (0, 0, 5, 5))
    mask = load_mask(small, size=(30, 20))
    assert mask.size == (30, 20) and set(np.unique(np.asarray(mask))) == {0, 255}
    with pytest.raises(ValueError, match="aspect"):
        load_mask(Image.new("L", (10, 10)), size=(30, 20))


def test_mask_from_layers_is_union_of_alpha():
    a = np.zeros((20, 30, 4), dtype=np.uint8)
    a[0, 0, 3] = 10
    b = np.zeros((20, 30, 4), dtype=np.uint8)
    b[5, 6, 3] = 255
    mask = np.asarray(mask_from_layers([Image.fromarray(a, "RGBA"), None, Image.fromarray(b, "RGBA")], (30, 20)))
    assert mask[0, 0] == 255 and mask[5, 6] == 255 and mask.sum() == 2 * 255


def test_composite_unmasked_keeps_outside_pixels():
    image = Image.fromarray(RGB)
    other = Image.fromarray(255 - RGB)
    mask = Image.new("L", (30, 20), 0)
    mask.paste(255, (10, 5, 20, 15))
    out = np.asarray(composite_unmasked(other, image, mask))
    hole = np.asarray(mask) > 0
    assert np.array_equal(out[~hole], RGB[~hole]) and np.array_equal(out[hole], 255 - RGB[hole])
