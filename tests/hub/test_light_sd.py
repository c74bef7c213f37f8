"""The light Hub format for ASUKA-SD: only ASUKA's components + code + a pointer to SD-1.5-inpainting.

The "Hub" is a Hugging Face cache that serves a tiny SD-1.5-inpainting repo (with a tiny text encoder) at one commit;
the light repo is a local folder. Loading without `asuka` runs in a subprocess where `import asuka` fails.
"""

import re

import numpy as np
import pytest
import torch

from asuka import AsukaPipeline
from asuka.methods.loading import load_pipeline
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE
from asuka.pipelines.model_card import PAPER_BIBTEX, PAPER_TITLE, light_model_card
from asuka.testing import make_tiny_pipeline
from tests.support.hub import (
    BACKBONE_SHA,
    SD_BACKBONE,
    SD_BACKBONE_CLASSES,
    assert_backbone_loaded_from_pointer,
    assert_light_layout,
    assert_light_repo_keeps_the_mae_input_order,
    assert_lora_on_light_repo_without_asuka,
    light_and_full_repos,
    light_repo_without,
    load_light_repo_without_asuka,
    save_sd_backbone,
)
from tests.support.inputs import make_inputs
from tests.support.lora import save_tiny_lora


STEPS = 2


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(pipeline, light folder, full hub-format export, backbone folder, Hub cache)."""
    return light_and_full_repos(
        tmp_path_factory.mktemp("hub_sd"), "sd", SD_BACKBONE, save_sd_backbone, hub_format=True
    )


def test_light_repo_holds_only_asukas_components(hub):
    _, light, full, _, _ = hub
    assert_light_layout(
        light,
        full,
        SD_BACKBONE,
        "unet",
        [
            "aligner/diffusion_pytorch_model.safetensors",
            "decoder/diffusion_pytorch_model.safetensors",
            "mae/diffusion_pytorch_model.safetensors",
        ],
    )
    assert not (light / "text_encoder").exists() and not (light / "tokenizer").exists()


def test_one_diffusers_call_loads_it_without_asuka(hub, tmp_path):
    """Same output as the assembled pipeline; backbone from its repo at the pinned revision; dtype/variant reach it."""
    pipe, light, _, _, cache = hub
    image, mask = make_inputs()
    expected = pipe(
        image, mask, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    out = load_light_repo_without_asuka(light, cache, tmp_path, image, mask, "AsukaPipeline", "unet", STEPS)
    diff = np.abs(out - expected.images).max()
    assert diff <= 1e-6, diff
    assert_backbone_loaded_from_pointer(
        tmp_path, SD_BACKBONE, SD_BACKBONE_CLASSES, light, ("mae", "aligner", "decoder")
    )


def test_asuka_pipeline_from_pretrained_loads_the_light_repo(hub):
    pipe, light, _, _, cache = hub
    loaded = AsukaPipeline.from_pretrained(light, cache_dir=str(cache))
    assert isinstance(loaded, AsukaPipeline)
    assert isinstance(loaded.mae, AsukaMAE) and isinstance(loaded.aligner, AsukaAligner)
    assert isinstance(loaded.decoder, AsukaDecoder)
    for name in ("unet", "vae", "mae", "aligner", "decoder"):
        expected = getattr(pipe, name).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(loaded, name).state_dict().items()), name
    variant = AsukaPipeline.from_pretrained(light, cache_dir=str(cache), variant="fp16", torch_dtype=torch.float16)
    assert variant.unet.dtype == torch.float16 and variant.mae.dtype == torch.float16
    other = make_tiny_pipeline("sd", seed=1).unet.state_dict()  # the fp16 variant holds the seed-1 weights
    assert torch.equal(variant.unet.conv_in.weight, other["conv_in.weight"].half())


def test_a_backbone_without_the_component_names_repo_and_component(hub, tmp_path):
    pipe, _, _, backbone, _ = hub
    light, broken = light_repo_without(pipe, backbone, "unet", tmp_path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(broken))}.*`unet`"):
        AsukaPipeline.from_pretrained(light)


def test_light_repo_keeps_the_mae_input_order(hub, tmp_path):
    assert_light_repo_keeps_the_mae_input_order("sd", AsukaPipeline, hub[3], tmp_path)


def test_light_save_needs_a_backbone(hub, tmp_path):
    pipe = hub[0]
    with pytest.raises(ValueError, match="backbone"):
        pipe.save_pretrained(tmp_path / "light", light=True)


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


def test_the_methods_accept_a_light_repo(hub, tmp_path):
    """The app, the CLI and the evaluation runner load models through `asuka.methods`: a light folder works there."""
    pipe, _, _, backbone, _ = hub
    light = tmp_path / "light"
    pipe.save_pretrained(light, light=True, backbone=str(backbone))
    loaded = load_pipeline("asuka-sd", model=str(light))
    assert isinstance(loaded, AsukaPipeline)
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_a_lora_loads_into_the_light_repo_without_asuka(hub, tmp_path):
    """The remote-code pipeline has diffusers' LoRA loader: the same output as the asuka pipeline with the LoRA."""
    pipe, light, _, _, cache = hub
    save_tiny_lora(pipe, "sd", tmp_path / "lora")
    reference = AsukaPipeline.from_pretrained(light, cache_dir=str(cache))
    assert_lora_on_light_repo_without_asuka(light, cache, tmp_path, tmp_path / "lora", reference, STEPS)
