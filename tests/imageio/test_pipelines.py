"""One image reading everywhere: `asuka.imageio` and every pipeline's path and PIL inputs give identical pixels for
CMYK, 16-bit, palette+transparency, EXIF-rotated and RGBA files (helper: tests/support/imageio_cases.py)."""

import numpy as np
import pytest
import torch

from asuka.imageio import load_image
from asuka.pipelines.inpaint_steps import image_to_tensor
from asuka.testing import make_tiny_pipeline
from tests.support.imageio_cases import assert_reads_like_imageio, open_lazily, write_awkward_images


@pytest.fixture(scope="module")
def awkward_images(tmp_path_factory):
    return write_awkward_images(tmp_path_factory.mktemp("awkward"))


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """The first (3, H, W) image in [0, 1] as (H, W, 3) uint8."""
    return (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_imageio_reads_paths_bytes_and_pil_images_alike(awkward_images):
    assert_reads_like_imageio(lambda path: load_image(path.read_bytes()), awkward_images)
    assert_reads_like_imageio(lambda path: load_image(open_lazily(path)), awkward_images)


@pytest.mark.parametrize("source", ["path", "pil"])
def test_standardisation_reads_like_imageio(awkward_images, source):
    def read(path):
        return as_uint8(image_to_tensor(str(path) if source == "path" else open_lazily(path)))

    assert_reads_like_imageio(read, awkward_images)


@pytest.mark.parametrize("kind", ["sd", "flux", "strdiffusion"])
@pytest.mark.parametrize("source", ["path", "pil"])
def test_pipeline_inputs_read_like_imageio(awkward_images, kind, source):
    """With an all-zero mask every pipeline returns its input's pixels, so they show how it read the file."""
    pipe = make_tiny_pipeline(kind)

    def read(path):
        width, height = load_image(path).size  # the upright size, for the mask
        image = str(path) if source == "path" else open_lazily(path)
        empty = np.zeros((height, width), np.uint8)
        out = pipe(image, empty, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
        return np.asarray(out)

    assert_reads_like_imageio(read, awkward_images)
