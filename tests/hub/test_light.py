"""The light Hub format for ASUKA-SD and ASUKA-FLUX: only ASUKA's components + code + a pointer to the backbone.

The "Hub" is a Hugging Face cache that serves a tiny backbone repo (SD-1.5-inpainting with a tiny text encoder, or
FLUX.1-Fill with tiny CLIP and T5 text encoders) at one commit; the light repo is a local folder. Loading without
`asuka` runs in a subprocess where `import asuka` fails. The FLUX pipeline has every optional component, the
masked-image encoder (the release's, where it differs) included.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from asuka import AsukaFluxPipeline, AsukaPipeline
from asuka.methods.loading import load_pipeline
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, AsukaVAEEncoder
from asuka.pipelines.model_card import PAPER_BIBTEX, PAPER_TITLE, light_model_card
from asuka.testing import make_tiny_pipeline
from tests.support.hub import (
    BACKBONE_SHA,
    FLUX_BACKBONE,
    FLUX_BACKBONE_CLASSES,
    SD_BACKBONE,
    SD_BACKBONE_CLASSES,
    assert_backbone_loaded_from_pointer,
    assert_light_layout,
    assert_light_repo_keeps_the_mae_input_order,
    assert_lora_on_light_repo_without_asuka,
    light_and_full_repos,
    light_repo_without,
    load_light_repo_without_asuka,
    save_flux_backbone,
    save_sd_backbone,
)
from tests.support.inputs import make_inputs
from tests.support.lora import save_tiny_lora


STEPS = 2


@dataclass(frozen=True)
class Backbone:
    """One ASUKA pipeline on its backbone, as the light-format tests need it."""

    kind: str
    method: str
    pipeline_class: type
    repo: str
    classes: dict[str, str]
    save: Callable[[Path], Path]
    denoiser: str
    # ASUKA's parts by component name, and the class each loads as
    parts: dict[str, type]
    text_encoders: tuple[str, ...]
    # a first-layer weight of the denoiser, to tell which weights were read
    probe: str
    tiny_kwargs: dict = field(default_factory=dict)
    full_kwargs: dict = field(default_factory=dict)
    # the FLUX transformer's matmuls round differently (~2e-6) on memory-mapped safetensors than on freshly allocated
    # weights, so its bit-exact reference is assembled from the same files (backbone folder + the light repo's parts)
    reference_from_files: bool = False

    def __str__(self) -> str:
        return self.kind


SD = Backbone(
    kind="sd",
    method="asuka-sd",
    pipeline_class=AsukaPipeline,
    repo=SD_BACKBONE,
    classes=SD_BACKBONE_CLASSES,
    save=save_sd_backbone,
    denoiser="unet",
    parts={"mae": AsukaMAE, "aligner": AsukaAligner, "decoder": AsukaDecoder},
    text_encoders=("text_encoder", "tokenizer"),
    probe="conv_in.weight",
    full_kwargs={"hub_format": True},
)
FLUX = Backbone(
    kind="flux",
    method="asuka-flux",
    pipeline_class=AsukaFluxPipeline,
    repo=FLUX_BACKBONE,
    classes=FLUX_BACKBONE_CLASSES,
    save=save_flux_backbone,
    denoiser="transformer",
    parts={
        "mae": AsukaMAE,
        "token_aligner": AsukaAligner,
        "pooled_aligner": AsukaAligner,
        "decoder": AsukaDecoder,
        "masked_image_encoder": AsukaVAEEncoder,
    },
    text_encoders=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    probe="x_embedder.weight",
    tiny_kwargs={"with_masked_image_encoder": True},
    reference_from_files=True,
)


@pytest.fixture(scope="module", params=[SD, FLUX], ids=str)
def backbone(request) -> Backbone:
    return request.param


@pytest.fixture(scope="module")
def hub(backbone, tmp_path_factory):
    """(pipeline, light folder, full export, backbone folder, Hub cache)."""
    return light_and_full_repos(
        tmp_path_factory.mktemp(f"hub_{backbone.kind}"),
        backbone.kind,
        backbone.repo,
        backbone.save,
        tiny_kwargs=backbone.tiny_kwargs,
        **backbone.full_kwargs,
    )


def reference_pipeline(backbone: Backbone, hub):
    """What the light repo must reproduce: the pipeline it was saved from, or the same files assembled."""
    pipe, light, _, folder, _ = hub
    if not backbone.reference_from_files:
        return pipe
    assembled = backbone.pipeline_class.from_pretrained(folder, asuka=light)
    assembled.set_progress_bar_config(disable=True)
    return assembled


def probe(pipe, backbone: Backbone) -> torch.Tensor:
    return getattr(pipe, backbone.denoiser).get_parameter(backbone.probe)


def test_light_repo_holds_only_asukas_components(backbone, hub):
    _, light, full, _, _ = hub
    weights = sorted(f"{name}/diffusion_pytorch_model.safetensors" for name in backbone.parts)
    assert_light_layout(light, full, backbone.repo, backbone.denoiser, weights)
    assert not any((light / name).exists() for name in backbone.text_encoders)
    if backbone is FLUX:
        assert json.loads((light / "model_index.json").read_text())["working_resolution"] == 64


def test_one_diffusers_call_loads_it_without_asuka(backbone, hub, tmp_path):
    """Same output as the pipeline it was saved from; backbone from its repo at the pinned revision; dtype and
    variant reach it."""
    _, light, _, _, cache = hub
    image, mask = make_inputs()
    reference = reference_pipeline(backbone, hub)
    expected = reference(
        image, mask, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    out = load_light_repo_without_asuka(
        light, cache, tmp_path, image, mask, backbone.pipeline_class.__name__, backbone.denoiser, STEPS
    )
    diff = np.abs(out - expected.images).max()
    assert diff <= 1e-6, diff
    assert_backbone_loaded_from_pointer(tmp_path, backbone.repo, backbone.classes, light, tuple(backbone.parts))


def test_asuka_pipeline_from_pretrained_loads_the_light_repo(backbone, hub):
    pipe, light, _, _, cache = hub
    loaded = backbone.pipeline_class.from_pretrained(light, cache_dir=str(cache))
    assert isinstance(loaded, backbone.pipeline_class)
    for name, part_class in backbone.parts.items():
        assert isinstance(getattr(loaded, name), part_class), name
    for name in (backbone.denoiser, "vae", *backbone.parts):
        expected = getattr(pipe, name).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(loaded, name).state_dict().items()), name
    if backbone is FLUX:
        assert loaded.config.working_resolution == 64
    variant = backbone.pipeline_class.from_pretrained(
        light, cache_dir=str(cache), variant="fp16", torch_dtype=torch.float16
    )
    assert getattr(variant, backbone.denoiser).dtype == torch.float16 and variant.mae.dtype == torch.float16
    other = make_tiny_pipeline(backbone.kind, seed=1)  # the fp16 variant holds the seed-1 weights
    assert torch.equal(probe(variant, backbone), probe(other, backbone).half())


def test_a_backbone_without_the_component_names_repo_and_component(backbone, hub, tmp_path):
    pipe, _, _, folder, _ = hub
    light, broken = light_repo_without(pipe, folder, backbone.denoiser, tmp_path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(broken))}.*`{backbone.denoiser}`"):
        backbone.pipeline_class.from_pretrained(light)


def test_light_repo_keeps_the_mae_input_order(backbone, hub, tmp_path):
    assert_light_repo_keeps_the_mae_input_order(backbone.kind, backbone.pipeline_class, hub[3], tmp_path)


def test_light_save_needs_a_backbone(hub, tmp_path):
    pipe = hub[0]
    with pytest.raises(ValueError, match="backbone"):
        pipe.save_pretrained(tmp_path / "light", light=True)


def test_the_methods_accept_a_light_repo(backbone, hub, tmp_path):
    """The app, the CLI and the evaluation runner load models through `asuka.methods`: a light folder works there."""
    pipe, _, _, folder, _ = hub
    light = tmp_path / "light"
    pipe.save_pretrained(light, light=True, backbone=str(folder))
    loaded = load_pipeline(backbone.method, model=str(light))
    assert isinstance(loaded, backbone.pipeline_class)
    assert torch.equal(probe(loaded, backbone), probe(pipe, backbone))


def test_a_lora_loads_into_the_light_repo_without_asuka(backbone, hub, tmp_path):
    """The remote-code pipeline has diffusers' LoRA loader: the same output as the asuka pipeline with the LoRA."""
    pipe, light, _, folder, cache = hub
    save_tiny_lora(pipe, backbone.kind, tmp_path / "lora")
    if backbone.reference_from_files:
        reference = backbone.pipeline_class.from_pretrained(folder, asuka=light)
    else:
        reference = backbone.pipeline_class.from_pretrained(light, cache_dir=str(cache))
    assert_lora_on_light_repo_without_asuka(light, cache, tmp_path, tmp_path / "lora", reference, STEPS)


