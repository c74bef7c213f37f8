"""The demo's `/inpaint` endpoint through gradio_client, against `python app.py --tiny` on localhost."""

import json
import urllib.request

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from asuka.imageio import load_image
from asuka.masks import distance_to_hole
from asuka.methods.segment import Segmenter
from tests.support.app_launcher import ROOT, photo_and_hole, segment_call
from tests.support.app_launcher import inpaint_call as call


H, W = 53, 77  # deliberately not a multiple of 8


@pytest.fixture(scope="module")
def client(tiny_app_url):
    return Client(tiny_app_url, verbose=False)


def _photo() -> np.ndarray:
    return photo_and_hole(W, H)[0]


def _hole() -> np.ndarray:
    return photo_and_hole(W, H)[1]


def test_inpaint_keeps_size_and_unmasked_pixels(client, tmp_path):
    photo, hole = _photo(), _hole()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = call(client, tmp_path / "photo.png", tmp_path / "mask.png", run_backbone=True)
    result = np.asarray(Image.open(out["result"]).convert("RGB"))
    assert result.shape == photo.shape
    assert np.array_equal(result[~hole], photo[~hole])
    assert (result[hole] != photo[hole]).any()
    download = np.asarray(Image.open(out["download"]).convert("RGB"))  # the full-resolution file
    assert np.array_equal(download, result)
    before, after = (np.asarray(Image.open(p).convert("RGB")) for p in out["slider"])
    assert np.array_equal(before, photo) and np.array_equal(after, result)
    backbone = np.asarray(Image.open(out["backbone"]).convert("RGB"))
    assert backbone.shape == photo.shape and np.array_equal(backbone[~hole], photo[~hole])
    assert Image.open(out["reconstruction"]).size == (W, H)
    assert np.array_equal(np.asarray(Image.open(out["mask"]).convert("L")) > 127, hole)


def test_painted_layer_is_the_mask_and_dilation_grows_it(client, tmp_path):
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    layer = np.zeros((H, W, 4), dtype=np.uint8)
    layer[20:30, 30:40] = (255, 0, 255, 255)  # a painted square on a transparent layer
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    out = call(client, tmp_path / "photo.png", layers=[tmp_path / "layer.png"], dilation=3)
    mask = np.asarray(Image.open(out["mask"]).convert("L")) > 127
    assert mask[20:30, 30:40].all() and mask[17, 35] and not mask[15, 35] and not mask[:, :20].any()
    result = np.asarray(Image.open(out["result"]).convert("RGB"))
    assert np.array_equal(result[~mask], photo[~mask])


def test_uploaded_mask_overrides_painting(client, tmp_path):
    photo, hole = _photo(), _hole()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    layer = np.zeros((H, W, 4), dtype=np.uint8)
    layer[0:5, 0:5, 3] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    out = call(client, tmp_path / "photo.png", tmp_path / "mask.png", layers=[tmp_path / "layer.png"])
    assert np.array_equal(np.asarray(Image.open(out["mask"]).convert("L")) > 127, hole)


