"""Everything between parsing the flags and the first step: accelerator, optimizer, data, `prepare`, resume."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .args import serialisable_args
from .checkpoints import register_diffusers_hooks, resume_if_requested
from .data import build_dataset, make_dataloader, validation_batch


if TYPE_CHECKING:  # accelerate (and asuka's pipelines) are imported lazily, when a script starts
    from accelerate import Accelerator

    from asuka.pipelines.backbones import BackboneSpec

logger = logging.getLogger("asuka.training")


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


def freeze(accelerator: Accelerator, *models: torch.nn.Module | None) -> torch.dtype:
    """No gradients, eval mode, and the mixed-precision dtype on the device for frozen models; returns that dtype."""
    weight_dtype = weight_dtype_for(accelerator)
    for model in models:
        if model is not None:
            model.requires_grad_(False)
            model.eval()
            model.to(accelerator.device, dtype=weight_dtype)
    return weight_dtype


def shards_frozen_models(accelerator: Accelerator) -> bool:
    """Whether `prepare_frozen` shards frozen models: under FSDP only, where each process then holds a shard of them
    and every process must take part in each of their forward calls (validation included)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def prepare_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The frozen (`freeze`d) `model` to call in training: under FSDP prepared by accelerate, so it is sharded as the
    config's wrap policy says (no optimizer; gradients still flow through it to its inputs), and kept out of the
    checkpoints, as its weights never change; elsewhere `model` itself. Save the unsharded `model` (under FSDP its
    parameters are shards once it is prepared: see `frozen_denoiser_for_saving`)."""
    if not shards_frozen_models(accelerator):
        return model
    if accelerator.is_fsdp2:  # accelerate's FSDP2 prepares a model only together with its optimizer
        raise ValueError(
            "The frozen denoiser is sharded with FSDP version 1 only; set `fsdp_version: 1` in the accelerate config "
            "(as training/configs/fsdp.yaml and fsdp_flux.yaml do)."
        )
    wrapped = accelerator.prepare(model)
    # save_state and load_state write and read every prepared model (and pair optimizers with models by position)
    accelerator._models.remove(wrapped)
    return wrapped.eval()


def frozen_denoiser_for_saving(args: argparse.Namespace, accelerator: Accelerator, backbone: Backbone) -> Any:
    """The backbone's denoiser with all its weights, for a saved pipeline: the loaded one, or under FSDP (where
    `prepare_frozen` left each process a shard of it) the same weights loaded again, as training leaves them."""
    if not shards_frozen_models(accelerator):
        return backbone.denoiser
    return load_backbone(args.pretrained_model_name_or_path, args.revision, args.variant).denoiser


def scaled_learning_rate(args: argparse.Namespace, accelerator: Accelerator) -> float:
    """--learning_rate, times processes x batch size x accumulation with --scale_lr (like the diffusers examples)."""
    if not args.scale_lr:
        return args.learning_rate
    return args.learning_rate * args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes


def make_optimizer(
    args: argparse.Namespace, params: Iterable[torch.nn.Parameter], accelerator: Accelerator
) -> torch.optim.Optimizer:
    """AdamW from the --adam_* flags at `scaled_learning_rate`."""
    return torch.optim.AdamW(
        params,
        lr=scaled_learning_rate(args, accelerator),
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def make_lr_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, accelerator: Accelerator, max_train_steps: int
) -> Any:
    """diffusers' `get_scheduler`, with step counts in per-process optimizer steps like the examples."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name=args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )


