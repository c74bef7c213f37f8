"""The demo's mask tools on exact pixel counts: grow/shrink against OpenCV's morphology, the feather distance
against OpenCV's exact distance transform, invert, and the feathered paste-back."""

import cv2
import numpy as np
import pytest
from PIL import Image

from asuka.masks import distance_to_hole, feather_weights, grow_mask, invert_mask, paste_feathered


def _disk(radius: int) -> np.ndarray:
    """The structuring element of a disk of `radius`: the pixels within `radius` of the centre."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _shapes() -> np.ndarray:
    """A square, a one-pixel dot and a blob touching the right border, on a 40x56 canvas."""
    hole = np.zeros((40, 56), dtype=np.uint8)
    hole[8:18, 6:16] = 1  # a 10x10 square
    hole[30, 10] = 1  # a single pixel
    hole[5:35, 44:56] = 1  # touches the right border
    hole[20:24, 40:44] = 1
    return hole


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_grow_and_shrink_equal_opencv_dilate_and_erode(radius):
    hole = _shapes()
    grown = grow_mask(hole.astype(np.float32), radius) > 0.5
    shrunk = grow_mask(hole.astype(np.float32), -radius) > 0.5
    assert np.array_equal(grown, cv2.dilate(hole, _disk(radius)) > 0)
    assert np.array_equal(shrunk, cv2.erode(hole, _disk(radius)) > 0)  # OpenCV's border: outside counts as hole
    assert grown.sum() > hole.sum() > shrunk.sum()


def test_grow_counts_by_hand():
    dot = np.zeros((21, 21), dtype=np.float32)
    dot[10, 10] = 1
    # a digital disk of radius 3 holds 29 pixels: rows of 1, 5, 5, 7, 5, 5, 1
    assert int(grow_mask(dot, 3).sum()) == 29
    square = np.zeros((30, 30), dtype=np.float32)
    square[10:20, 10:20] = 1
    # grown by 1: the square, one row/column on each side (4 x 10); the corners need distance sqrt(2) > 1
    assert int(grow_mask(square, 1).sum()) == 100 + 40
    # shrunk by 2: 6x6 are left
    assert int(grow_mask(square, -2).sum()) == 36
    assert np.array_equal(grow_mask(square, 0), square)


def test_grow_keeps_pil_masks_pil_and_refuses_bad_values():
    mask = Image.new("L", (12, 9), 0)
    mask.putpixel((5, 4), 200)
    grown = grow_mask(mask, 1)
    assert isinstance(grown, Image.Image) and grown.mode == "L" and grown.size == (12, 9)
    assert int((np.asarray(grown) == 255).sum()) == 5
    with pytest.raises(ValueError, match="negative shrinks"):
        grow_mask(mask, 1.5)
    with pytest.raises(ValueError, match="2-D"):
        grow_mask(np.zeros((2, 3, 4)), 1)


def test_invert_counts():
    hole = _shapes()
    inverted = invert_mask(hole.astype(np.float32))
    assert inverted.sum() == hole.size - hole.sum()
    assert not (inverted.astype(bool) & hole.astype(bool)).any()
    pil = invert_mask(Image.fromarray(hole * 255))
    assert int((np.asarray(pil) == 255).sum()) == hole.size - hole.sum()


@pytest.mark.parametrize("limit", [1, 4, 9])
def test_distance_to_hole_equals_opencv_exact_distance_transform(limit):
    hole = _shapes().astype(bool)
    reference = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ours = distance_to_hole(hole, limit)
    near = reference <= limit
    assert np.allclose(ours[near], reference[near], atol=1e-3)
    assert np.isinf(ours[~near]).all()
    assert np.isinf(distance_to_hole(np.zeros((5, 6), bool), 3)).all()


def test_feather_weights_ramp_and_zero_beyond_the_width():
    hole = np.zeros((20, 30), dtype=np.float32)
    hole[5:15, 10:20] = 1
    weights = feather_weights(hole, 4)
    assert (weights[hole > 0] == 1).all()
    row = weights[10, 20:26]  # to the right of the hole: distances 1..6
    assert np.allclose(row, [0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    assert np.array_equal(feather_weights(hole, 0), hole)


def test_feathered_paste_back_leaves_far_pixels_exactly_equal_to_the_input():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # what the pipeline decoded everywhere
    hole = np.zeros((48, 64), dtype=bool)
    hole[15:30, 20:40] = True
    width = 6
    mask = Image.fromarray(hole.astype(np.uint8) * 255)
    out = np.asarray(paste_feathered(Image.fromarray(photo), Image.fromarray(result), mask, width))
    distance = cv2.distanceTransform((~hole).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    far = distance > width
    ring = ~hole & ~far
    assert far.sum() == 48 * 64 - int((distance <= width).sum())  # every pixel is in the hole, the ring or far
    assert np.array_equal(out[far], photo[far]), "pixels farther than the feather width must be the input's"
    assert np.array_equal(out[hole], result[hole])
    # in the ring: the blend of both by the weight, rounded
    weight = (1 - distance[ring] / (width + 1))[:, None]
    expected = np.round(photo[ring] * (1 - weight) + result[ring] * weight)
    assert np.abs(out[ring].astype(int) - expected).max() <= 1
    assert (out[ring] != photo[ring]).any() and (out[ring] != result[ring]).any()
    # width 0: the hard paste-back
    hard = np.asarray(paste_feathered(Image.fromarray(photo), Image.fromarray(result), hole.astype(np.float32), 0))
    assert np.array_equal(hard[~hole], photo[~hole]) and np.array_equal(hard[hole], result[hole])
    with pytest.raises(ValueError, match="must match"):
        paste_feathered(Image.fromarray(photo), Image.new("RGB", (10, 10)), hole.astype(np.float32), 2)
