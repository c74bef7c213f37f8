"""Shared machinery of the asuka training scripts (diffusers-example conventions).

Every script (train_mae.py, train_aligner.py, train_decoder.py, and later ones such as a
StrDiffusion trainer) is assembled from these pieces; nothing here knows about a particular model:

    parser = build_parser("what the script trains"); parser.add_argument(...); parser.set_defaults(...)
    args = parse_args(parser, argv)                        # validated; ValueError on bad flags
    accelerator = setup_accelerator(args)                  # Accelerator + ProjectConfiguration + seed
    register_diffusers_hooks(accelerator, {"aligner": model})  # save_state/load_state in diffusers format
    optimizer = make_optimizer(args, params, accelerator)
    dataset = build_dataset(args); dataloader = make_dataloader(args, dataset)   # images + paper masks
    resolve_train_steps(args, dataloader); lr_scheduler = make_lr_scheduler(args, optimizer, accelerator)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(...)
    _, steps_per_epoch = resolve_train_steps(args, dataloader)
    initial_step = resume_if_requested(args, accelerator)  # --resume_from_checkpoint latest|PATH
    result, grid = run_training(args, accelerator, models=[model], dataloader=dataloader,
                                steps_per_epoch=steps_per_epoch, initial_global_step=initial_step,
                                train_step=train_step, validate=validate)   # checkpoints, logs, grids
    return finish(args, accelerator, result, {"": model}, write_pipeline, ...)  # final folder, card, push

`train_step(batch, global_step)` computes the loss, calls `optimizer_step(...)` and returns scalars
to log (key "loss" is required); `validate(global_step)` returns rows of PIL images for a grid.
A batch holds "pixel_values" (B,3,R,R) in [0,1], "mask" (B,1,R,R) with 1 = hole, "num_bad_images".
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from asuka.masks import IMAGE_EXTENSIONS, MaskGenerator


if TYPE_CHECKING:  # accelerate is imported lazily, when a script starts
    from accelerate import Accelerator

logger = logging.getLogger("asuka.training")

CHECKPOINT_PREFIX = "checkpoint-"


# --------------------------------------------------------------------------- arguments
def build_parser(description: str) -> argparse.ArgumentParser:
    """The standard diffusers-example flags plus the data and mask flags every asuka script shares."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    # model and output
    add(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Hub id or local folder of the base pipeline / component (e.g. an AsukaPipeline or SD-inpainting folder).",
    )
    add("--revision", type=str, default=None, help="Revision of the pretrained model on the Hub.")
    add("--variant", type=str, default=None, help="Weight variant of the pretrained model, e.g. fp16.")
    add("--output_dir", type=str, default="asuka-model", help="Where checkpoints and the final model are written.")
    add("--logging_dir", type=str, default="logs", help="Tracker log folder, relative to --output_dir.")
    add("--seed", type=int, default=None, help="Seed for reproducible training (models, masks, augmentations).")
    # data
    add("--train_data_dir", type=str, default=None, help="Folder of training images (searched recursively).")
    add("--dataset_name", type=str, default=None, help="HF datasets name or path (alternative to --train_data_dir).")
    add("--dataset_config_name", type=str, default=None, help="Config of --dataset_name.")
    add("--dataset_split", type=str, default="train", help="Split of --dataset_name.")
    add("--image_column", type=str, default="image", help="Image column of --dataset_name.")
    add(
        "--streaming",
        action="store_true",
        help="Stream --dataset_name instead of downloading it (Places2-scale data).",
    )
    add("--max_train_samples", type=int, default=None, help="Truncate the dataset to this many images (debugging).")
    add(
        "--resolution",
        type=int,
        default=512,
        help="Training resolution; images are resized and center/random cropped.",
    )
    add("--random_crop", action="store_true", help="Random instead of center crops.")
    add("--random_flip", action="store_true", help="Random horizontal flips.")
    add("--dataloader_num_workers", type=int, default=0, help="Data-loading worker processes (0 = main process).")
    # masks (asuka.masks.MaskGenerator)
    add(
        "--object_mask_dir",
        type=str,
        default=None,
        help="Folder of object masks (training/prepare_object_masks.py). Without it, the object share falls back to the other families.",
    )
    add("--hole_min", type=float, default=0.05, help="Smallest hole ratio of training masks.")
    add("--hole_max", type=float, default=0.7, help="Largest hole ratio of training masks.")
    # optimisation
    add("--train_batch_size", type=int, default=4, help="Batch size per device.")
    add("--num_train_epochs", type=int, default=100, help="Upper bound on epochs; --max_train_steps wins when set.")
    add("--max_train_steps", type=int, default=None, help="Total optimisation steps (overrides --num_train_epochs).")
    add("--gradient_accumulation_steps", type=int, default=1, help="Steps to accumulate before an optimizer update.")
    add("--gradient_checkpointing", action="store_true", help="Trade compute for memory where the models support it.")
    add("--learning_rate", type=float, default=1e-4, help="Peak learning rate.")
    add("--scale_lr", action="store_true", help="Scale the learning rate by processes x batch size x accumulation.")
    add(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='One of diffusers\' schedules: "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup".',
    )
    add("--lr_warmup_steps", type=int, default=0, help="Warmup steps of the lr schedule.")
    add("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    add("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    add("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay.")
    add("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    add("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    add(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the accelerate config. Frozen models are cast to this dtype.",
    )
    add("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")
    # logging, checkpoints, validation
    add(
        "--report_to",
        type=str,
        default="none",
        help='Trackers: "tensorboard", "wandb", "comet_ml", "all" or "none" (validation grids are always saved as PNG).',
    )
    add("--tracker_project_name", type=str, default=None, help="Tracker project name (defaults to the script name).")
    add("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint-N folder every N steps.")
    add("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoint-N folders.")
    add("--resume_from_checkpoint", type=str, default=None, help='"latest" or the path of a checkpoint-N folder.')
    add("--validation_steps", type=int, default=500, help="Log validation images every N steps (0 disables).")
    add("--num_validation_images", type=int, default=4, help="Validation samples per grid.")
    # hub
    add("--push_to_hub", action="store_true", help="Upload the final folder (with a model card) to the Hub.")
    add("--hub_model_id", type=str, default=None, help="Repo id to push to (defaults to the output folder name).")
    add("--hub_token", type=str, default=None, help="Hub token (defaults to the stored login).")
    add("--hub_private", action="store_true", help="Create the Hub repo as private.")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; raises ValueError (not a traceback) for inconsistent flags."""
    args = parser.parse_args(argv)
    if (args.train_data_dir is None) == (args.dataset_name is None):
        raise ValueError(
            "Give exactly one data source: --train_data_dir (an image folder) or --dataset_name (HF datasets)."
        )
    if args.streaming and args.dataset_name is None:
        raise ValueError("--streaming applies to --dataset_name only.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a folder.")
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming datasets have no length: set --max_train_steps.")
    if not 0.0 <= args.hole_min <= args.hole_max <= 1.0:
        raise ValueError(
            f"--hole_min/--hole_max must satisfy 0 <= min <= max <= 1, got {args.hole_min}, {args.hole_max}."
        )
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError("--checkpoints_total_limit must be >= 1.")
    if args.resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}.")
    if args.report_to == "wandb" and args.hub_token is not None:
        raise ValueError(
            "Do not combine --report_to=wandb with --hub_token (the token would be logged); use `hf auth login`."
        )
    return args


# --------------------------------------------------------------------------- accelerator
def setup_accelerator(args: argparse.Namespace) -> Accelerator:
    """Accelerator + ProjectConfiguration, logging, seeding and the output folder."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    project_config = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state)
    if args.seed is not None:
        set_seed(args.seed, device_specific=True)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def weight_dtype_for(accelerator: Accelerator) -> torch.dtype:
    """dtype for frozen models under the current mixed-precision mode."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def collective_save(accelerator: Accelerator) -> bool:
    """Whether saving needs every rank (sharded weights or optimizer state)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def save_diffusers_model(accelerator: Accelerator, model: torch.nn.Module, directory: str) -> None:
    """`save_pretrained` of a prepared model. Under FSDP call it on all ranks: the full state dict is gathered."""
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        state = accelerator.get_state_dict(model)  # collective; complete only on the main process
        if accelerator.is_main_process:
            copy = type(unwrapped).from_config(unwrapped.config)
            copy.load_state_dict(state)
            copy.save_pretrained(directory)
    elif accelerator.is_main_process:
        unwrapped.save_pretrained(directory)


def unwrapped_copy(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A plain float32 copy of a prepared model (no DDP or mixed-precision forward wrappers), for validation."""
    unwrapped = accelerator.unwrap_model(model)
    copy = type(unwrapped).from_config(unwrapped.config)
    copy.load_state_dict(unwrapped.state_dict())
    return copy.to(accelerator.device, torch.float32).eval()


def register_diffusers_hooks(accelerator: Accelerator, trainables: dict[str, torch.nn.Module]) -> None:
    """Make `save_state`/`load_state` store each trained model as `<checkpoint>/<name>/` via save_pretrained.

    `trainables` maps a subfolder name to the (unwrapped) model; models are matched by identity so
    any number of trained components (generator, discriminator, ...) can share one checkpoint.
    """

    def _name_of(model: torch.nn.Module) -> str:
        unwrapped = accelerator.unwrap_model(model)
        for name, candidate in trainables.items():
            if candidate is unwrapped:
                return name
        raise ValueError(
            f"register_diffusers_hooks: unexpected model {type(unwrapped).__name__}; known: {list(trainables)}."
        )

    def save_model_hook(models: list[torch.nn.Module], weights: list[Any], output_dir: str) -> None:
        for model in models:
            save_diffusers_model(accelerator, model, os.path.join(output_dir, _name_of(model)))
            if weights:  # pop so accelerate does not save a second, non-diffusers copy
                weights.pop()

    def load_model_hook(models: list[torch.nn.Module], input_dir: str) -> None:
        while models:
            model = models.pop()
            target = accelerator.unwrap_model(model)
            loaded = type(target).from_pretrained(os.path.join(input_dir, _name_of(model)))
            target.register_to_config(**loaded.config)
            target.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def make_optimizer(args: argparse.Namespace, params: Any, accelerator: Accelerator) -> torch.optim.Optimizer:
    """AdamW from the --adam_* flags (learning rate optionally scaled like the diffusers examples)."""
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    return torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def make_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, accelerator: Accelerator) -> Any:
    """diffusers' `get_scheduler`, with step counts in per-process optimizer steps like the examples."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )


# --------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoint-N folders of `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(args: argparse.Namespace, accelerator: Accelerator, global_step: int) -> Path | None:
    """Rotate old checkpoints, then `save_state` to `checkpoint-<global_step>`.

    The state is written to a temporary folder and renamed at the end, so a run killed while
    saving never leaves a half-written checkpoint-N for `--resume_from_checkpoint latest`.
    """
    final = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{global_step}"
    partial = Path(args.output_dir) / f".partial-{CHECKPOINT_PREFIX}{global_step}"
    all_ranks_save = collective_save(accelerator)
    if accelerator.is_main_process:
        existing = list_checkpoints(args.output_dir)
        if args.checkpoints_total_limit is not None and len(existing) >= args.checkpoints_total_limit:
            for old in existing[: len(existing) - args.checkpoints_total_limit + 1]:
                logger.info("removing old checkpoint %s", old)
                shutil.rmtree(old)
        shutil.rmtree(partial, ignore_errors=True)
    if accelerator.is_main_process or all_ranks_save:
        if all_ranks_save:
            accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        if all_ranks_save:
            accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        logger.info("saved state to %s", final)
        return final
    return None


def resolve_resume_path(args: argparse.Namespace) -> Path | None:
    """Path named by --resume_from_checkpoint ('latest' = newest complete checkpoint-N), or None."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(args.output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(args.resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(args.output_dir) / path
    if not path.is_dir() or not re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", path.name):
        raise ValueError(
            f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: expected 'latest' or an existing checkpoint-N folder."
        )
    return path


def resume_if_requested(args: argparse.Namespace, accelerator: Accelerator) -> int:
    """Load the requested checkpoint; returns the global step to continue from (0 = fresh start)."""
    path = resolve_resume_path(args)
    if path is None:
        if args.resume_from_checkpoint:
            accelerator.print(
                f"Checkpoint '{args.resume_from_checkpoint}' does not exist. Starting a new training run."
            )
        return 0
    accelerator.print(f"Resuming from checkpoint {path}")
    accelerator.load_state(str(path))
    return int(path.name[len(CHECKPOINT_PREFIX) :])


# --------------------------------------------------------------------------- data
def _load_rgb(source: Any) -> Image.Image:
    """Decode a path, bytes, dict({'bytes'|'path'}) or PIL image to RGB; raises on anything unreadable."""
    import io

    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(source)
        image.load()
    if min(image.size) < 1:
        raise ValueError("zero-size image")
    return image.convert("RGB")


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
        mask = torch.from_numpy(self.masks.sample(rng).mask)[None]
        return {"pixel_values": pixels, "mask": mask}


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of a folder (recursive). An unreadable file is replaced by the next readable one and counted."""

    def __init__(
        self, paths: Sequence[Any], make_sample: SampleMaker, load: Callable[[Any], Image.Image] = _load_rgb
    ) -> None:
        if not paths:
            raise ValueError(
                "The training data holds no images (accepted extensions: " + ", ".join(IMAGE_EXTENSIONS) + ")."
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
                image = _load_rgb(row[self.image_column])
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
    """Dataset from --train_data_dir or --dataset_name/--streaming, with paper masks at --resolution."""
    masks = MaskGenerator(
        args.resolution,
        object_mask_dir=args.object_mask_dir,
        hole_range=(args.hole_min, args.hole_max),
        mae_mode=mae_mode,
        patch_size=patch_size,
        mae_min_patch_ratio=mae_min_patch_ratio,
        seed=args.seed,
    )
    make_sample = SampleMaker(
        ImageTransform(args.resolution, args.random_crop, args.random_flip), masks, args.seed or 0
    )
    if args.train_data_dir is not None:
        paths = sorted(p for p in Path(args.train_data_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if args.max_train_samples is not None:
            paths = paths[: args.max_train_samples]
        return ImageFolderDataset(paths, make_sample)

    import datasets

    data = datasets.load_dataset(
        args.dataset_name, args.dataset_config_name, split=args.dataset_split, streaming=args.streaming
    )
    if args.image_column not in (data.column_names or [args.image_column]):
        raise ValueError(
            f"--image_column {args.image_column!r} is not a column of {args.dataset_name}; columns: {data.column_names}."
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
    return ImageFolderDataset(list(range(len(data))), make_sample, load=lambda i: _load_rgb(data[i][column]))


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


def load_scheduler(path: str, subfolder: str = "scheduler", revision: str | None = None) -> Any:
    """The scheduler class named in `<path>/<subfolder>/scheduler_config.json` (any diffusers scheduler)."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(path, subfolder=subfolder, revision=revision)
    cls = getattr(diffusers, config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
    return cls.from_config(config)


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack pixels and masks; sum the bad-image counts."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]).contiguous(),
        "mask": torch.stack([s["mask"] for s in samples]).contiguous(),
        "num_bad_images": torch.tensor(sum(int(s["num_bad_images"]) for s in samples)),
    }


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


def resolve_train_steps(args: argparse.Namespace, dataloader: torch.utils.data.DataLoader) -> tuple[int, int]:
    """(max_train_steps, num_update_steps_per_epoch) after `accelerator.prepare` sharded the loader."""
    try:
        per_epoch = max(1, math.ceil(len(dataloader) / args.gradient_accumulation_steps))
    except TypeError:  # iterable (streaming) data: one "epoch" is the whole run
        per_epoch = args.max_train_steps
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * per_epoch
    return args.max_train_steps, per_epoch


def training_batches(
    args: argparse.Namespace, accelerator: Accelerator, dataloader: Any, start_step: int, steps_per_epoch: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batch stream that resumes mid-epoch (skipping consumed batches of map-style data)."""
    epoch = start_step // steps_per_epoch
    skip = (start_step % steps_per_epoch) * args.gradient_accumulation_steps
    while True:
        dataset = getattr(dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = dataloader
        if skip and not isinstance(dataset, torch.utils.data.IterableDataset):
            loader = accelerator.skip_first_batches(dataloader, skip)
        skip = 0
        yield from loader
        epoch += 1


# --------------------------------------------------------------------------- validation & hub
def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B,3,H,W) in [0,1] -> PIL images."""
    array = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def log_validation(
    accelerator: Accelerator,
    args: argparse.Namespace,
    rows: list[list[Image.Image]],
    global_step: int,
    name: str = "validation",
) -> Path | None:
    """Save a grid (one row per sample) under output_dir/validation/ and send it to the trackers."""
    from diffusers.utils import make_image_grid

    if not accelerator.is_main_process or not rows:
        return None
    size = rows[0][0].size
    cells = [cell.resize(size) for row in rows for cell in row]
    grid = make_image_grid(cells, rows=len(rows), cols=len(rows[0]))
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{global_step:07d}.png"
    grid.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(name, np.asarray(grid)[None], global_step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({name: [wandb.Image(grid, caption=f"step {global_step}")]}, step=global_step)
    return path


def serialisable_args(args: argparse.Namespace) -> dict[str, Any]:
    """Training arguments without secrets, for the model card and training_args.json."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in {"hub_token"}}


def write_model_card(
    folder: str,
    args: argparse.Namespace,
    title: str,
    description: str,
    component: str,
    sample_image: Path | None = None,
) -> Path:
    """README.md (Hub model card) with metadata, the training arguments, the base model and a sample grid."""
    from huggingface_hub import ModelCard, ModelCardData

    folder_path = Path(folder)
    if sample_image is not None and Path(sample_image).is_file():
        shutil.copyfile(sample_image, folder_path / "sample_grid.png")
    image_line = ""
    if (folder_path / "sample_grid.png").is_file():  # this run's grid, or the one of the run it resumed
        image_line = "\n## Samples\n\n![samples](./sample_grid.png)\n"
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="diffusers",
        base_model=args.pretrained_model_name_or_path,
        tags=["asuka", "image-inpainting", "diffusers-training", component],
        pipeline_tag="image-to-image",
    )
    training_args = json.dumps(serialisable_args(args), indent=2, default=str)
    content = (
        f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n"
        f"Base model: `{args.pretrained_model_name_or_path}`. Trained with the `asuka` toolkit "
        f"(`training/`), mask mixture of ASUKA (ECCV 2024) Sec. 3.1.\n{image_line}\n"
        f"## Training arguments\n\n```json\n{training_args}\n```\n"
    )
    card = ModelCard(content)
    path = folder_path / "README.md"
    card.save(str(path))
    (folder_path / "training_args.json").write_text(training_args + "\n", encoding="utf-8")
    return path


def push_folder_to_hub(args: argparse.Namespace, folder: str) -> str:
    """Create the repo (if needed) and upload `folder` without checkpoints or logs; returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    repo_id = api.create_repo(repo_id=repo_id, exist_ok=True, private=args.hub_private, repo_type="model").repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message="asuka training: final model",
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", ".partial-*", "logs/*", "validation/*"],
    )
    return repo_id


def optimizer_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    max_grad_norm: float,
) -> None:
    """backward, clip on sync steps, step the optimizer and its schedule, clear gradients."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def run_training(
    args: argparse.Namespace,
    accelerator: Accelerator,
    *,
    models: Sequence[torch.nn.Module],
    dataloader: Any,
    steps_per_epoch: int,
    initial_global_step: int,
    train_step: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
    validate: Callable[[int], list[list[Image.Image]]] | None = None,
) -> tuple[TrainingResult, Path | None]:
    """The shared loop: accumulation, progress bar, tracker logs, checkpoints, validation grids.

    `train_step(batch, global_step)` does forward, `optimizer_step` and returns scalars to log
    (the key "loss" is recorded per optimizer step). Returns the result and the last validation grid.
    """
    from tqdm.auto import tqdm

    result = TrainingResult(
        initial_global_step=initial_global_step, global_step=initial_global_step, output_dir=args.output_dir
    )
    progress = tqdm(
        range(args.max_train_steps),
        initial=initial_global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    last_grid: Path | None = None
    global_step, pending = initial_global_step, []
    if global_step >= args.max_train_steps:
        return result, last_grid
    for batch in training_batches(args, accelerator, dataloader, initial_global_step, steps_per_epoch):
        for model in models:
            model.train()
        with accelerator.accumulate(*models):
            logs = train_step(batch, global_step)
        pending.append(accelerator.reduce(logs["loss"].detach().float(), "mean").item())
        result.num_bad_images += int(accelerator.reduce(batch["num_bad_images"].to(accelerator.device), "sum").item())
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        result.losses.append(float(np.mean(pending)))
        pending = []
        progress.update(1)
        scalars = {k: float(v.detach().float().mean()) if torch.is_tensor(v) else float(v) for k, v in logs.items()}
        scalars.update(loss=result.losses[-1], num_bad_images=result.num_bad_images)
        progress.set_postfix(loss=scalars["loss"])
        accelerator.log(scalars, step=global_step)
        if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            save_checkpoint(args, accelerator, global_step)
        if validate is not None and args.validation_steps and global_step % args.validation_steps == 0:
            last_grid = log_validation(accelerator, args, validate(global_step), global_step) or last_grid
        if global_step >= args.max_train_steps:
            break
    progress.close()
    result.global_step = global_step
    if (
        validate is not None and args.validation_steps and global_step % args.validation_steps
    ):  # final grid for the card
        last_grid = log_validation(accelerator, args, validate(global_step), global_step) or last_grid
    return result, last_grid


def load_component(cls: Any, path: str, subfolder: str, revision: str | None = None) -> Any:
    """`cls.from_pretrained` from `<path>/<subfolder>` when it exists (pipeline folder), else from `path` itself."""
    local = Path(path)
    if local.is_dir():
        if (local / subfolder / "config.json").is_file():
            return cls.from_pretrained(path, subfolder=subfolder)
        if (local / "config.json").is_file():
            return cls.from_pretrained(path)
        raise ValueError(f"{path!r} holds neither a {subfolder}/ component nor a {cls.__name__} config.json.")
    return cls.from_pretrained(path, subfolder=subfolder, revision=revision)


def finish(
    args: argparse.Namespace,
    accelerator: Accelerator,
    result: TrainingResult,
    components: dict[str, torch.nn.Module],
    write_pipeline: Callable[[], str] | None,
    title: str,
    description: str,
    component: str,
    sample_grid: Path | None,
) -> TrainingResult:
    """Write the final folder (main process only), its model card, an optional pipeline folder, and push.

    `components` maps a subfolder of --output_dir ("" = the folder itself) to a trained, prepared model.
    `write_pipeline()` (main process, after the components are saved) returns the pipeline folder it wrote.
    """
    accelerator.wait_for_everyone()
    for subfolder, model in components.items():
        save_diffusers_model(accelerator, model, str(Path(args.output_dir) / subfolder))
    if accelerator.is_main_process:
        print(
            f"process {accelerator.process_index} of {accelerator.num_processes} writes the final folder {args.output_dir}",
            flush=True,
        )
        result.pipeline_dir = write_pipeline() if write_pipeline is not None else None
        folder = result.pipeline_dir or args.output_dir
        write_model_card(folder, args, title, description, component, sample_grid)
        if folder != args.output_dir:
            write_model_card(args.output_dir, args, title, description, component, sample_grid)
        if args.push_to_hub:
            result.repo_id = push_folder_to_hub(args, folder)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


@dataclass
class TrainingResult:
    """What `main()` returns (for tests and notebooks)."""

    initial_global_step: int
    global_step: int
    losses: list[float] = field(default_factory=list)
    num_bad_images: int = 0
    output_dir: str = ""
    pipeline_dir: str | None = None
    repo_id: str | None = None