def test_empty_mask_is_a_message_not_a_crash(client, tmp_path):
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    Image.new("L", (W, H), 0).save(tmp_path / "mask.png")
    with pytest.raises(AppError, match="mask is empty"):
        call(client, tmp_path / "photo.png", tmp_path / "mask.png")
    # the server still answers afterwards
    Image.fromarray(_hole().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    assert Image.open(call(client, tmp_path / "photo.png", tmp_path / "mask.png")["result"]).size == (W, H)


def test_exif_rotated_and_16_bit_inputs(client, tmp_path):
    photo = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: the upright image is H wide, W high
    Image.fromarray(photo).save(tmp_path / "rotated.png", exif=exif.tobytes())
    upright = np.asarray(load_image(tmp_path / "rotated.png"))
    assert upright.shape == (W, H, 3)
    hole = np.zeros((W, H), dtype=bool)
    hole[10:30, 10:30] = True
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask_upright.png")
    result = np.asarray(Image.open(call(client, tmp_path / "rotated.png", tmp_path / "mask_upright.png")["result"]))
    assert result.shape[:2] == (W, H) and np.array_equal(result[..., :3][~hole], upright[~hole])

    grey16 = np.asarray(Image.fromarray(photo).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    Image.fromarray(_hole().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    expected = np.asarray(load_image(tmp_path / "deep.png"))
    assert expected.std() > 10  # scaled to 8 bits, not clipped to white
    result = np.asarray(
        Image.open(call(client, tmp_path / "deep.png", tmp_path / "mask.png")["result"]).convert("RGB")
    )
    assert np.array_equal(result[~_hole()], expected[~_hole()])


def test_tiny_banner_and_examples_are_in_the_page(tiny_app_url):
    with urllib.request.urlopen(tiny_app_url + "config", timeout=30) as response:
        config = json.loads(response.read())
    text = json.dumps(config)
    assert "random weights, for trying the interface" in text
    assert "chelsea_mask.png" in text  # the examples table


def test_huge_image_and_another_method(client, tmp_path):
    big = Image.open(ROOT / "examples" / "rocket.jpg").convert("RGB").resize((3000, 2000))
    big.save(tmp_path / "big.png")
    hole = np.zeros((2000, 3000), dtype=bool)
    hole[900:1100, 1400:1700] = True
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    photo = np.asarray(big)
    for method in ("asuka-sd", "sd"):  # the selector's other entry is loaded lazily on first use
        out = call(client, tmp_path / "big.png", tmp_path / "mask.png", method=method)
        result = np.asarray(Image.open(out["result"]).convert("RGB"))
        assert result.shape == photo.shape and np.array_equal(result[~hole], photo[~hole])
        assert (result[hole] != photo[hole]).any()


def test_segment_returns_a_mask_of_the_image_size_equal_to_the_selection(client, tmp_path):
    photo = Image.fromarray(_photo())
    photo.save(tmp_path / "photo.png")
    clicks = [(20, 30, True), (60, 10, True), (40, 40, False)]
    mask = segment_call(client, tmp_path / "photo.png", [(x, y, int(add)) for x, y, add in clicks])
    assert mask.shape == (H, W)
    # the server's tiny model is the same seeded random model as a fresh one here
    assert np.array_equal(mask, Segmenter(tiny=True).select(photo, clicks))
    box = segment_call(client, tmp_path / "photo.png", box=(5, 5, 50, 40))
    assert box.shape == (H, W) and np.array_equal(box, Segmenter(tiny=True).select(photo, box=(5, 5, 50, 40)))
    with pytest.raises(AppError, match=r"The point \(200, 10\) lies outside the image, which is 77x53 pixels"):
        segment_call(client, tmp_path / "photo.png", [(200, 10)])
    with pytest.raises(AppError, match="A box must be four numbers"):
        segment_call(client, tmp_path / "photo.png", box=(1, 2, 3))


def test_invert_and_feather(client, tmp_path):
    photo, hole = _photo(), _hole()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    inverted = call(client, tmp_path / "photo.png", tmp_path / "mask.png", invert=True)
    assert np.array_equal(np.asarray(Image.open(inverted["mask"]).convert("L")) > 127, ~hole)
    result = np.asarray(Image.open(inverted["result"]).convert("RGB"))
    assert np.array_equal(result[hole], photo[hole])  # what was the hole is kept now

    width = 4
    out = call(client, tmp_path / "photo.png", tmp_path / "mask.png", feather=width)
    result = np.asarray(Image.open(out["result"]).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out["mask"]).convert("L")) > 127, hole)  # the hole, not the ring
    far = np.isinf(distance_to_hole(hole, width))
    assert np.array_equal(result[far], photo[far]), "pixels farther than the feather width must be the input's"
    ring = ~hole & ~far
    assert (result[ring] != photo[ring]).any(), "the seam is blended over the feather width"
    hard = np.asarray(Image.open(call(client, tmp_path / "photo.png", tmp_path / "mask.png")["result"]).convert("RGB"))
    assert np.array_equal(hard[~hole], photo[~hole])  # the default stays the exact paste-back


def test_the_run_time_and_the_step_cache_through_the_api(client, tmp_path):
    photo, hole = _photo(), _hole()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = call(client, tmp_path / "photo.png", tmp_path / "mask.png", step_cache="pab:2")
    assert out["run_time"].endswith(" s for 2 steps (step cache pab:2)"), out["run_time"]
    with pytest.raises(AppError, match="accepted: first-block"):
        call(client, tmp_path / "photo.png", tmp_path / "mask.png", step_cache="deep:2")
