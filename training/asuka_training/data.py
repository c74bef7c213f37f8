"""Training data: images (decoded only by `asuka.imageio`, like the app and the CLI) plus paper masks.

A sample holds "pixel_values" (3,R,R) in [0,1], "mask" (1,R,R) with 1 = hole, "num_bad_images"
(unreadable image files skipped to produce it) and "num_bad_masks" (unreadable --mask_dir files skipped).
`load_training_image` is the whole path from a file to the pixel tensor, so a test can compare it with what
`asuka.imageio.load_image` gives the pipelines.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from asuka.imageio import is_image_file, load_image
from asuka.masks import MaskGenerator


logger = logging.getLogger("asuka.training")


def load_rgb(source: Any) -> Image.Image:
    """Decode a path, bytes, HF datasets image dict ({'bytes'|'path'}) or PIL image to upright RGB.

    All decoding is `asuka.imageio.load_image` (EXIF rotation, 16-bit and alpha rules); raises
    ValueError on anything unreadable.
    """
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    return load_image(source)


def load_training_image(
    source: Any,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """The (3, R, R) float tensor in [0, 1] that training sees for an image file (or bytes / PIL image)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    return ImageTransform(resolution, random_crop, random_flip)(load_rgb(source), rng)


class ImageTransform:
    """Resize (short side) + center/random crop + optional flip to a (3, R, R) float tensor in [0, 1]."""

    def __init__(self, resolution: int, random_crop: bool = False, random_flip: bool = False) -> None:
        self.resolution, self.random_crop, self.random_flip = resolution, random_crop, random_flip

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        size = self.resolution
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.BICUBIC)
        if self.random_crop:
            left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        else:
            left, top = (width - size) // 2, (height - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        if self.random_flip and rng.random() < 0.5:
            array = array[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


@dataclass
class SampleMaker:
    """Turns a decoded image into a training sample: pixels in [0,1] plus a paper mask (1 = hole)."""

    transform: ImageTransform
    masks: MaskGenerator
    seed: int = 0

    def __call__(self, image: Image.Image, key: Sequence[int]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, *key])
        pixels = self.transform(image, rng)
        drawn = self.masks.sample(rng)
        for reason in drawn.skipped:
            logger.warning("skipping unreadable mask %s", reason)
        return {
            "pixel_values": pixels,
            "mask": torch.from_numpy(drawn.mask)[None],
            "num_bad_masks": len(drawn.skipped),
        }


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of a folder (recursive). An unreadable file is replaced by the next readable one and counted."""

    def __init__(
        self, paths: Sequence[Any], make_sample: SampleMaker, load: Callable[[Any], Image.Image] = load_rgb
    ) -> None:
        if not paths:
            raise ValueError(
                "The training data holds no images (accepted: the image files `asuka.imageio.is_image_file` "
                "names, e.g. PNG, JPEG, WebP, BMP, TIFF, GIF; hidden files are ignored)."
            )
        self.paths, self.make_sample, self.load = list(paths), make_sample, load
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Masks and crops differ per epoch but are reproducible for (seed, epoch, index)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        for skipped in range(len(self.paths)):
            item = (index + skipped) % len(self.paths)
            try:
                image = self.load(self.paths[item])
            except Exception as error:  # noqa: BLE001 - any decoding failure is a bad image, never fatal
                logger.warning("skipping unreadable image %s: %s", self.paths[item], error)
                continue
            sample = self.make_sample(image, (self.epoch, item))
            sample["num_bad_images"] = skipped
            return sample
        raise ValueError("None of the training images could be read.")


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """HF streaming dataset -> samples; bad images are skipped and counted.

    Data-loader workers split the stream between them; splitting between processes is left to
    accelerate (its prepared loader dispatches batches of an iterable dataset to the processes).
    """

    def __init__(self, stream: Any, image_column: str, make_sample: SampleMaker) -> None:
        self.stream, self.image_column, self.make_sample = stream, image_column, make_sample
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        shard, shards = (info.id, info.num_workers) if info is not None else (0, 1)
        bad = 0
        for position, row in enumerate(self.stream):
            if position % shards != shard:
                continue
            try:
                image = load_rgb(row[self.image_column])
            except Exception as error:  # noqa: BLE001
                logger.warning("skipping unreadable streamed image #%d: %s", position, error)
                bad += 1
                continue
            sample = self.make_sample(image, (self.epoch, position))
            sample["num_bad_images"], bad = bad, 0
            yield sample


def build_dataset(
    args: argparse.Namespace, mae_mode: bool = False, patch_size: int = 16, mae_min_patch_ratio: float = 0.75
) -> torch.utils.data.Dataset:
    """Dataset from --train_data_dir or --dataset_name/--streaming, with paper or --mask_dir masks at --resolution."""
    masks = MaskGenerator(
        args.resolution,
        object_mask_dir=args.object_mask_dir,
        hole_range=(args.hole_min, args.hole_max),
        mae_mode=mae_mode,
        patch_size=patch_size,
        mae_min_patch_ratio=mae_min_patch_ratio,
        seed=args.seed,
        mask_dir=args.mask_dir,
        mask_dir_prob=args.mask_dir_prob if args.mask_dir is not None else 1.0,
    )
    make_sample = SampleMaker(
        ImageTransform(args.resolution, args.random_crop, args.random_flip), masks, args.seed or 0
    )
    if args.train_data_dir is not None:
        paths = sorted(p for p in Path(args.train_data_dir).rglob("*") if is_image_file(p) and p.is_file())
        if args.max_train_samples is not None:
            paths = paths[: args.max_train_samples]
        return ImageFolderDataset(paths, make_sample)

    import datasets

    data = datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, split=args.dataset_split, streaming=args.streaming
    )
    if args.image_column not in (data.column_names or [args.image_column]):
        raise ValueError(
            f"--image_column {args.image_column!r} is not a column of {args.dataset_name}; "
            f"columns: {data.column_names}."
        )
    if isinstance(data.features, datasets.Features) and isinstance(
        data.features.get(args.image_column), datasets.Image
    ):
        data = data.cast_column(args.image_column, datasets.Image(decode=False))  # decode ourselves, to skip bad files
    if args.streaming:
        if args.max_train_samples is not None:
            data = data.take(args.max_train_samples)
        return StreamingImageDataset(data, args.image_column, make_sample)
    if args.max_train_samples is not None:
        data = data.select(range(min(args.max_train_samples, len(data))))
    column = args.image_column
    return ImageFolderDataset(list(range(len(data))), make_sample, load=lambda i: load_rgb(data[i][column]))


def validation_batch(dataset: torch.utils.data.Dataset, count: int) -> dict[str, torch.Tensor]:
    """The first `count` samples (fixed across the run) for validation grids."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        samples = []
        for sample in dataset:
            samples.append(sample)
            if len(samples) >= count:
                break
    else:
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
    return collate(samples)


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack each tensor of the samples (pixels, masks; precomputed inputs); sum the bad-image and bad-mask counts."""
    counts = ("num_bad_images", "num_bad_masks")
    batch = {key: torch.stack([s[key] for s in samples]).contiguous() for key in samples[0] if key not in counts}
    batch.update({key: torch.tensor(sum(int(s[key]) for s in samples)) for key in counts})
    return batch


def make_dataloader(args: argparse.Namespace, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
    shuffle = not isinstance(dataset, torch.utils.data.IterableDataset)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        num_workers=args.dataloader_num_workers,
        drop_last=shuffle and len(dataset) >= args.train_batch_size,
        generator=generator,
    )
