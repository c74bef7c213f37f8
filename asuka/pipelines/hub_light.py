# Copyright 2026 The asuka authors. Apache-2.0.
"""The light Hub format: a repo with only ASUKA's components, their code, and a pointer to the backbone repo.

Layout (ASUKA-SD; ASUKA-FLUX has `transformer` for `unet`, `token_aligner`/`pooled_aligner` for `aligner`, and
may have `masked_image_encoder`):

    model_index.json          pipeline class (remote code), components, "_asuka_backbone": {"repo", "revision"}
    pipeline_asuka.py ...     the pipeline's code
    unet/  vae/  scheduler/   backbone_component.py + backbone.json: loaded from the backbone repo, pinned revision
    mae/  aligner/  decoder/  ASUKA's weights (safetensors), config and code
    README.md                 model card

It loads with one diffusers call, without `asuka` installed (see docs/hub.md for why a custom-pipeline repo and
not Modular Diffusers):

    pipe = DiffusionPipeline.from_pretrained(light_repo, trust_remote_code=True, torch_dtype=torch.float16)

and, with `asuka` installed, with `AsukaPipeline.from_pretrained(light_repo)` / `AsukaFluxPipeline.from_pretrained`.
The backbone's text encoders are never listed, so never fetched.

A backbone component is a pointer (`backbone_component.BackboneComponent`, see there).

This module ships to the Hub as remote code (bundled beside the pipeline by `hub_export`), so it imports only
torch, diffusers and its siblings (`huggingface_hub`, a diffusers dependency, lazily).
"""

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers
import torch

from .backbone_component import HUB_KWARGS, BackboneComponent, load_backbone_component, pointer_file, read_pointer
from .backbones import Licence, backbone_for_repo
from .hub_export import bundle_module, source_module, write_remote_code


#: model_index.json key that marks a light repo and names its backbone.
BACKBONE_KEY = "_asuka_backbone"
#: The model_index.json entry of a component that lives in the backbone repo.
BACKBONE_ENTRY = [BackboneComponent.__module__.rsplit(".", 1)[-1], BackboneComponent.__name__]

# ------------------------------------------------------------------------------------------------ writing


