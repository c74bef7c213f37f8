"""The MAE's resizes and input orders against OpenCV itself, which the authors' `prepare_data` uses.

`resize_area` / `resize_nearest` / `resize_area_8bit` are compared with `cv2.resize` on the same arrays; the MAE input
and prior of each order are compared with the ones built from OpenCV's output the way the reference builds them
(uint8 image -> `cv2.resize(INTER_AREA)` -> `/ 255` -> ImageNet normalisation, mask -> `cv2.resize(INTER_NEAREST)`,
`x * (mask < 0.5)`). The MAE is a small seeded one at the real working size (256, patch 16), so the resize is the
real one.
"""

import cv2
import numpy as np
import pytest
import torch

from asuka.models.mae import IMAGENET_MEAN, IMAGENET_STD, resize_area, resize_area_8bit, resize_nearest
from asuka.testing.mae import make_tiny_mae
from tests.support.seeded import relative_error


MEAN = np.array(IMAGENET_MEAN)
STD = np.array(IMAGENET_STD)

# (width, height) of the inputs: integer and fractional shrinks, enlargements, mixed (one side grows), extreme
# aspect ratios; all go to 256x256.
INPUT_SIZES = [(512, 512), (384, 384), (192, 192), (640, 480), (1024, 576), (77, 1000), (208, 352), (1024, 1024)]
# (source (w, h), target (w, h)) pairs beyond the MAE's: identity, 1-pixel sides, tiny targets, mixed.
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


def hole(width: int, height: int) -> np.ndarray:
    """A uint8 mask (H, W), 255 = hole: a box with edges off the 16-pixel grid of 256 and a disc."""
    mask = np.zeros((height, width), np.uint8)
    mask[int(height * 0.23) : int(height * 0.61) + 1, int(width * 0.17) : int(width * 0.52) + 1] = 255
    y, x = np.mgrid[0:height, 0:width]
    mask[((x / width - 0.72) ** 2 + (y / height - 0.7) ** 2) < 0.02] = 255
    return mask


