"""Command-line flags shared by every training script, parsed and normalised in one place."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


# The names --lr_scheduler (diffusers' `get_scheduler`) and --report_to (accelerate's trackers) accept.
LR_SCHEDULES = ", ".join(
    ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
)
TRACKERS = ", ".join(("tensorboard", "wandb", "comet_ml", "all", "none"))


def build_parser(description: str) -> argparse.ArgumentParser:
    """The standard diffusers-example flags plus the data and mask flags every asuka script shares."""
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument  # one call per flag: their alike shapes are declarations, not shared logic
    # model and output
    add(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Hub id or local folder of the base pipeline / component (e.g. an AsukaPipeline or SD-inpainting "
        "folder).",
    )
    add("--revision", type=str, default=None, help="Revision of the pretrained model on the Hub.")
    add("--variant", type=str, default=None, help="Weight variant of the pretrained model, e.g. fp16.")
    add("--output_dir", type=str, default="asuka-model", help="Where checkpoints and the final model are written.")
    add("--logging_dir", type=str, default="logs", help="Tracker log folder, relative to --output_dir.")
    add("--seed", type=int, default=None, help="Seed for reproducible training (models, masks, augmentations).")
    add_data_arguments(parser)
    # optimisation
    add("--train_batch_size", type=int, default=4, help="Batch size per device.")
    add("--num_train_epochs", type=int, default=100, help="Upper bound on epochs; --max_train_steps wins when set.")
    add("--max_train_steps", type=int, default=None, help="Total optimisation steps (overrides --num_train_epochs).")
    add("--gradient_accumulation_steps", type=int, default=1, help="Steps to accumulate before an optimizer update.")
    add("--gradient_checkpointing", action="store_true", help="Trade compute for memory where the models support it.")
    add("--learning_rate", type=float, default=1e-4, help="Peak learning rate.")
    add("--scale_lr", action="store_true", help="Scale the learning rate by processes x batch size x accumulation.")
    add("--lr_scheduler", type=str, default="constant", help=f"One of diffusers' schedules: {LR_SCHEDULES}.")
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
    add("--report_to", type=str, default="none", help=f"Trackers: {TRACKERS} (validation grids are always PNG files).")
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
    add(
        "--push_full_pipeline",
        action="store_true",
        help="Push the complete pipeline folder (with another copy of the frozen backbone) instead of the light repo "
        "of ASUKA's components and a pointer to the backbone (docs/hub.md).",
    )
    add(
        "--hub_backbone_id",
        type=str,
        default=None,
        help="Backbone repo the light repo points to (default: --pretrained_model_name_or_path).",
    )
    add(
        "--hub_backbone_revision",
        type=str,
        default=None,
        help="Backbone commit the light repo pins (default: --revision).",
    )
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data and mask flags: what a training sample is made of (`data.build_dataset` reads them)."""
    add = parser.add_argument
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
        help="Folder of object masks (training/prepare_object_masks.py). Without it, the object share falls back "
        "to the other families.",
    )
    add(
        "--mask_dir",
        type=str,
        default=None,
        help="Folder of ready-made training masks (e.g. the masks released with MISATO; white = hole, grey > 127, "
        "resized with nearest to cover --resolution and centre-cropped, as images are), used instead of or mixed "
        "with the generated masks.",
    )
    add(
        "--mask_dir_prob",
        type=float,
        default=None,
        help="Chance that a sample takes a --mask_dir mask rather than a generated one (default 1 with --mask_dir).",
    )
    add("--hole_min", type=float, default=0.05, help="Smallest hole ratio of training masks.")
    add("--hole_max", type=float, default=0.7, help="Largest hole ratio of training masks.")


def add_start_from(parser: argparse.ArgumentParser, component: str, help: str) -> None:
    """`--<component>_model_name_or_path`: a folder or Hub id to start the trained component from (default None:
    the script's own rule, given in `help`)."""
    parser.add_argument(f"--{component}_model_name_or_path", type=str, default=None, help=help)


def check_data_arguments(args: argparse.Namespace, precomputed: str | None = None) -> None:
    """Validate (and normalise) the flags of `add_data_arguments`; `ValueError` for inconsistent ones.

    `precomputed`: a folder of precomputed samples (`train_aligner.py --precomputed`), which replaces the data source.
    """
    if precomputed is not None:
        if args.train_data_dir is not None or args.dataset_name is not None:
            raise ValueError(
                f"--precomputed {precomputed!r} holds the training samples: drop --train_data_dir/--dataset_name "
                "(the data and mask flags were those given to training/prepare_aligner_inputs.py)."
            )
    elif (args.train_data_dir is None) == (args.dataset_name is None):
        raise ValueError(
            "Give exactly one data source: --train_data_dir (an image folder) or --dataset_name (HF datasets)."
        )
    if args.streaming and args.dataset_name is None:
        raise ValueError("--streaming applies to --dataset_name only.")
    if args.train_data_dir is not None and not Path(args.train_data_dir).is_dir():
        raise ValueError(f"--train_data_dir {args.train_data_dir!r} is not a folder.")
    if not 0.0 <= args.hole_min <= args.hole_max <= 1.0:
        raise ValueError(
            f"--hole_min/--hole_max must satisfy 0 <= min <= max <= 1, got {args.hole_min}, {args.hole_max}."
        )
    if args.mask_dir is None and args.mask_dir_prob is not None:
        raise ValueError("--mask_dir_prob applies to --mask_dir only: give the mask folder too, or drop it.")
    if args.mask_dir is not None and not Path(args.mask_dir).is_dir():
        raise ValueError(f"--mask_dir {args.mask_dir!r} is not a folder.")
    if args.mask_dir is not None and args.mask_dir_prob is None:
        args.mask_dir_prob = 1.0
    if args.mask_dir_prob is not None and not 0.0 <= args.mask_dir_prob <= 1.0:
        raise ValueError(f"--mask_dir_prob must be in [0, 1] (a probability), got {args.mask_dir_prob}.")
    if args.resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}.")


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    resolve: Callable[[argparse.Namespace], dict[str, Any]] | None = None,
) -> argparse.Namespace:
    """Parse, validate and normalise the flags, once; raises ValueError (not a traceback) for inconsistent flags.

    `resolve(args)` is a script's own check: it raises ValueError for flags the script rejects and returns
    the values of flags whose default depends on other flags (e.g. Adam's beta1 per network). This is the
    only place where the namespace is written to; everything derived later lives in `TrainingSetup`.
    """
    args = parser.parse_args(argv)
    check_data_arguments(args, precomputed=getattr(args, "precomputed", None))
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming datasets have no length: set --max_train_steps.")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError("--checkpoints_total_limit must be >= 1.")
    if args.report_to == "wandb" and args.hub_token is not None:
        raise ValueError(
            "Do not combine --report_to=wandb with --hub_token (the token would be logged); use `hf auth login`."
        )
    for name, value in (resolve(args) if resolve is not None else {}).items():
        setattr(args, name, value)
    return args


def serialisable_args(args: argparse.Namespace, **resolved: Any) -> dict[str, Any]:
    """Training arguments without secrets (plus values resolved during setup), for the card and training_args.json."""
    return {k: v for k, v in sorted({**vars(args), **resolved}.items()) if k not in {"hub_token"}}
