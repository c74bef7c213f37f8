"""The backbone registry (asuka/pipelines/backbones.py): lookups, their errors, and the facts the rest reads."""

import dataclasses

import pytest
import torch

from asuka import AsukaFluxPipeline, AsukaPipeline
from asuka.pipelines.backbones import (
    FLUX_FILL,
    SD15_INPAINTING,
    backbone_for_pipeline,
    backbone_for_repo,
    get_backbone,
)
from asuka.testing import make_tiny_pipeline


def test_each_pipeline_class_and_its_diffusers_base_name_their_spec():
    assert AsukaPipeline.backbone_spec is SD15_INPAINTING and AsukaFluxPipeline.backbone_spec is FLUX_FILL
    for spec in (SD15_INPAINTING, FLUX_FILL):
        assert backbone_for_pipeline(spec.pipeline_class) is backbone_for_pipeline(spec.base_pipeline_class) is spec
        assert get_backbone(spec.name) is spec and backbone_for_repo(spec.repo) is spec
    assert backbone_for_repo("someone/else") is None


def test_unknown_names_raise_value_errors_that_list_the_accepted_ones():
    with pytest.raises(ValueError, match=r"Unknown backbone 'nope'; known backbones: .*sd-1.5-inpainting"):
        get_backbone("nope")
    with pytest.raises(ValueError, match=r"'StrDiffusionPipeline'; accepted: .*AsukaPipeline"):
        backbone_for_pipeline("StrDiffusionPipeline")
    with pytest.raises(ValueError, match=r"Unknown tiny pipeline kind 'nope'"):
        make_tiny_pipeline("nope")


def test_only_backbones_with_an_objective_are_trainable():
    SD15_INPAINTING.check_trainable()
    FLUX_FILL.check_trainable()
    untrained = dataclasses.replace(FLUX_FILL, name="flux-untrained", denoise=None, objective=None)
    with pytest.raises(
        ValueError, match=r"'flux-untrained' backbone \(AsukaFluxPipeline\) is not supported yet.*'flux.1-fill'"
    ):
        untrained.check_trainable()


def test_zero_conditioning_has_the_denoisers_widths():
    unet = make_tiny_pipeline("sd").unet.config
    sd = SD15_INPAINTING.zero_conditioning(unet, SD15_INPAINTING.text_tokens, batch=2, dtype=torch.float16)
    assert list(sd) == ["prompt_embeds"] and sd["prompt_embeds"].shape == (2, 77, unet.cross_attention_dim)
    assert sd["prompt_embeds"].dtype == torch.float16 and not sd["prompt_embeds"].any()
    transformer = make_tiny_pipeline("flux").transformer.config
    flux = FLUX_FILL.zero_conditioning(transformer, 3)
    assert flux["prompt_embeds"].shape == (1, 3, transformer.joint_attention_dim)
    assert flux["pooled_prompt_embeds"].shape == (1, transformer.pooled_projection_dim)


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_component_classes_and_input_channels_are_those_of_the_backbones_components(kind):
    pipe = make_tiny_pipeline(kind)
    spec = type(pipe).backbone_spec
    assert spec.component_classes() == {name: type(getattr(pipe, name)).__name__ for name in spec.components}
    assert list(spec.component_classes()) == list(spec.components)
    assert getattr(pipe, spec.denoiser).config.in_channels == spec.denoiser_in_channels
