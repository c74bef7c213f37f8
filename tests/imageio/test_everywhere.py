"""One image I/O: the same file gives bit-identical pixels through every entry point that reads images.

The pipelines' path and PIL inputs are covered in tests/imageio/test_pipelines.py; here the CLI, training data and
evaluation data (the app's uploads: tests/app/test_uploads.py) are run over the same awkward files (CMYK, 16-bit,
palette + transparency, EXIF rotation, alpha) and compared with `asuka.imageio.load_image`.
"""

import numpy as np
from PIL import Image

from asuka.cli import main as cli_main
from asuka.evaluation.data import Sample, load_sample
from asuka.imageio import load_image
from asuka_training import load_training_image
from tests.support.imageio_cases import assert_reads_like_imageio, write_awkward_images


def test_cli_reads_files_like_imageio(tmp_path):
    """With an empty mask the CLI writes its input unchanged (as PNG), so the output is what it read."""
    paths = write_awkward_images(tmp_path / "images")
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in paths.values():
        Image.new("L", load_image(path).size, 0).save(masks / f"{path.stem}.png")
    out = tmp_path / "out"
    argv = ["inpaint", "--image", str(tmp_path / "images"), "--mask", str(masks), "--output", str(out), "--tiny"]
    assert cli_main([*argv, "--method", "asuka-sd", "--steps", "1"]) == 0

    def read_through_cli(path):
        with Image.open(out / f"{path.stem}.png") as written:
            return np.asarray(written.convert("RGB"))

    assert_reads_like_imageio(read_through_cli, paths)


def test_training_data_reads_files_like_imageio(tmp_path):
    """At the short side's resolution training only centre-crops, so its tensor is the crop of what it read."""
    paths = write_awkward_images(tmp_path)

    def read_through_training(path):
        tensor = load_training_image(path, min(load_image(path).size))
        return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def centre_crop_of(reference):
        height, width = reference.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return reference[top : top + side, left : left + side]

    assert_reads_like_imageio(read_through_training, paths, transform=centre_crop_of)


def test_evaluation_data_reads_files_like_imageio(tmp_path):
    paths = write_awkward_images(tmp_path / "images")

    def read_through_evaluation(path):
        mask_path = tmp_path / f"{path.stem}_mask.png"
        Image.new("L", load_image(path).size, 0).save(mask_path)
        image, _ = load_sample(Sample(name=f"{path.stem}.png", image_path=path, mask_path=mask_path, domain="all"))
        return np.asarray(image)

    assert_reads_like_imageio(read_through_evaluation, paths)
