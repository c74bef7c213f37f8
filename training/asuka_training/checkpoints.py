"""Checkpoints: resumable `checkpoint-N` accelerate states whose models are stored in diffusers format."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch


if TYPE_CHECKING:  # accelerate is imported lazily, when a script starts
    from accelerate import Accelerator

logger = logging.getLogger("asuka.training")

CHECKPOINT_PREFIX = "checkpoint-"


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


def collective_save(accelerator: Accelerator) -> bool:
    """Whether saving needs every rank (sharded weights or optimizer state)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


class ComponentGroup(torch.nn.ModuleDict):
    """Diffusers models trained as one (one optimizer, one DDP wrapper, one gradient clip), stored as one subfolder
    each in checkpoints and the final folder. A subclass adds the `forward` that combines them."""

    def __init__(self, **components: torch.nn.Module):
        super().__init__(components)


def fresh_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A new model (or `ComponentGroup`) of `model`'s configs, with fresh weights: no wrappers, no shared storage."""
    if isinstance(model, ComponentGroup):
        return type(model)(**{name: fresh_copy(part) for name, part in model.items()})
    return type(model).from_config(model.config)


def save_pretrained_parts(model: torch.nn.Module, directory: str) -> None:
    """`save_pretrained` of a model into `directory`, of a `ComponentGroup` into one subfolder per part."""
    if isinstance(model, ComponentGroup):
        for name, part in model.items():
            save_pretrained_parts(part, os.path.join(directory, name))
    else:
        model.save_pretrained(directory)


def load_pretrained_into(target: torch.nn.Module, directory: str) -> None:
    """Load the config and weights saved by `save_pretrained_parts` into `target` (a model or a `ComponentGroup`)."""
    if isinstance(target, ComponentGroup):
        for name, part in target.items():
            load_pretrained_into(part, os.path.join(directory, name))
        return
    loaded = type(target).from_pretrained(directory)
    target.register_to_config(**loaded.config)
    target.load_state_dict(loaded.state_dict())
    del loaded


def save_diffusers_model(accelerator: Accelerator, model: torch.nn.Module, directory: str) -> None:
    """`save_pretrained` of a prepared model (or `ComponentGroup`). Under FSDP call it on all ranks: the full state
    dict is gathered."""
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type == DistributedType.FSDP:
        state = accelerator.get_state_dict(model)  # collective; complete only on the main process
        if accelerator.is_main_process:
            copy = fresh_copy(unwrapped)
            copy.load_state_dict(state)
            save_pretrained_parts(copy, directory)
    elif accelerator.is_main_process:
        save_pretrained_parts(unwrapped, directory)


def unwrapped_copy(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A plain float32 copy of a prepared model (no DDP or mixed-precision forward wrappers), for validation."""
    unwrapped = accelerator.unwrap_model(model)
    copy = fresh_copy(unwrapped)
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
            load_pretrained_into(accelerator.unwrap_model(model), os.path.join(input_dir, _name_of(model)))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


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
            f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: expected 'latest' or an existing "
            "checkpoint-N folder."
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
