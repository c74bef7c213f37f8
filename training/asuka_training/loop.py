"""The shared training loop (accumulation, logs, checkpoints, validation grids) and the end of a run."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .args import serialisable_args
from .checkpoints import save_checkpoint, save_diffusers_model
from .hub import CardText, light_repo_for_push, push_folder_to_hub, write_model_card


if TYPE_CHECKING:
    from accelerate import Accelerator

    from .setup import TrainingSetup


@dataclass
class TrainingResult:
    """What `main()` returns (for tests and notebooks)."""

    initial_global_step: int
    global_step: int
    losses: list[float] = field(default_factory=list)
    num_bad_images: int = 0
    num_bad_masks: int = 0
    output_dir: str = ""
    pipeline_dir: str | None = None
    repo_id: str | None = None


def training_batches(setup: TrainingSetup) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batch stream that resumes mid-epoch (skipping consumed batches of map-style data)."""
    dataloader = setup.dataloader
    epoch = setup.initial_global_step // setup.steps_per_epoch
    skip = (setup.initial_global_step % setup.steps_per_epoch) * setup.args.gradient_accumulation_steps
    while True:
        dataset = getattr(dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = dataloader
        if skip and not isinstance(dataset, torch.utils.data.IterableDataset):
            loader = setup.accelerator.skip_first_batches(dataloader, skip)
        skip = 0
        yield from loader
        epoch += 1


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B,3,H,W) in [0,1] -> PIL images."""
    array = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]


def inpainting_rows(
    pipe: Any,
    validation: dict[str, torch.Tensor],
    seed: int,
    num_inference_steps: int | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> list[list[Image.Image]]:
    """One grid row per validation sample: masked input | the pipeline's result | original.

    Each sample gets its own seeded generator, so grids of one run are comparable across steps;
    with a `dtype` other than float32 the pipeline runs under autocast (frozen parts in mixed precision).
    """
    rows = []
    for index, (pixels, mask) in enumerate(zip(validation["pixel_values"], validation["mask"])):
        image, mask_image = to_pil(pixels[None])[0], to_pil(mask[None].repeat(1, 3, 1, 1))[0].convert("L")
        generator = torch.Generator(device="cpu").manual_seed(seed + index)
        with torch.no_grad(), torch.autocast(device.type, enabled=dtype != torch.float32, dtype=dtype):
            output = pipe(image, mask_image, num_inference_steps=num_inference_steps, generator=generator).images[0]
        rows.append([to_pil((pixels * (1 - mask))[None])[0], output, image])
    return rows


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
    grid = make_image_grid(images=cells, rows=len(rows), cols=len(rows[0]))
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


def run_training(
    setup: TrainingSetup,
    train_step: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
    validate: Callable[[int], list[list[Image.Image]]] | None = None,
) -> tuple[TrainingResult, Path | None]:
    """The shared loop: accumulation, progress bar, tracker logs, checkpoints, validation grids.

    `train_step(batch, global_step)` does forward, `setup.step(loss)` and returns scalars to log
    (the key "loss" is recorded per optimizer step). Returns the result and the last validation grid.
    """
    from tqdm.auto import tqdm

    args, accelerator, model = setup.args, setup.accelerator, setup.model
    result = TrainingResult(
        initial_global_step=setup.initial_global_step,
        global_step=setup.initial_global_step,
        output_dir=args.output_dir,
    )
    progress = tqdm(
        range(setup.max_train_steps),
        initial=setup.initial_global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    last_grid: Path | None = None
    global_step, pending = setup.initial_global_step, []
    if global_step >= setup.max_train_steps:
        return result, last_grid
    for batch in training_batches(setup):
        model.train()
        with accelerator.accumulate(model):
            logs = train_step(batch, global_step)
        pending.append(accelerator.reduce(logs["loss"].detach().float(), "mean").item())
        # files skipped to make the batch, over all processes, in one reduce
        skipped = torch.stack([torch.as_tensor(batch.get(k, 0)) for k in ("num_bad_images", "num_bad_masks")])
        bad_images, bad_masks = accelerator.reduce(skipped.to(accelerator.device), "sum").tolist()
        result.num_bad_images += int(bad_images)
        result.num_bad_masks += int(bad_masks)
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        result.losses.append(float(np.mean(pending)))
        pending = []
        progress.update(1)
        scalars = {k: float(v.detach().float().mean()) if torch.is_tensor(v) else float(v) for k, v in logs.items()}
        scalars.update(
            loss=result.losses[-1], num_bad_images=result.num_bad_images, num_bad_masks=result.num_bad_masks
        )
        progress.set_postfix(loss=scalars["loss"])
        accelerator.log(scalars, step=global_step)
        if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
            save_checkpoint(args, accelerator, global_step)
        if validate is not None and args.validation_steps and global_step % args.validation_steps == 0:
            last_grid = log_validation(accelerator, args, validate(global_step), global_step) or last_grid
        if global_step >= setup.max_train_steps:
            break
    progress.close()
    result.global_step = global_step
    if validate is not None and args.validation_steps and global_step % args.validation_steps:  # grid for the card
        last_grid = log_validation(accelerator, args, validate(global_step), global_step) or last_grid
    return result, last_grid


def finish(
    setup: TrainingSetup,
    result: TrainingResult,
    components: dict[str, torch.nn.Module],
    make_pipeline: Callable[[], Any] | None,
    card: CardText,
    sample_grid: Path | None,
) -> TrainingResult:
    """Write the final folder (main process only), its model card, an optional pipeline folder, and push.

    `components` maps a subfolder of --output_dir ("" = the folder itself) to a trained, prepared model.
    `make_pipeline()` (main process, after the components are saved) returns a complete pipeline holding the
    trained component(s); it is saved in float32 to `<output_dir>/pipeline`. `card` is the model cards' text.
    --push_to_hub uploads the light repo of an ASUKA pipeline (`<output_dir>/light`, see `light_repo_for_push`),
    else the pipeline (or final) folder.
    """
    args, accelerator = setup.args, setup.accelerator
    accelerator.wait_for_everyone()
    for subfolder, model in components.items():
        save_diffusers_model(accelerator, model, str(Path(args.output_dir) / subfolder))
    if accelerator.is_main_process:
        print(
            f"process {accelerator.process_index} of {accelerator.num_processes} writes the final folder "
            f"{args.output_dir}",
            flush=True,
        )
        pipeline = None
        if make_pipeline is not None:
            result.pipeline_dir = str(Path(args.output_dir) / "pipeline")
            pipeline = make_pipeline().to(torch.float32)
            pipeline.save_pretrained(result.pipeline_dir)
        folder = result.pipeline_dir or args.output_dir
        training_args = serialisable_args(args, max_train_steps=setup.max_train_steps)
        for card_folder in dict.fromkeys((folder, args.output_dir)):  # the pipeline's folder and the final one
            write_model_card(
                card_folder,
                training_args,
                card.title,
                card.description,
                card.component,
                sample_grid,
                card.backbone,
            )
        if args.push_to_hub:
            light = light_repo_for_push(
                args,
                pipeline,
                training_args,
                card.title,
                card.description,
                sample_grid,
                card.torch_dtype,
                card.backbone,
            )
            result.repo_id = push_folder_to_hub(args, light or folder)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