def write_light_repo(
    save_directory: str | os.PathLike,
    pipeline_class: type,
    components: Mapping[str, torch.nn.Module | None],
    backbone: Mapping[str, str],
    backbone_repo: str,
    backbone_revision: str | None = None,
    backbone_variants: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    model_card: str | None = None,
) -> str:
    """Write a light repo for `pipeline_class` into `save_directory`; returns the folder.

    Args:
        components: ASUKA's own components by name (saved with weights and code); `None` for an absent optional one.
        backbone: the backbone's components by name -> diffusers class name, e.g. `{"unet": "UNet2DConditionModel"}`;
            they are written as pointers into `backbone_repo` (a Hub id, or a folder for local use).
        backbone_revision: the backbone commit to pin (a commit hash keeps the repo reproducible).
        backbone_variants: weight variants the backbone offers (e.g. `("fp16",)`), so `variant=` reaches it.
        config: the pipeline's own config values (e.g. `{"working_resolution": 1024}`).
        model_card: README.md text.

    The pipeline's code is bundled at the root by `hub_export.bundle_module`, each ASUKA component's code goes into
    its folder.
    """
    os.makedirs(save_directory, exist_ok=True)
    overlap = set(components) & set(backbone)
    if overlap:
        raise ValueError(f"Components {sorted(overlap)} are listed both as ASUKA's and as the backbone's.")
    index: dict[str, Any] = {
        "_class_name": [None, pipeline_class.__name__],
        "_diffusers_version": diffusers.__version__,
        BACKBONE_KEY: {"repo": backbone_repo, "revision": backbone_revision},
        **dict(config or {}),
    }
    for name, class_name in backbone.items():
        folder = os.path.join(save_directory, name)
        source_module(BackboneComponent, folder)
        pointer = {"repo": backbone_repo, "subfolder": name, "revision": backbone_revision, "class_name": class_name}
        for variant in (None, *backbone_variants):
            with open(os.path.join(folder, pointer_file(variant)), "w", encoding="utf-8") as f:
                json.dump({**pointer, **({"variant": variant} if variant else {})}, f, indent=2)
        index[name] = BACKBONE_ENTRY
    for name, component in components.items():
        if component is None:
            index[name] = [None, None]
            continue
        folder = os.path.join(save_directory, name)
        component.save_pretrained(folder, safe_serialization=True)
        library = type(component).__module__.split(".")[0]
        if library == "diffusers":
            index[name] = ["diffusers", type(component).__name__]
        else:
            index[name] = [source_module(type(component), folder), type(component).__name__]
    index["_class_name"][0] = bundle_module(pipeline_class.__module__, save_directory)
    with open(os.path.join(save_directory, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    if model_card is not None:
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card)
    return str(save_directory)


def read_model_index(folder: str | os.PathLike) -> dict[str, Any]:
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        return json.load(f)


def is_light_repo(pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> bool:
    """Whether a folder or Hub repo is in the light format (its `model_index.json` names a backbone).

    Anything unreadable answers False, so the caller's usual loading reports the problem.
    """
    try:
        folder = resolve_repo(pretrained_model_name_or_path, ["model_index.json"], **kwargs)
        return BACKBONE_KEY in read_model_index(folder)
    except (OSError, ValueError):
        return False


def resolve_repo(
    pretrained_model_name_or_path: str | os.PathLike, allow_patterns: list[str] | None = None, **kwargs: Any
) -> str:
    """A local folder as is; a Hub repo's snapshot (`revision` and the Hub arguments in `kwargs`)."""
    if os.path.isdir(pretrained_model_name_or_path):
        return str(pretrained_model_name_or_path)
    from huggingface_hub import snapshot_download  # a dependency of diffusers

    hub_kwargs = {key: kwargs[key] for key in (*HUB_KWARGS, "revision") if kwargs.get(key) is not None}
    return snapshot_download(str(pretrained_model_name_or_path), allow_patterns=allow_patterns, **hub_kwargs)


def load_light_components(
    pretrained_model_name_or_path: str | os.PathLike,
    component_classes: Mapping[str, type],
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
    backbone_revision: str | None = None,
    skip: set[str] = frozenset(),
    **kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The components and config values of a light repo, with the installed classes of ASUKA's components.

    `component_classes` maps a class name of the repo's `model_index.json` (e.g. "AsukaMAE") to the class to load it
    with; diffusers classes need no entry. `revision` selects the light repo's revision, `backbone_revision`
    overrides the pinned backbone revision; `torch_dtype`, `variant` and the Hub arguments (`cache_dir`, `token`,
    `local_files_only`, ...) apply to both. Components named in `skip` are not loaded.
    """
    unknown = set(kwargs) - set(HUB_KWARGS)
    if unknown:
        raise ValueError(
            f"Unsupported argument(s) {sorted(unknown)} for a light repo; accepted: torch_dtype, variant, revision, "
            f"backbone_revision, {', '.join(HUB_KWARGS)} and the pipeline's components."
        )
    hub_kwargs = {key: value for key, value in kwargs.items() if value is not None}
    folder = resolve_repo(pretrained_model_name_or_path, revision=revision, **hub_kwargs)
    index = read_model_index(folder)
    components, config = {}, {}
    for name, entry in index.items():
        if name.startswith("_") or name in skip:
            continue
        if not isinstance(entry, list):
            config[name] = entry
        elif entry == BACKBONE_ENTRY:
            components[name] = load_backbone_component(
                read_pointer(os.path.join(folder, name)),
                revision=backbone_revision,
                torch_dtype=torch_dtype,
                variant=variant,
                **hub_kwargs,
            )
        elif entry[1] is None:
            components[name] = None
        else:
            library, class_name = entry
            model_class = (
                getattr(diffusers, class_name) if library == "diffusers" else component_classes.get(class_name)
            )
            if model_class is None:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: component `{name}` is a {class_name}; accepted: "
                    f"{sorted(component_classes)} or a diffusers class."
                )
            dtype_kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
            components[name] = model_class.from_pretrained(folder, subfolder=name, **dtype_kwargs)
    return components, config


def save_light_pipeline(
    pipeline: diffusers.DiffusionPipeline,
    save_directory: str | os.PathLike,
    backbone: str | None,
    backbone_revision: str | None = None,
    backbone_variants: Sequence[str] = (),
    model_card: str | None = None,
) -> str:
    """`write_light_repo` for a loaded pipeline: its non-backbone components and config values, a generic card.

    The backbone's components are those its class's `backbone_spec` names (`backbones.BackboneSpec.components`).

    This is `save_pretrained(..., light=True)` of the ASUKA pipelines.
    """
    if not backbone:
        raise ValueError("`light=True` needs `backbone`: the Hub id (or folder) of the backbone the repo points to.")
    components, backbone_classes = {}, {}
    for name, value in pipeline.components.items():
        if name in type(pipeline).backbone_spec.components:
            backbone_classes[name] = type(value).__name__
        else:
            components[name] = value
    config = {
        key: value
        for key, value in pipeline.config.items()
        if not key.startswith("_") and key not in pipeline.components
    }
    if model_card is None:
        name = type(pipeline).__name__
        model_card = light_model_card(
            repo_id=os.path.basename(os.path.abspath(save_directory)),
            pipeline_class_name=name,
            title=f"ASUKA ({name})",
            description=f"An ASUKA inpainting model for `{backbone}`.",
            backbone_repo=backbone,
            backbone_revision=backbone_revision,
            provenance=f"Saved with `{name}.save_pretrained(..., light=True)`.",
        )
    return write_light_repo(
        save_directory,
        type(pipeline),
        components,
        backbone_classes,
        backbone,
        backbone_revision=backbone_revision,
        backbone_variants=backbone_variants,
        config=config,
        model_card=model_card,
    )


# ------------------------------------------------------------------------------------------------ model card

PAPER = "https://arxiv.org/abs/2312.04831"
#: The paper's title and venue, and its BibTeX, as the authors give them (github.com/Yikai-Wang/asuka-misato).
PAPER_TITLE = (
    "Towards Enhanced Image Inpainting: Mitigating Unwanted Object Insertion and Preserving Color Consistency"
)
PAPER_VENUE = "CVPR 2025"
PAPER_BIBTEX = """@inproceedings{wang2025towards,
  title={Towards Enhanced Image Inpainting: Mitigating Unwanted Object Insertion and Preserving Color Consistency.},
  author={Wang, Yikai and Cao, Chenjie and Yu, Junqiu and Fan, Ke and Xue, Xiangyang and Fu, Yanwei},
  booktitle={Proceedings of the IEEE/CVF conference on computer vision and pattern recognition},
  year={2025}
}"""
#: The "Citation" section of every model card that names the paper.
PAPER_CITATION = f"## Citation\n\n```bibtex\n{PAPER_BIBTEX}\n```\n"


def light_model_card(
    repo_id: str,
    pipeline_class_name: str,
    title: str,
    description: str,
    backbone_repo: str,
    backbone_revision: str | None,
    provenance: str,
    torch_dtype: str = "float16",
    tags: Sequence[str] = (),
    licence: Licence | None = None,
) -> str:
    """README.md of a light repo: the backbone (and its licence), the paper, where the weights came from, usage.

    `provenance` is Markdown: the training arguments, or the release the weights were converted from.
    `torch_dtype` is the dtype the usage snippet loads in on a GPU (`float16` for SD, `bfloat16` for FLUX).
    `licence` is the backbone's where `backbone_repo` is not a registered backbone's repo (a local folder, a
    fine-tune); without either, the card points to the backbone repo's own licence.
    """
    spec = backbone_for_repo(backbone_repo)  # a registered backbone's licence, else the given one or the repo's own
    licence = spec.licence if spec is not None else licence
    licence_id, licence_name, licence_link = (
        (licence.id, licence.name, licence.link)
        if licence is not None
        else ("other", "the backbone's own licence", f"https://huggingface.co/{backbone_repo}")
    )
    pinned = f" at revision `{backbone_revision}`" if backbone_revision else ""
    yaml_tags = "\n".join(f"- {tag}" for tag in ("asuka", "image-inpainting", "diffusers:light", *tags))
    licence_yaml = f"license: {licence_id}\n" + (
        f"license_name: {licence_name.lower().replace(' ', '-').replace('.', '-')}\nlicense_link: {licence_link}\n"
        if licence_id == "other"
        else ""
    )
    return f"""---
library_name: diffusers
pipeline_tag: image-to-image
base_model: {backbone_repo}
{licence_yaml}tags:
{yaml_tags}
---

# {title}

{description}

This repo holds only what ASUKA ([*{PAPER_TITLE}*]({PAPER}), {PAPER_VENUE}) adds to a frozen backbone: the MAE,
the aligner(s) and the mask-conditioned decoder, their code, and a pointer to the backbone
[`{backbone_repo}`](https://huggingface.co/{backbone_repo}){pinned}. Its components (and nothing of its text
encoders) are fetched from there when you load this repo, so the backbone's licence, {licence_name}
({licence_link}), applies to its use: accept it on the backbone's page (and `hf auth login` if it is gated).

## Usage

```python
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import load_image

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.{torch_dtype} if device == "cuda" else torch.float32
pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True, torch_dtype=dtype).to(device)
image = load_image("image.png")
mask = load_image("mask.png")  # white = repaint
pipe(image, mask).images[0].save("inpainted.png")
```

With the `asuka` package installed, `asuka.{pipeline_class_name}.from_pretrained("{repo_id}")` loads the same repo
with the package's classes.

## Provenance

{provenance}

{PAPER_CITATION}"""


def installed_component_classes(pipeline_class: type) -> dict[str, type]:
    """The component classes of the package that defines `pipeline_class` (`asuka.models` for the installed
    pipelines), so a light repo loads into the package's own classes rather than into its bundled copies."""
    package = pipeline_class.__module__.split(".")[0]
    try:
        models = importlib.import_module(f"{package}.models")
    except ImportError:
        return {}
    return {name: value for name, value in vars(models).items() if isinstance(value, type)}


def load_light_pipeline(pipeline_class: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
    """`pipeline_class` from a light repo (see `load_light_components`); components in `kwargs` are used as given."""
    passed = {
        name: kwargs.pop(name)
        for name in list(kwargs)
        if name in pipeline_class._get_signature_keys(pipeline_class)[0]
    }
    components, config = load_light_components(
        pretrained_model_name_or_path, installed_component_classes(pipeline_class), skip=set(passed), **kwargs
    )
    return pipeline_class(**{**config, **components, **passed})


class LightRepoMixin:
    """The Hub formats of an ASUKA pipeline (docs/hub.md) in its `from_pretrained` and `save_pretrained`: the full
    folder, the full folder with code (`hub_format=True`) and the light repo (`light=True`). List it before
    `DiffusionPipeline` in the bases, which handles everything else (through `super()`)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """`DiffusionPipeline.from_pretrained`, which also reads light repos (see `save_pretrained(light=True)`).

        For a light repo, `torch_dtype`, `variant` and the Hub arguments apply to the backbone too, `revision` is the
        light repo's, and `backbone_revision=` overrides the backbone revision it pins.
        """
        hub_kwargs = {key: kwargs.get(key) for key in (*HUB_KWARGS, "revision")}
        if is_light_repo(pretrained_model_name_or_path, **hub_kwargs):
            return load_light_pipeline(cls, pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        hub_format: bool = False,
        light: bool = False,
        backbone: str | None = None,
        backbone_revision: str | None = None,
        backbone_variants: tuple[str, ...] = (),
        model_card: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Save every component (`DiffusionPipeline.save_pretrained` and its `kwargs`), with `hub_format=True` also
        the code, or with `light=True` a light repo.

        A hub-format folder loads without `asuka` with `DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`: its `model_index.json` names `[file, Class]` for the pipeline and the ASUKA
        components, and the files sit beside the weights (`hub_export.write_remote_code`).

        A light repo has only ASUKA's components (MAE, aligners, decoder) and their code; the backbone's components
        become pointers to `backbone` (its Hub id) at `backbone_revision` (pin a commit), and `backbone_variants`
        lists the weight variants it offers (e.g. `("fp16",)`). The folder loads with the same
        `DiffusionPipeline.from_pretrained` call. `model_card` is its README.md (default: a generic card, see
        `light_model_card`).
        """
        light_arguments = {
            "backbone": backbone,
            "backbone_revision": backbone_revision,
            "backbone_variants": backbone_variants,
            "model_card": model_card,
        }
        if hub_format and light:
            raise ValueError(
                "`hub_format=True` and `light=True` name two formats; pass one of them (a light repo always carries "
                "its code)."
            )
        if light:
            if kwargs:
                raise ValueError(
                    f"Unsupported argument(s) {sorted(kwargs)} with `light=True`; accepted: {sorted(light_arguments)}."
                )
            save_light_pipeline(self, save_directory, **light_arguments)
            return
        given = sorted(name for name, value in light_arguments.items() if value)
        if given:
            raise ValueError(f"{given} apply to a light repo only; pass them with `light=True`, or leave them out.")
        if hub_format and kwargs.get("push_to_hub"):
            raise ValueError(
                "`push_to_hub=True` would upload the folder before `hub_format=True` adds its code; save without "
                "`push_to_hub`, then upload the folder (`huggingface_hub.upload_folder`)."
            )
        super().save_pretrained(save_directory, **kwargs)
        if hub_format:
            write_remote_code(self, save_directory)
