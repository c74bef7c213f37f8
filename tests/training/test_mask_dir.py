"""`--mask_dir`: a folder of ready-made masks (the released MISATO training masks) as the training mask source."""

import json
import logging

import numpy as np
import pytest
import train_mae
from PIL import Image

import asuka_training
from asuka.masks import MaskGenerator
from tests.support.training import (
    random_images,
    tiny_pipeline_dir,
    training_argv,
)


RESOLUTION = 16


@pytest.fixture
def image_dir(tmp_path):
    """Four random images: each epoch draws four masks."""
    (tmp_path / "images").mkdir()
    return random_images(tmp_path / "images", [(20, 24)] * 4)


def write_masks(folder, sizes):
    """Seeded grey-level masks (every value 0..255, so the > 127 rule is exercised) of each (height, width)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    for index, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"mask_{index}.png")
    return folder


def expected_mask(path, resolution=RESOLUTION):
    """The file's pixels read independently: > 127 = hole, nearest-resized so its short side is the training
    resolution, the centre square cut out (as training images are)."""
    grey = Image.open(path).convert("L")
    width, height = grey.size
    short = min(width, height)
    size = (round(width * resolution / short), round(height * resolution / short))
    if size != grey.size:
        grey = grey.resize(size, Image.Resampling.NEAREST)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return (np.asarray(grey)[top : top + resolution, left : left + resolution] > 127).astype(np.float32)


def dataset_for(image_dir, *flags):
    argv = ["--pretrained_model_name_or_path", "x", "--train_data_dir", str(image_dir)]
    argv += ["--resolution", str(RESOLUTION), "--seed", "0", *map(str, flags)]
    return asuka_training.build_dataset(asuka_training.parse_args(asuka_training.build_parser("test"), argv))


def draws(dataset, epochs):
    """Every sample of `epochs` epochs (masks are drawn per (seed, epoch, index))."""
    samples = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        samples += [dataset[i] for i in range(len(dataset))]
    return samples


def test_folder_masks_are_the_files_pixels_binarised_and_resized(image_dir, tmp_path):
    # one mask at the training resolution, one twice as large (nearest-resized), a wide and a tall one (resized to
    # cover, centre cut out), one grey RGB
    sizes = [(RESOLUTION, RESOLUTION), (2 * RESOLUTION, 2 * RESOLUTION), (RESOLUTION, 3 * RESOLUTION + 5)]
    folder = write_masks(tmp_path / "masks", [*sizes, (2 * RESOLUTION + 7, RESOLUTION + 3)])
    rgb = np.repeat(np.random.default_rng(4).integers(0, 256, (RESOLUTION, RESOLUTION, 1), dtype=np.uint8), 3, 2)
    Image.fromarray(rgb).save(folder / "mask_rgb.png")
    expected = {p.name: expected_mask(p) for p in sorted(folder.iterdir())}
    assert all(0.2 < m.mean() < 0.8 for m in expected.values())  # really binarised grey levels, not all-or-nothing

    dataset = dataset_for(image_dir, "--mask_dir", folder)  # --mask_dir_prob defaults to 1: folder masks only
    seen = set()
    for sample in draws(dataset, 8):
        mask = sample["mask"][0].numpy()
        matches = [name for name, pixels in expected.items() if np.array_equal(mask, pixels)]
        assert len(matches) == 1, "every mask used is exactly one file's binarised pixels"
        seen.update(matches)
        assert sample["num_bad_masks"] == 0
    assert seen == set(expected)  # 32 draws reach every file

    again = dataset_for(image_dir, "--mask_dir", folder)
    assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(draws(dataset, 2), draws(again, 2), strict=True))


def test_mask_dir_prob_mixes_folder_and_generated_masks(tmp_path):
    """400 seeded draws at P = 0.3: the folder share lies within 0.3 +- 0.07 (about 3 binomial standard deviations,
    sqrt(0.3 * 0.7 / 400) = 0.023); P = 0 and P = 1 give only one source."""
    folder = write_masks(tmp_path / "masks", [(RESOLUTION, RESOLUTION)])
    files = expected_mask(folder / "mask_0.png")

    def folder_share(prob, count=400):
        masks = MaskGenerator(RESOLUTION, mask_dir=folder, mask_dir_prob=prob, seed=0)
        families = [masks.sample(index=i) for i in range(count)]
        assert all((s.family == "folder") == np.array_equal(s.mask, files) for s in families)
        return np.mean([s.family == "folder" for s in families])

    assert abs(folder_share(0.3) - 0.3) <= 0.07
    assert folder_share(0.0, 50) == 0.0 and folder_share(1.0, 50) == 1.0


def test_mask_dir_prob_flag_reaches_the_dataset(image_dir, tmp_path):
    folder = write_masks(tmp_path / "masks", [(RESOLUTION, RESOLUTION)])
    files = expected_mask(folder / "mask_0.png")
    samples = draws(dataset_for(image_dir, "--mask_dir", folder, "--mask_dir_prob", 0.5), 50)  # 200 draws
    share = np.mean([np.array_equal(s["mask"][0].numpy(), files) for s in samples])
    assert abs(share - 0.5) <= 0.11  # 3 binomial standard deviations of 200 draws (0.035 each)


def test_corrupt_and_vanished_mask_files_are_skipped_counted_and_logged(image_dir, tmp_path, caplog):
    folder = write_masks(tmp_path / "masks", [(RESOLUTION, RESOLUTION)] * 2)
    (folder / "mask_0.png").rename(folder / "good.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG garbage, not an image")
    dataset = dataset_for(image_dir, "--mask_dir", folder)
    (folder / "mask_1.png").unlink()  # listed at start-up, gone when drawn
    good = expected_mask(folder / "good.png")
    with caplog.at_level(logging.WARNING, logger="asuka.training"):
        samples = draws(dataset, 10)
    assert all(np.array_equal(s["mask"][0].numpy(), good) for s in samples)  # the only readable file
    bad = sum(int(s["num_bad_masks"]) for s in samples)
    # files sorted: corrupt.png, good.png, mask_1.png; a draw of corrupt.png passes over one, of mask_1.png two
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping unreadable mask")]
    assert bad == len(logged) > 0
    assert any("corrupt.png" in m for m in logged) and any("mask_1.png" in m and "not found" in m for m in logged)
    batch = asuka_training.collate(samples[:4])
    assert int(batch["num_bad_masks"]) == sum(int(s["num_bad_masks"]) for s in samples[:4])


def test_bad_mask_dir_flags_and_folders_raise_value_errors(image_dir, tmp_path):
    folder = write_masks(tmp_path / "masks", [(RESOLUTION, RESOLUTION)])
    for flags, message in [
        (["--mask_dir_prob", "0.5"], "--mask_dir_prob applies to --mask_dir only"),
        (["--mask_dir", folder, "--mask_dir_prob", "1.5"], r"--mask_dir_prob must be in \[0, 1\]"),
        (["--mask_dir", folder, "--mask_dir_prob", "-0.1"], r"--mask_dir_prob must be in \[0, 1\]"),
        (["--mask_dir", tmp_path / "nope"], "--mask_dir .* is not a folder"),
    ]:
        with pytest.raises(ValueError, match=message):
            dataset_for(image_dir, *flags)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no masks here")
    with pytest.raises(ValueError, match="holds no mask images"):
        dataset_for(image_dir, "--mask_dir", empty)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"garbage")
    (unreadable / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="none of the 2 files of mask_dir could be read"):
        dataset_for(image_dir, "--mask_dir", unreadable)
    with pytest.raises(ValueError, match=r"mask_dir_prob must be in \[0, 1\]"):
        MaskGenerator(RESOLUTION, mask_dir=folder, mask_dir_prob=2.0)


def test_mae_script_trains_on_folder_masks(tmp_path_factory, image_dir, tmp_path):
    """A two-step run draws its masks from the folder: the corrupt file it meets is counted in the result."""
    folder = write_masks(tmp_path / "masks", [(32, 32), (64, 64)])
    (folder / "corrupt.png").write_bytes(b"not a png")
    output_dir = tmp_path / "mae"
    argv = training_argv(
        tiny_pipeline_dir(tmp_path_factory, "sd"),
        image_dir,
        output_dir,
        2,
        resolution=32,
        validation_steps=0,
        checkpointing_steps=0,
        mask_dir=folder,
    )
    result = train_mae.main(argv)
    assert result.global_step == 2 and result.num_bad_masks > 0
    recorded = json.loads((output_dir / "training_args.json").read_text())
    assert recorded["mask_dir"] == str(folder) and recorded["mask_dir_prob"] == 1.0
