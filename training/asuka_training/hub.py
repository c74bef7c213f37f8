"""The Hub side of a finished run: the model card and the upload (the one place that talks to the Hub)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import CHECKPOINT_PREFIX


if TYPE_CHECKING:
    from asuka.pipelines.backbones import BackboneSpec


@dataclass(frozen=True)
class CardText:
    """What a training script's model card says: its `title`, a one-paragraph `description`, the `component`
    tag (e.g. "asuka-aligner"), the dtype its usage snippet loads a light repo in on a GPU, and the `backbone`
    trained against (the card names it and its licence)."""

    title: str
    description: str
    component: str
    torch_dtype: str = "float16"
    backbone: BackboneSpec | None = None


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
    backbone: BackboneSpec | None = None,
) -> Path:
    """README.md (Hub model card) with metadata, the training arguments, the base model and a sample grid.

    `training_args` is `serialisable_args(...)`: no secrets. With `backbone`, the card names the backbone and
    carries its licence (the weights were trained against it); else apache-2.0, the toolkit's.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from asuka.pipelines.model_card import PAPER, PAPER_CITATION, PAPER_VENUE

    folder_path = Path(folder)
    arguments, samples = _training_files(folder_path, training_args, sample_image)
    base_model = training_args["pretrained_model_name_or_path"]
    licence, backbone_text = {"license": "apache-2.0"}, ""
    if backbone is not None:
        from asuka.pipelines.backbones import backbone_for_repo

        known = backbone_for_repo(base_model)  # the base model's own licence where it is a registered backbone
        terms = (known or backbone).licence
        licence = {"license": terms.id}
        if terms.id == "other":
            licence.update(license_name=terms.name, license_link=terms.link)
        release = "" if known else f" (that of `{backbone.repo}`, the release; a fine-tune may add its own terms)"
        backbone_text = (
            f"Backbone: {backbone.name}, frozen; its licence, [{terms.name}]({terms.link}){release}, applies to "
            "these weights and their use. "
        )
    card_data = ModelCardData(
        **licence,
        library_name="diffusers",
        base_model=base_model,
        tags=["asuka", "image-inpainting", "diffusers-training", component],
        pipeline_tag="image-to-image",
    )
    content = (
        f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n"
        f"Base model: `{base_model}`. {backbone_text}Trained with the `asuka` toolkit "
        f"(`training/`), mask mixture of ASUKA ([paper]({PAPER}), {PAPER_VENUE}) Sec. 3.1.\n{samples}\n"
        f"## Training arguments\n\n```json\n{arguments}\n```\n\n{PAPER_CITATION}"
    )
    path = folder_path / "README.md"
    ModelCard(content).save(str(path))
    return path


def light_repo_backbone(args: argparse.Namespace) -> dict[str, Any]:
    """The `_asuka_backbone` pointer (`repo`, `revision`) of a light repo given as --pretrained_model_name_or_path
    (its backbone is the one a new light repo points to); {} for any other folder."""
    from asuka.pipelines.hub_light import BACKBONE_KEY, is_light_repo, read_model_index, resolve_repo

    path = args.pretrained_model_name_or_path
    if not is_light_repo(path, revision=args.revision):
        return {}
    return read_model_index(resolve_repo(path, ["model_index.json"], revision=args.revision))[BACKBONE_KEY]


def light_repo_for_push(
    args: argparse.Namespace,
    pipeline: Any,
    training_args: dict[str, Any],
    title: str,
    description: str,
    sample_image: Path | None = None,
    torch_dtype: str = "float16",
    backbone_spec: BackboneSpec | None = None,
) -> str | None:
    """Write `<output_dir>/light`: the light repo of an ASUKA `pipeline` (its trained components and a pointer to
    the backbone, docs/hub.md) with its model card; returns the folder, or None for a pipeline without that format
    (the whole folder is pushed then) or with --push_full_pipeline. `torch_dtype` is the card's GPU dtype,
    `backbone_spec` the backbone trained against (its licence, where the pointer is no registered backbone repo)."""
    from asuka.pipelines.hub_light import LightRepoMixin
    from asuka.pipelines.model_card import light_model_card

    if args.push_full_pipeline or not isinstance(pipeline, LightRepoMixin):  # every backbone's ASUKA pipeline
        return None
    folder = Path(args.output_dir) / "light"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    arguments, samples = _training_files(folder, training_args, sample_image)
    pointer = light_repo_backbone(args)  # training from a light repo: point to its backbone, not to it
    backbone = args.hub_backbone_id or pointer.get("repo") or args.pretrained_model_name_or_path
    revision = args.hub_backbone_revision or (pointer.get("revision") if pointer else args.revision)
    provenance = (
        f"Trained with the `asuka` toolkit (`training/`) from `{args.pretrained_model_name_or_path}`, with the mask "
        f"mixture of ASUKA Sec. 3.1.\n\n## Training arguments\n\n```json\n{arguments}\n```"
    )
    card = light_model_card(
        _repo_id(args),
        type(pipeline).__name__,
        title,
        description,
        backbone,
        revision,
        provenance,
        torch_dtype,
        licence=backbone_spec.licence if backbone_spec is not None else None,
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