def load_scheduler(path: str, subfolder: str = "scheduler", revision: str | None = None) -> Any:
    """The scheduler class named in `<path>/<subfolder>/scheduler_config.json` (any diffusers scheduler)."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(path, subfolder=subfolder, revision=revision)
    cls = getattr(diffusers, config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
    return cls.from_config(config)


@dataclass
class Backbone:
    """The frozen backbone a training script trains against: its spec, VAE, denoiser and scheduler, and the `folder`
    where the pipeline's own (ASUKA) components are, if it has any: the path given, or a light repo's local copy."""

    spec: BackboneSpec
    vae: torch.nn.Module
    denoiser: torch.nn.Module
    scheduler: Any
    folder: str


def load_backbone(
    path: str, revision: str | None = None, variant: str | None = None, with_denoiser: bool = True
) -> Backbone:
    """The backbone of the pipeline folder (or Hub repo) `path`, as its `model_index.json`'s pipeline class names it
    (an ASUKA pipeline or the plain diffusers one): the spec says which denoiser to load, how training calls it and
    its objective. A light repo's backbone components are loaded from the backbone repo it points to.
    `with_denoiser=False` leaves the denoiser out (`None`: what encoding the training inputs needs).
    `ValueError` for a backbone whose spec cannot be trained on yet."""
    import diffusers

    from asuka.pipelines.backbone_component import load_backbone_component, read_pointer
    from asuka.pipelines.backbones import backbone_for_pipeline
    from asuka.pipelines.hub_light import BACKBONE_KEY, resolve_repo

    try:
        index = diffusers.DiffusionPipeline.load_config(path, revision=revision)
    except OSError as error:
        raise ValueError(f"{path}: no readable model_index.json; pass a pipeline folder or Hub repo.") from error
    class_name = index.get("_class_name")
    spec = backbone_for_pipeline(class_name[-1] if isinstance(class_name, list) else class_name)
    spec.check_trainable()
    if BACKBONE_KEY in index:  # a light repo: ASUKA's components here, pointers to the backbone's
        folder = resolve_repo(path, revision=revision)
        names = ("vae", "scheduler", spec.denoiser)[: 3 if with_denoiser else 2]
        vae, scheduler, *denoiser = (
            load_backbone_component(read_pointer(Path(folder, name)), variant=variant) for name in names
        )
        return Backbone(spec, vae, denoiser[0] if denoiser else None, scheduler, folder)
    vae = getattr(diffusers, spec.vae_class).from_pretrained(path, subfolder="vae", revision=revision, variant=variant)
    denoiser = None
    if with_denoiser:
        denoiser = getattr(diffusers, spec.denoiser_class).from_pretrained(
            path, subfolder=spec.denoiser, revision=revision, variant=variant
        )
    return Backbone(spec, vae, denoiser, load_scheduler(path, revision=revision), str(path))


def updates_per_epoch(args: argparse.Namespace, dataloader: torch.utils.data.DataLoader) -> int | None:
    """Optimizer steps in one pass over `dataloader`; None for iterable (streaming) data, which has no length."""
    try:
        return max(1, math.ceil(len(dataloader) / args.gradient_accumulation_steps))
    except TypeError:
        return None


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


@dataclass
class TrainingSetup:
    """What `prepare` hands a script: the prepared objects and the step counts resolved from the flags."""

    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module  # the prepared main trainable, stepped by `optimizer` and `lr_scheduler`
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    dataset: torch.utils.data.Dataset
    dataloader: Any
    validation: dict[str, torch.Tensor]  # a fixed batch for the validation grids
    max_train_steps: int
    steps_per_epoch: int
    initial_global_step: int
    extras: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = field(default_factory=dict)

    def step(self, loss: torch.Tensor) -> None:
        """`optimizer_step` of the main model: backward, clip to --max_grad_norm, optimizer and lr steps."""
        params = list(self.model.parameters())
        optimizer_step(self.accelerator, loss, params, self.optimizer, self.lr_scheduler, self.args.max_grad_norm)

    def last_lr(self) -> torch.Tensor:
        """The main optimizer's current learning rate, for the logs."""
        return torch.tensor(self.lr_scheduler.get_last_lr()[0])


def prepare(
    args: argparse.Namespace,
    accelerator: Accelerator,
    trainables: dict[str, torch.nn.Module],
    *,
    tracker_name: str,
    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None,
    dataset: torch.utils.data.Dataset | None = None,
    validation: dict[str, torch.Tensor] | None = None,
    **dataset_options: Any,
) -> TrainingSetup:
    """The setup every script shares, after its models are loaded and frozen.

    `trainables` maps a checkpoint subfolder to an (unprepared) model; the first is the main model,
    trained by AdamW from the --adam_* flags with the --lr_scheduler schedule. Any other trainable
    brings its own optimizer in `extra_optimizers` (same key) and is prepared after the main one.
    Registers the diffusers-format checkpoint hooks, builds the data (`dataset_options` go to
    `build_dataset`; or `dataset` and its fixed `validation` batch, e.g. precomputed samples, are given), starts
    the trackers and resumes from --resume_from_checkpoint.
    """
    register_diffusers_hooks(accelerator, trainables)
    model = next(iter(trainables.values()))
    optimizer = make_optimizer(args, model.parameters(), accelerator)
    if dataset is None:
        dataset = build_dataset(args, **dataset_options)
    if validation is None:
        validation = validation_batch(dataset, args.num_validation_images)
    dataloader = make_dataloader(args, dataset)
    # like the diffusers examples: --num_train_epochs counts epochs of the unsharded loader
    max_train_steps = args.max_train_steps
    if max_train_steps is None:  # parse_args requires --max_train_steps for streaming data
        max_train_steps = args.num_train_epochs * updates_per_epoch(args, dataloader)
    lr_scheduler = make_lr_scheduler(args, optimizer, accelerator, max_train_steps)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    extras = {
        key: tuple(accelerator.prepare(trainables[key], extra_optimizer))
        for key, extra_optimizer in (extra_optimizers or {}).items()
    }
    if accelerator.is_main_process:
        accelerator.init_trackers(
            args.tracker_project_name or tracker_name,
            config={k: str(v) for k, v in serialisable_args(args, max_train_steps=max_train_steps).items()},
        )
    initial_global_step = resume_if_requested(args, accelerator)
    return TrainingSetup(
        args=args,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        dataset=dataset,
        dataloader=dataloader,
        validation=validation,
        max_train_steps=max_train_steps,
        steps_per_epoch=updates_per_epoch(args, dataloader) or max_train_steps,  # streaming: the run is one epoch
        initial_global_step=initial_global_step,
        extras=extras,
    )