def reference_input(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`prepare_data` on OpenCV's arrays: the resized image in [0, 1], the normalised and blanked MAE input, and the
    resized mask as `mask / 255` (all (256, 256, C)). `image` is uint8 (the reference as it is) or float32 in [0, 1]
    (the blanked variant); `mask` is uint8, 255 = hole."""
    resized = cv2_resize(image, (256, 256), cv2.INTER_AREA).astype(np.float64)
    resized = resized / 255 if image.dtype == np.uint8 else resized
    resized_mask = cv2_resize(mask, (256, 256), cv2.INTER_NEAREST) / 255
    return resized, (resized - MEAN) / STD * (resized_mask < 0.5), resized_mask


@pytest.fixture(scope="module")
def mae():
    """A small seeded MAE at the real working size: 256 pixels, 16-pixel patches, 256 tokens."""
    torch.manual_seed(0)
    model = make_tiny_mae(image_size=256, patch_size=16).eval()
    with torch.no_grad():
        model.alpha.fill_(0.5)  # the partial-patch blend reads the decoder patch embedding of image and mask
    return model


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


# ------------------------------------------------------------------------------------------ the MAE's input orders


@pytest.mark.parametrize("source", INPUT_SIZES)
def test_reference_order_is_prepare_data(mae, source):
    """The reference order: the MAE input of OpenCV's uint8 resize with the hole content present, and its prior."""
    image, mask = photo(*source, seed=5), hole(*source)
    resized, expected_input, expected_mask = reference_input(image, mask)
    image_t, mask_t = to_tensor(image / 255), to_tensor(mask / 255)
    with torch.no_grad():
        actual_input, actual_mask = mae.preprocess(image_t, mask_t, "reference")
        prior = mae.prior(image_t, mask_t, "reference")
        # the prior of OpenCV's input: at 256 the MAE resizes nothing and reads it as the reference built it
        reference_prior = mae.prior(to_tensor(resized), to_tensor(expected_mask), "reference")
    assert np.array_equal(to_array(actual_mask), expected_mask)
    difference = np.abs(to_array(actual_input) - expected_input) * STD  # in [0, 1] units
    error = relative_error(prior, reference_prior)
    print(f"reference {source}: max input difference {difference.max():.2e}, prior {error:.2e}")
    assert difference.max() <= 1e-6 and error <= 1e-5  # OpenCV's bytes: the same input up to float rounding


@pytest.mark.parametrize("source", INPUT_SIZES)
def test_visible_order_is_opencv_on_the_blanked_float_image(mae, source):
    """The visible order: OpenCV's float32 resize of the image blanked first, to 1e-5; the prior to 1e-4; and the
    hole's content is never seen."""
    image, mask = photo(*source, seed=6), hole(*source)
    blanked = (image / 255 * (mask < 128)[..., None]).astype(np.float32)
    resized, expected_input, expected_mask = reference_input(blanked, mask)
    image_t, mask_t = to_tensor(image / 255), to_tensor(mask / 255)
    noise = torch.rand(image_t.shape, generator=torch.Generator().manual_seed(7))
    other_hole_content = torch.where(mask_t >= 0.5, noise, image_t)
    with torch.no_grad():
        actual_input, actual_mask = mae.preprocess(image_t, mask_t, "visible")
        prior = mae.prior(image_t, mask_t, "visible")
        reference_prior = mae.prior(to_tensor(resized), to_tensor(expected_mask), "visible")
        other_prior = mae.prior(other_hole_content, mask_t, "visible")
        reference_order = mae.prior(image_t, mask_t, "reference")
        reference_order_other = mae.prior(other_hole_content, mask_t, "reference")
    assert np.array_equal(to_array(actual_mask), expected_mask)
    difference = np.abs(to_array(actual_input) - expected_input) * STD
    error = relative_error(prior, reference_prior)
    print(f"visible {source}: max input difference {difference.max():.2e}, prior {error:.2e}")
    assert difference.max() <= 1e-5 and error <= 1e-4
    assert torch.equal(other_prior, prior)
    # control: the reference order resizes the hole's content into the border pixels, so it does see it
    assert relative_error(reference_order_other, reference_order) > 1e-4


def test_reference_order_keeps_a_soft_mask_as_given(mae):
    """The reference reads `mask / 255` without binarising: a 0.3 pixel is not blanked but marks its patch."""
    image = to_tensor(photo(256, 256, seed=8) / 255)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 40:60, 40:60] = 0.3
    mask[..., 100:140, 100:140] = 1.0
    with torch.no_grad():
        x, kept = mae.preprocess(image, mask, "reference")
        binary_x, binary = mae.preprocess(image, mask, "visible")
        soft, hard = mae.prior(image, mask, "reference"), mae.prior(image, mask, "visible")
    assert torch.equal(kept, mask) and torch.equal(binary, (mask >= 0.5).float())
    assert torch.equal(x, binary_x)  # only the >= 0.5 part is blanked in both
    assert relative_error(soft, hard) > 1e-4  # the soft part counts as masked patches in the reference order


def test_a_half_precision_mae_makes_its_input_in_float32(mae):
    """The 8-bit grid and OpenCV's arithmetic need float32: a bfloat16 MAE resizes first, then casts."""
    image, mask = to_tensor(photo(208, 352, seed=9) / 255), to_tensor(hole(208, 352) / 255)
    half = make_tiny_mae(image_size=256, patch_size=16).to(torch.bfloat16)
    for preprocessing in ("reference", "visible"):
        expected, expected_mask = mae.preprocess(image, mask, preprocessing)
        actual, actual_mask = half.preprocess(image, mask, preprocessing)
        assert actual.dtype == torch.bfloat16
        assert torch.equal(actual, expected.bfloat16()) and torch.equal(actual_mask, expected_mask.bfloat16())