def test_model_card_names_backbone_licence_paper_provenance_and_usage():
    card = light_model_card(
        repo_id="you/asuka-sd",
        pipeline_class_name="AsukaPipeline",
        title="ASUKA-SD",
        description="Trained decoder.",
        backbone_repo="stable-diffusion-v1-5/stable-diffusion-inpainting",
        backbone_revision=BACKBONE_SHA,
        provenance='## Training arguments\n\n```json\n{"max_train_steps": 3}\n```',
    )
    assert "base_model: stable-diffusion-v1-5/stable-diffusion-inpainting" in card
    assert "license: creativeml-openrail-m" in card and BACKBONE_SHA in card
    assert "arxiv.org/abs/2312.04831" in card and '"max_train_steps": 3' in card
    assert f"[*{PAPER_TITLE}*](https://arxiv.org/abs/2312.04831), CVPR 2025" in card and "ECCV" not in card
    assert card.endswith(f"## Citation\n\n```bibtex\n{PAPER_BIBTEX}\n```\n")
    assert 'DiffusionPipeline.from_pretrained("you/asuka-sd", trust_remote_code=True' in card
    assert 'asuka.AsukaPipeline.from_pretrained("you/asuka-sd")' in card
    flux = light_model_card(
        "you/asuka-flux",
        "AsukaFluxPipeline",
        "t",
        "d",
        "black-forest-labs/FLUX.1-Fill-dev",
        None,
        "release",
        "bfloat16",
    )
    assert "license: other" in flux and "FLUX.1 [dev] Non-Commercial License" in flux
    assert "torch.bfloat16" in flux
