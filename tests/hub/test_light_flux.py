"""The light Hub format for ASUKA-FLUX: only ASUKA's components + code + a pointer to FLUX.1-Fill.

The "Hub" is a Hugging Face cache that serves a tiny FLUX.1-Fill repo (with tiny CLIP and T5 text encoders) at one
commit; the light repo is a local folder. Loading without `asuka` runs in a subprocess where `import asuka` fails.
The pipeline has every optional component, the masked-image encoder (the release's, where it differs) included.
"""

import json
import re

import numpy as np
import pytest
import torch

from asuka import AsukaFluxPipeline
from asuka.methods.loading import load_pipeline
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, AsukaVAEEncoder
from asuka.testing import make_tiny_pipeline
from tests.support.hub import (
    FLUX_BACKBONE,
    FLUX_BACKBONE_CLASSES,
    assert_backbone_loaded_from_pointer,
    assert_light_layout,
    assert_light_repo_keeps_the_mae_input_order,
    assert_lora_on_light_repo_without_asuka,
    light_and_full_repos,
    light_repo_without,
    load_light_repo_without_asuka,
    save_flux_backbone,
)
from tests.support.inputs import make_inputs
from tests.support.lora import save_tiny_lora


STEPS = 2


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(pipeline, light folder, full export, backbone folder, Hub cache)."""
    return light_and_full_repos(
        tmp_path_factory.mktemp("hub_flux"),
        "flux",
        FLUX_BACKBONE,
        save_flux_backbone,
        tiny_kwargs={"with_masked_image_encoder": True},
    )


def test_light_repo_holds_only_asukas_components(hub):
    _, light, full, _, _ = hub
    assert_light_layout(
        light,
        full,
        FLUX_BACKBONE,
        "transformer",
        [
            "decoder/diffusion_pytorch_model.safetensors",
            "mae/diffusion_pytorch_model.safetensors",
            "masked_image_encoder/diffusion_pytorch_model.safetensors",
            "pooled_aligner/diffusion_pytorch_model.safetensors",
            "token_aligner/diffusion_pytorch_model.safetensors",
        ],
    )
    assert not any((light / name).exists() for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    assert json.loads((light / "model_index.json").read_text())["working_resolution"] == 64


def test_one_diffusers_call_loads_it_without_asuka(hub, tmp_path):
    """Same output as the assembled pipeline; backbone from its repo at the pinned revision; dtype/variant reach it.

    The reference is assembled the documented two-source way from the same files (backbone folder + the light
    repo's components): the FLUX transformer's matmuls round differently (~2e-6) on memory-mapped safetensors than
    on freshly allocated weights, whatever the format, so an in-memory pipeline is not a bit-exact reference.
    """
    pipe, light, _, backbone, cache = hub
    image, mask = make_inputs()
    assembled = AsukaFluxPipeline.from_pretrained(backbone, asuka=light)
    assert isinstance(assembled.masked_image_encoder, AsukaVAEEncoder)
    assembled.set_progress_bar_config(disable=True)
    expected = assembled(
        image, mask, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    out = load_light_repo_without_asuka(light, cache, tmp_path, image, mask, "AsukaFluxPipeline", "transformer", STEPS)
    diff = np.abs(out - expected.images).max()
    assert diff <= 1e-6, diff
    assert_backbone_loaded_from_pointer(
        tmp_path,
        FLUX_BACKBONE,
        FLUX_BACKBONE_CLASSES,
        light,
        ("mae", "token_aligner", "pooled_aligner", "decoder", "masked_image_encoder"),
    )


def test_asuka_pipeline_from_pretrained_loads_the_light_repo(hub):
    pipe, light, _, _, cache = hub
    loaded = AsukaFluxPipeline.from_pretrained(light, cache_dir=str(cache))
    assert isinstance(loaded, AsukaFluxPipeline)
    assert isinstance(loaded.mae, AsukaMAE) and isinstance(loaded.token_aligner, AsukaAligner)
    assert isinstance(loaded.pooled_aligner, AsukaAligner) and isinstance(loaded.decoder, AsukaDecoder)
    assert isinstance(loaded.masked_image_encoder, AsukaVAEEncoder)
    assert loaded.config.working_resolution == 64
    for name in ("transformer", "vae", "mae", "token_aligner", "pooled_aligner", "decoder", "masked_image_encoder"):
        expected = getattr(pipe, name).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in getattr(loaded, name).state_dict().items()), name
    variant = AsukaFluxPipeline.from_pretrained(light, cache_dir=str(cache), variant="fp16", torch_dtype=torch.float16)
    assert variant.transformer.dtype == torch.float16 and variant.mae.dtype == torch.float16
    other = make_tiny_pipeline("flux", seed=1).transformer  # the fp16 variant holds the seed-1 weights
    assert torch.equal(variant.transformer.x_embedder.weight, other.x_embedder.weight.half())


def test_a_backbone_without_the_component_names_repo_and_component(hub, tmp_path):
    pipe, _, _, backbone, _ = hub
    light, broken = light_repo_without(pipe, backbone, "transformer", tmp_path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(broken))}.*`transformer`"):
        AsukaFluxPipeline.from_pretrained(light)


def test_light_repo_keeps_the_mae_input_order(hub, tmp_path):
    assert_light_repo_keeps_the_mae_input_order("flux", AsukaFluxPipeline, hub[3], tmp_path)


def test_light_save_needs_a_backbone(hub, tmp_path):
    pipe = hub[0]
    with pytest.raises(ValueError, match="backbone"):
        pipe.save_pretrained(tmp_path / "light", light=True)


def test_the_methods_accept_a_light_repo(hub, tmp_path):
    """The app, the CLI and the evaluation runner load models through `asuka.methods`: a light folder works there."""
    pipe, _, _, backbone, _ = hub
    light = tmp_path / "light"
    pipe.save_pretrained(light, light=True, backbone=str(backbone))
    loaded = load_pipeline("asuka-flux", model=str(light))
    assert isinstance(loaded, AsukaFluxPipeline)
    assert torch.equal(loaded.transformer.x_embedder.weight, pipe.transformer.x_embedder.weight)


def test_a_lora_loads_into_the_light_repo_without_asuka(hub, tmp_path):
    """The remote-code pipeline has diffusers' LoRA loader: the same output as the asuka pipeline with the LoRA."""
    pipe, light, _, backbone, cache = hub
    save_tiny_lora(pipe, "flux", tmp_path / "lora")
    reference = AsukaFluxPipeline.from_pretrained(backbone, asuka=light)
    assert_lora_on_light_repo_without_asuka(light, cache, tmp_path, tmp_path / "lora", reference, STEPS)
