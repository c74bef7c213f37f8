"""Uploads through `/inpaint` (gradio_client against `python app.py --tiny`): every file is read by asuka.imageio.

Awkward but valid files give exactly `asuka.imageio.load_image`'s pixels; bad files give an error whose message
names the problem (not Gradio's bare "Error"), and the next good request is served.
"""

import struct
import zlib

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from asuka.imageio import load_image
from tests.support.app_launcher import inpaint_call, photo_and_hole
from tests.support.imageio_cases import assert_reads_like_imageio, write_awkward_images


@pytest.fixture(scope="module")
def client(tiny_app_url):
    return Client(tiny_app_url, verbose=False)


def _photo_and_hole(tmp_path):
    photo, hole = photo_and_hole()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return photo, hole


def test_awkward_files_read_like_imageio(client, tmp_path):
    """The before/after slider's "before" is the photo exactly as the app read it."""

    def read_through_app(path):
        mask = tmp_path / f"{path.stem}_mask.png"
        hole = Image.new("L", load_image(path).size, 0)
        hole.putpixel((0, 0), 255)  # the smallest non-empty mask
        hole.save(mask)
        before, _ = inpaint_call(client, path, mask, steps=1)["slider"]
        return np.asarray(Image.open(before).convert("RGB"))

    assert_reads_like_imageio(read_through_app, write_awkward_images(tmp_path / "awkward"))


def _bomb_png(path, side: int = 20000) -> None:
    """A valid 1-bit PNG of side x side black pixels: ~50 KB on disk, 400 megapixels once decoded."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bomb image", r"too large to decode safely"),
        ("text as image", r"Could not read .* as an image"),
        ("text as mask", r"The mask cannot be used: Could not read .* as an image"),
        ("text as painted layer", r"A painted layer cannot be used: Could not read .* as an image"),
        ("truncated image", r"(?i)truncated"),
        ("mask of another aspect ratio", r"Mask size 40x40 does not match the image size 77x53"),
    ],
)
def test_bad_upload_gets_a_message_naming_the_problem(client, tmp_path, case, expected):
    photo, hole = _photo_and_hole(tmp_path)
    image, mask, layers = tmp_path / "photo.png", tmp_path / "mask.png", ()
    if case == "bomb image":
        image = tmp_path / "bomb.png"
        _bomb_png(image)
        assert image.stat().st_size < 200_000
    elif case == "text as image":
        image = tmp_path / "notes.png"
        image.write_text("this is a text file, not a picture\n")
    elif case == "text as mask":
        mask = tmp_path / "notes.png"
        mask.write_text("this is a text file, not a mask\n")
    elif case == "text as painted layer":
        mask, layers = None, [tmp_path / "layer.png"]
        layers[0].write_text("this is a text file, not a painted layer\n")
    elif case == "truncated image":
        image = tmp_path / "truncated.png"
        image.write_bytes((tmp_path / "photo.png").read_bytes()[:-600])
    else:
        mask = tmp_path / "square.png"
        Image.new("L", (40, 40), 255).save(mask)
    with pytest.raises(AppError, match=expected):
        inpaint_call(client, image, mask, layers=layers)
    # the next good request is served
    result = np.asarray(
        Image.open(inpaint_call(client, tmp_path / "photo.png", tmp_path / "mask.png")["result"]).convert("RGB")
    )
    assert np.array_equal(result[~hole], photo[~hole])
