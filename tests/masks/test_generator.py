"""Tests for the paper's training-mask mixture (asuka/masks.py)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from asuka.masks import (
    FAMILIES,
    MaskGenerator,
    dilate_mask,
    mask_ratio,
    masked_patch_fraction,
)


@pytest.fixture(scope="module")
def object_dir(tmp_path_factory):
    """A folder of a few binary object silhouettes of different shapes and sizes."""
    folder = tmp_path_factory.mktemp("objects")
    for i in range(6):
        image = Image.new("L", (60 + 10 * i, 50 + 7 * i), 0)
        draw = ImageDraw.Draw(image)
        if i % 2:
            draw.ellipse((5, 5, image.width - 5, image.height - 8), fill=255)
        else:
            draw.polygon(
                [(3, image.height - 3), (image.width // 2, 2), (image.width - 3, image.height - 10)], fill=255
            )
        image.save(folder / f"obj_{i}.png")
    return folder


def test_family_frequencies_over_2000_masks(object_dir):
    generator = MaskGenerator(64, object_mask_dir=object_dir, seed=123)
    samples = [generator.sample() for _ in range(2000)]
    counts = Counter(s.family for s in samples)
    for family, expected in zip(FAMILIES, (0.5, 0.4, 0.1)):
        assert abs(counts[family] / 2000 - expected) <= 0.03, (family, counts)
    objects = [s for s in samples if s.family == "object"]
    combined = sum(s.with_irregular for s in objects) / len(objects)
    assert abs(combined - 0.5) <= 0.05
    assert not any(s.with_irregular for s in samples if s.family != "object")


@pytest.mark.parametrize("hole_range", [(0.05, 0.7), (0.2, 0.4), (0.5, 0.9)])
def test_hole_ratio_respects_range(object_dir, hole_range):
    generator = MaskGenerator(96, object_mask_dir=object_dir, hole_range=hole_range, seed=7)
    ratios = {family: [] for family in FAMILIES}
    for _ in range(150):
        sample = generator.sample()
        assert sample.mask.shape == (96, 96) and sample.mask.dtype == np.float32
        assert set(np.unique(sample.mask)) <= {0.0, 1.0}
        ratios[sample.family].append(mask_ratio(sample.mask))
    for family, values in ratios.items():
        assert values, family
        assert hole_range[0] <= min(values) and max(values) <= hole_range[1], (family, min(values), max(values))


def test_mae_mode_masks_at_least_75_percent_of_patches(object_dir):
    generator = MaskGenerator(
        128, object_mask_dir=object_dir, hole_range=(0.05, 0.3), mae_mode=True, patch_size=16, seed=3
    )
    fractions, enlarged = [], 0
    for _ in range(100):
        sample = generator.sample()
        fractions.append(masked_patch_fraction(sample.mask, 16))
        enlarged += sample.mae_enlarged
    assert min(fractions) >= 0.75
    assert enlarged > 50  # small holes were enlarged, with extra *whole* patches
    # Which extra patches are chosen is random: two seeds give different enlargements.
    first = MaskGenerator(128, family_probs=(0, 0, 1), hole_range=(0.05, 0.06), mae_mode=True, seed=0)
    second = MaskGenerator(128, family_probs=(0, 0, 1), hole_range=(0.05, 0.06), mae_mode=True, seed=1)
    assert not np.array_equal(first(), second())


def test_deterministic_from_seed(object_dir):
    make = lambda seed: MaskGenerator(64, object_mask_dir=object_dir, seed=seed)  # noqa: E731
    a, b, c = make(5), make(5), make(6)
    stream_a = [a() for _ in range(20)]
    stream_b = [b() for _ in range(20)]
    stream_c = [c() for _ in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(stream_a, stream_b))
    assert not all(np.array_equal(x, y) for x, y in zip(stream_a, stream_c))
    # index-addressed masks do not depend on call order (what data-loader workers need)
    forward = [a.sample(index=i).mask for i in range(5)]
    backward = [b.sample(index=i).mask for i in reversed(range(5))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(forward, backward))


def test_fallback_without_object_folder_warns_and_redistributes():
    with pytest.warns(UserWarning, match="no object masks"):
        generator = MaskGenerator(64, object_mask_dir=None, seed=0)
    counts = Counter(generator.sample().family for _ in range(1000))
    assert counts["object"] == 0
    assert abs(counts["irregular"] / 1000 - 0.8) <= 0.04  # 40:10 keeps its proportion


def _fills_bounding_box(region: np.ndarray) -> bool:
    rows, cols = np.nonzero(region)
    return bool(rows.size) and bool(region[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())


def test_regular_family_has_rectangles_and_complements():
    generator = MaskGenerator(64, family_probs=(0, 0, 1), hole_range=(0.1, 0.4), seed=0)
    kinds = Counter()
    for _ in range(100):
        hole = generator() > 0.5
        is_rectangle, is_complement = _fills_bounding_box(hole), _fills_bounding_box(~hole)
        assert is_rectangle or is_complement
        kinds["rectangle" if is_rectangle else "complement"] += 1
    assert kinds["rectangle"] > 20 and kinds["complement"] > 20


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="hole_range"):
        MaskGenerator(64, hole_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="family_probs"):
        MaskGenerator(64, family_probs=(1, 1))
    with pytest.raises(ValueError, match="not a folder"):
        MaskGenerator(64, object_mask_dir=tmp_path / "missing")


def test_dilate_mask_matches_disk_reference():
    rng = np.random.default_rng(0)
    hole = rng.random((40, 50)) > 0.97
    yy, xx = np.mgrid[:40, :50]
    for radius in (1, 3, 6):
        reference = np.zeros_like(hole)
        for y, x in zip(*np.nonzero(hole)):
            reference |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        grown = dilate_mask(hole.astype(np.float32), radius)
        assert grown.dtype == np.float32
        np.testing.assert_array_equal(grown > 0.5, reference)
    pil = dilate_mask(Image.fromarray(hole.astype(np.uint8) * 255), 2)
    assert pil.mode == "L" and pil.size == (50, 40)
    assert (np.asarray(pil) > 0).sum() > hole.sum()
    with pytest.raises(ValueError, match="non-negative"):
        dilate_mask(hole, -1)
