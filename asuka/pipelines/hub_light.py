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

This module ships to the Hub as remote code (bundled beside the pipeline by `hub_export`), so it holds only what
a loaded pipeline runs: reading a light repo and `LightRepoMixin`. It imports only torch, diffusers and its siblings
(`huggingface_hub`, a diffusers dependency, lazily). Writing a light repo (`hub_export.write_light_repo`) and its
model card (`model_card.light_model_card`) stay in the installed package.
"""

import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import diffusers
import torch
from diffusers import PipelineQuantizationConfig

from .backbone_component import HUB_KWARGS, BackboneComponent, load_backbone_component, read_pointer


# model_index.json key that marks a light repo and names its backbone.
BACKBONE_KEY = "_asuka_backbone"
# The model_index.json entry of a component that lives in the backbone repo.
BACKBONE_ENTRY = [BackboneComponent.__module__.rsplit(".", 1)[-1], BackboneComponent.__name__]
# The installed module that writes both Hub formats; it is not shipped, so it is imported when a save needs it.
EXPORTER = "asuka.pipelines.hub_export"


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


def component_loading_kwargs(
    name: str,
    model_class: type,
    torch_dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
    quantization_config: Any = None,
) -> dict[str, Any]:
    """The `torch_dtype` and `quantization_config` arguments of component `name`'s `from_pretrained`, as
    `DiffusionPipeline.from_pretrained` gives them: a dtype dict is read by name (else its `"default"`), and a
    `PipelineQuantizationConfig` gives the component its own backend config (or none, where it is not listed)."""
    kwargs: dict[str, Any] = {}
    if isinstance(torch_dtype, Mapping):
        torch_dtype = torch_dtype.get(name, torch_dtype.get("default", torch.float32))
    if torch_dtype is not None and issubclass(model_class, torch.nn.Module):
        kwargs["torch_dtype"] = torch_dtype
    if quantization_config is not None and issubclass(model_class, torch.nn.Module):
        if not isinstance(quantization_config, PipelineQuantizationConfig):
            raise ValueError(
                f"`quantization_config` is a {type(quantization_config).__name__}; accepted: a diffusers "
                "`PipelineQuantizationConfig` (a component's own config goes into its `quant_mapping`)."
            )
        config = quantization_config._resolve_quant_config(
            is_diffusers=issubclass(model_class, diffusers.ModelMixin), module_name=name
        )
        if config is not None:
            kwargs["quantization_config"] = config
    return kwargs


def load_light_components(
    pretrained_model_name_or_path: str | os.PathLike,
    component_classes: Mapping[str, type],
    torch_dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
    variant: str | None = None,
    revision: str | None = None,
    backbone_revision: str | None = None,
    quantization_config: PipelineQuantizationConfig | None = None,
    skip: set[str] = frozenset(),
    **kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The components and config values of a light repo, with the installed classes of ASUKA's components.

    `component_classes` maps a class name of the repo's `model_index.json` (e.g. "AsukaMAE") to the class to load it
    with; diffusers classes need no entry. `revision` selects the light repo's revision, `backbone_revision`
    overrides the pinned backbone revision; `torch_dtype` (a dtype, or a dict by component name with a `"default"`),
    `quantization_config` (a `PipelineQuantizationConfig`), `variant` and the Hub arguments (`cache_dir`, `token`,
    `local_files_only`, ...) apply to both. Components named in `skip` are not loaded.
    """
    unknown = set(kwargs) - set(HUB_KWARGS)
    if unknown:
        raise ValueError(
            f"Unsupported argument(s) {sorted(unknown)} for a light repo; accepted: torch_dtype, variant, revision, "
            f"backbone_revision, quantization_config, {', '.join(HUB_KWARGS)} and the pipeline's components."
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
            pointer = read_pointer(os.path.join(folder, name))
            components[name] = load_backbone_component(
                pointer,
                revision=backbone_revision,
                variant=variant,
                **component_loading_kwargs(
                    name,
                    getattr(diffusers, pointer["class_name"], BackboneComponent),
                    torch_dtype,
                    quantization_config,
                ),
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
            components[name] = model_class.from_pretrained(
                folder, subfolder=name, **component_loading_kwargs(name, model_class, torch_dtype, quantization_config)
            )
    return components, config


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
        `model_card.light_model_card`).

        Both formats are written by the `asuka` package (`hub_export`), which a pipeline loaded as remote code
        needs installed for them.
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
            exporter().save_light_pipeline(self, save_directory, **light_arguments)
            return
        given = sorted(name for name, value in light_arguments.items() if value)
        if given:
            raise ValueError(f"{given} apply to a light repo only; pass them with `light=True`, or leave them out.")
        if hub_format and kwargs.get("push_to_hub"):
            raise ValueError(
                "`push_to_hub=True` would upload the folder before `hub_format=True` adds its code; save without "
                "`push_to_hub`, then upload the folder (`huggingface_hub.upload_folder`)."
            )
        write_code = exporter().write_remote_code if hub_format else None
        super().save_pretrained(save_directory, **kwargs)
        if write_code is not None:
            write_code(self, save_directory)


def exporter():
    """The installed `hub_export` module; a clear error where only the shipped code is there."""
    try:
        return importlib.import_module(EXPORTER)
    except ImportError as error:
        raise ImportError(
            "Saving with `hub_format=True` or `light=True` writes code with the `asuka` package; install it "
            "(`pip install -e .` in its repository) or save without these arguments."
        ) from error
