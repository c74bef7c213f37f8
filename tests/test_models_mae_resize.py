"""The MAE's resizes against OpenCV itself, which the authors' `prepare_data` uses: `resize_area` /
`resize_nearest` / `resize_area_8bit` are compared with `cv2.resize` on the same arrays."""

import cv2
import numpy as np
import pytest
import torch

from asuka.models.mae import resize_area, resize_area_8bit, resize_nearest


#: (width, height) of the inputs: integer and fractional shrinks, enlargements, mixed (one side grows), extreme
#: aspect ratios; all go to 256x256.
INPUT_SIZES = [(512, 512), (384, 384), (192, 192), (640, 480), (1024, 576), (77, 1000), (208, 352), (1024, 1024)]
#: (source (w, h), target (w, h)) pairs beyond the MAE's: identity, 1-pixel sides, tiny targets, mixed.
OTHER_RESIZES = [
    ((256, 256), (256, 256)),
    ((1, 1), (256, 256)),
    ((1, 300), (256, 256)),
    ((300, 1), (256, 256)),
    ((300, 7), (256, 256)),
    ((255, 257), (256, 256)),
    ((5, 5), (1, 1)),
    ((333, 444), (100, 37)),
    ((10, 10), (3, 7)),
    ((600, 3), (5, 2)),
    ((40, 30), (1000, 3)),
]
ALL_RESIZES = [(size, (256, 256)) for size in INPUT_SIZES] + OTHER_RESIZES


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, C) or (H, W) array -> (1, C, H, W) float32 tensor."""
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)[None]


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W, C) float64 array."""
    return tensor[0].permute(1, 2, 0).double().numpy()


def cv2_resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """`cv2.resize` to `size` (width, height), always (H, W, C)."""
    out = cv2.resize(array, size, interpolation=interpolation)
    return out[..., None] if out.ndim == 2 else out


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with smooth structure, edges and noise, like a photograph (H, W, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(x * f1 * 6 + p) * np.cos(y * f2 * 6 - p) for f1, f2, p in rng.uniform(0.5, 3, (3, 3))]
    image = 0.5 + 0.35 * np.stack(channels, axis=-1) + 0.15 * ((x > 0.4) ^ (y > 0.6))[..., None]
    image = image + rng.normal(0, 0.04, image.shape)
    return (image.clip(0, 1) * 255).round().astype(np.uint8)


# ------------------------------------------------------------------------------------------ the resizes


@pytest.mark.parametrize("source, target", ALL_RESIZES)
def test_resize_area_is_opencvs_inter_area(source, target):
    array = np.random.default_rng(0).random((source[1], source[0], 3), dtype=np.float32)
    expected = cv2_resize(array, target, cv2.INTER_AREA)
    actual = to_array(resize_area(to_tensor(array), target[::-1]))
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5


@pytest.mark.parametrize("source, target", ALL_RESIZES)
def test_resize_nearest_is_opencvs_inter_nearest(source, target):
    array = np.random.default_rng(1).random((source[1], source[0]), dtype=np.float32)
    expected = cv2_resize(array, target, cv2.INTER_NEAREST)
    assert np.array_equal(to_array(resize_nearest(to_tensor(array), target[::-1])), expected)


@pytest.mark.parametrize("source, target", ALL_RESIZES + [((160, 160), (256, 256)), ((512, 1024), (256, 256))])
@pytest.mark.parametrize("channels", [3, 1])
def test_resize_area_8bit_gives_opencvs_bytes(source, target, channels):
    """OpenCV's 8-bit arithmetic on all three of its paths (block means, area sums, fixed-point blends)."""
    image = np.ascontiguousarray(photo(*source, seed=2)[..., :channels])
    expected = cv2_resize(image, target, cv2.INTER_AREA)
    actual = to_array(resize_area_8bit(to_tensor(image / 255), target[::-1])) * 255
    assert np.abs(actual - expected).max() <= 1e-3


def test_resize_area_8bit_rounds_only_images_on_the_8bit_grid():
    grid = torch.from_numpy(photo(384, 384, seed=3)).permute(2, 0, 1).float()[None] / 255
    off_grid = grid.clone()
    off_grid[..., 7, 9] += 0.3 / 255  # one value between two steps: not an 8-bit image
    out = resize_area_8bit(torch.cat([grid, off_grid]), (256, 256))
    assert torch.equal(out[:1], resize_area_8bit(grid, (256, 256)))  # decided per image
    assert ((out[0] * 255 - (out[0] * 255).round()).abs() < 1e-4).all()
    assert torch.allclose(out[1:], resize_area(off_grid, (256, 256)), atol=1e-6)
    assert not torch.allclose(out[:1], resize_area(grid, (256, 256)), atol=1e-4)


def test_resize_batched_multichannel_and_gradients():
    rng = np.random.default_rng(4)
    batch = rng.random((2, 90, 70, 4), dtype=np.float32)  # two images, four channels
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    for size in ((33, 41), (100, 150), (45, 200)):
        out = resize_area(tensor, size)
        for index in range(2):
            expected = cv2_resize(batch[index], size[::-1], cv2.INTER_AREA)
            assert np.abs(out[index].permute(1, 2, 0).numpy() - expected).max() <= 1e-5
    for size in ((3, 4), (9, 11), (2, 9)):  # shrink, enlarge, mixed: a linear map with exact gradients
        image = torch.rand(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, size=size: resize_area(x, size), (image,))


def test_resize_keeps_dtype_and_device():
    image = torch.rand(1, 3, 48, 40)
    expected = resize_area(image, (32, 32))
    assert resize_area(image.double(), (32, 32)).dtype == torch.float64
    half = resize_area(image.bfloat16(), (32, 32))
    assert half.dtype == torch.bfloat16 and (half.float() - expected).abs().max() < 2e-2
    meta = resize_area(torch.empty(2, 3, 48, 40, device="meta"), (32, 20))
    assert meta.device.type == "meta" and meta.shape == (2, 3, 32, 20)
    assert resize_nearest(torch.empty(2, 1, 48, 40, device="meta"), (32, 20)).shape == (2, 1, 32, 20)
    assert resize_area(image, (48, 40)) is image  # already at size: untouched, as OpenCV copies it


@pytest.mark.parametrize(
    "images, size, match",
    [
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), (4, 4), "float tensor"),
        (torch.zeros(3, 8, 8), (4, 4), "float tensor"),
        (torch.zeros(1, 3, 0, 8), (4, 4), "non-empty"),
        (torch.zeros(1, 3, 8, 8), (0, 4), "positive integers"),
        (torch.zeros(1, 3, 8, 8), (4,), "positive integers"),
        (torch.zeros(1, 3, 8, 8), (4.0, 4), "positive integers"),
    ],
)
def test_resize_bad_input_raises_value_error(images, size, match):
    for resize in (resize_area, resize_nearest, resize_area_8bit):
        with pytest.raises(ValueError, match=match):
            resize(images, size)
