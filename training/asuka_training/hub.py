"""The Hub side of a finished run: the model card and the upload (the one place that talks to the Hub)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import CHECKPOINT_PREFIX


@dataclass(frozen=True)
class CardText:
    """What a training script's model card says: its `title`, a one-paragraph `description` and the `component`
    tag (e.g. "asuka-aligner")."""

    title: str
    description: str
    component: str


def _repo_id(args: argparse.Namespace) -> str:
    """The repo a run pushes to: --hub_model_id, or the output folder's name."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def _training_files(folder: Path, training_args: dict[str, Any], sample_image: Path | None) -> tuple[str, str]:
    """Write `training_args.json` into `folder` and copy `sample_image` there as `sample_grid.png`; returns the
    arguments as JSON and the model card's samples section ("" when `folder` holds no grid)."""
    arguments = json.dumps(training_args, indent=2, default=str)
    (folder / "training_args.json").write_text(arguments + "\n", encoding="utf-8")
    if sample_image is not None and Path(sample_image).is_file():
        shutil.copyfile(sample_image, folder / "sample_grid.png")
    has_grid = (folder / "sample_grid.png").is_file()  # this run's grid, or the one of the run it resumed
    return arguments, "\n## Samples\n\n![samples](./sample_grid.png)\n" if has_grid else ""


def write_model_card(
    folder: str,
    training_args: dict[str, Any],
    title: str,
    description: str,
    component: str,
    sample_image: Path | None = None,
) -> Path:
    """README.md (Hub model card) with metadata, the training arguments, the base model and a sample grid.

    `training_args` is `serialisable_args(...)`: no secrets.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from asuka.pipelines.hub_light import PAPER, PAPER_CITATION, PAPER_VENUE

    folder_path = Path(folder)
    arguments, samples = _training_files(folder_path, training_args, sample_image)
    base_model = training_args["pretrained_model_name_or_path"]
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="diffusers",
        base_model=base_model,
        tags=["asuka", "image-inpainting", "diffusers-training", component],
        pipeline_tag="image-to-image",
    )
    content = (
        f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n"
        f"Base model: `{base_model}`. Trained with the `asuka` toolkit "
        f"(`training/`), mask mixture of ASUKA ([paper]({PAPER}), {PAPER_VENUE}) Sec. 3.1.\n{samples}\n"
        f"## Training arguments\n\n```json\n{arguments}\n```\n\n{PAPER_CITATION}"
    )
    path = folder_path / "README.md"
    ModelCard(content).save(str(path))
    return path


def _backbone_pointer(args: argparse.Namespace) -> tuple[str, str | None]:
    """The backbone repo and revision a pushed light repo points to: --hub_backbone_id at --hub_backbone_revision
    (default --revision); by default the run's --pretrained_model_name_or_path at --revision, or, when that is itself
    a light repo, the backbone it points to, at its pinned revision."""
    from asuka.pipelines.hub_light import BACKBONE_KEY, is_light_repo, read_model_index, resolve_repo

    source = args.pretrained_model_name_or_path
    if args.hub_backbone_id is None and is_light_repo(source, revision=args.revision):
        pinned = read_model_index(resolve_repo(source, ["model_index.json"], revision=args.revision))[BACKBONE_KEY]
        return pinned["repo"], args.hub_backbone_revision or pinned.get("revision")
    return args.hub_backbone_id or source, args.hub_backbone_revision or args.revision


def light_repo_for_push(
    args: argparse.Namespace,
    pipeline: Any,
    training_args: dict[str, Any],
    title: str,
    description: str,
    sample_image: Path | None = None,
) -> str | None:
    """Write `<output_dir>/light`: the light repo of an ASUKA `pipeline` (its trained components and a pointer to
    the backbone, docs/hub.md) with its model card; returns the folder, or None for a pipeline without that format
    (the whole folder is pushed then) or with --push_full_pipeline."""
    from asuka.pipelines.hub_light import LightRepoMixin, light_model_card

    if args.push_full_pipeline or not isinstance(pipeline, LightRepoMixin):  # every backbone's ASUKA pipeline
        return None
    folder = Path(args.output_dir) / "light"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    arguments, samples = _training_files(folder, training_args, sample_image)
    backbone, revision = _backbone_pointer(args)
    provenance = (
        f"Trained with the `asuka` toolkit (`training/`) from `{args.pretrained_model_name_or_path}`, with the mask "
        f"mixture of ASUKA Sec. 3.1.\n\n## Training arguments\n\n```json\n{arguments}\n```"
    )
    card = light_model_card(
        _repo_id(args), type(pipeline).__name__, title, description, backbone, revision, provenance
    )
    variants = (args.variant,) if args.variant else ()
    pipeline.save_pretrained(
        folder,
        light=True,
        backbone=backbone,
        backbone_revision=revision,
        backbone_variants=variants,
        model_card=card + samples,
    )
    return str(folder)


def push_folder_to_hub(args: argparse.Namespace, folder: str) -> str:
    """Create the repo (if needed) and upload `folder` without checkpoints or logs; returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.hub_token)
    repo_id = api.create_repo(
        repo_id=_repo_id(args), exist_ok=True, private=args.hub_private, repo_type="model"
    ).repo_id
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message="asuka training: final model",
        ignore_patterns=[f"{CHECKPOINT_PREFIX}*", ".partial-*", "logs/*", "validation/*"],
    )
    return repo_id
