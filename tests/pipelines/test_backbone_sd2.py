"""The backbone seam holds: a third backbone (SD-2-inpainting's shapes, tests/support/backbone_sd2.py) trains one
aligner and one decoder step and exports a light Hub repo that loads without `asuka`; the contract tests
(tests/pipelines/test_contract_*.py) run diffusers' contract on it. docs/architecture.md, "Adding a backbone",
lists the files this walk touched.
"""

import dataclasses
import functools

import numpy as np
import pytest
import torch
import train_aligner
import train_decoder

from asuka import AsukaPipeline
from asuka.models import AsukaAligner, AsukaDecoder
from asuka.pipelines import backbones
from asuka.pipelines.backbones import (
    FLUX_FILL,
    SD15_INPAINTING,
    backbone_for_pipeline,
    backbone_for_repo,
    get_backbone,
    register_backbone,
)
from asuka.testing import make_tiny_pipeline
from tests.support.backbone_sd2 import CONTEXT_WIDTH, SD2_INPAINTING, SD2_REPO, make_tiny_sd2_components
from tests.support.hub import (
    BACKBONE_SHA,
    SD_BACKBONE_CLASSES,
    assert_backbone_loaded_from_pointer,
    light_and_full_repos,
    load_light_repo_without_asuka,
    save_sd_backbone,
)
from tests.support.inputs import make_inputs
from tests.support.training import (
    random_images,
    tiny_pipeline_dir,
    training_argv,
)


pytestmark = pytest.mark.usefixtures("offline")  # this module's runs get their own HF_HOME, offline


STEPS = 2


def test_the_spec_is_registered_and_the_tiny_pipeline_has_sd2s_shapes():
    assert get_backbone("sd-2-inpainting") is SD2_INPAINTING and backbone_for_repo(SD2_REPO) is SD2_INPAINTING
    assert backbone_for_pipeline("AsukaPipeline") is SD15_INPAINTING is AsukaPipeline.backbone_spec
    pipe = make_tiny_pipeline("sd-2-inpainting")
    assert isinstance(pipe, AsukaPipeline)
    assert SD2_INPAINTING.context_width(pipe.unet.config) == CONTEXT_WIDTH == pipe.aligner.config.hidden_dim
    assert pipe.unet.config.use_linear_projection and pipe.scheduler.config.prediction_type == "v_prediction"


def test_a_backbone_of_a_known_pipeline_class_shares_its_architecture():
    with pytest.raises(ValueError, match=r"differs in \['denoiser'\].*its own pipeline class"):
        register_backbone(dataclasses.replace(SD2_INPAINTING, name="sd-2-other", denoiser="transformer"))


def test_the_v_prediction_objective_recovers_the_clean_latent_from_an_oracle():
    """The decoder's latent augmentation through the seam: an exact v-predictor gives back the clean latent."""
    scheduler = SD2_INPAINTING.objective.training_scheduler(make_tiny_sd2_components()["scheduler"].config)
    assert scheduler.config.prediction_type == "v_prediction"

    class VOracle(torch.nn.Module):
        def forward(self, sample, timesteps, encoder_hidden_states):
            noisy, clean = sample[:, :4], sample[:, 5:]
            alphas = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
            noise = (noisy - alphas.sqrt() * clean) / (1 - alphas).sqrt()
            return type("Out", (), {"sample": alphas.sqrt() * noise - (1 - alphas).sqrt() * clean})()

    latents = torch.randn(6, 4, 4, 4)
    out, applied = train_decoder.latent_augmentation(
        latents,
        VOracle(),
        scheduler,
        {"prompt_embeds": torch.zeros(6, 1, 8)},
        (700, 999),
        1.0,
        backbone=SD2_INPAINTING,
    )
    assert applied.all()
    torch.testing.assert_close(out, latents, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_pipeline_dir(tmp_path_factory, SD2_INPAINTING.name)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(40, 48), (36, 36)])


def one_step(pipeline_dir, image_dir, output_dir, **flags) -> list[str]:
    return training_argv(
        pipeline_dir, image_dir, output_dir, 1, resolution=32, validation_steps=0, checkpointing_steps=0, **flags
    )


def test_one_aligner_step_and_one_decoder_step(pipeline_dir, image_dir, tmp_path):
    aligner = train_aligner.main(one_step(pipeline_dir, image_dir, tmp_path / "aligner"))
    assert aligner.global_step == 1 and np.isfinite(aligner.losses).all()
    assert AsukaAligner.from_pretrained(tmp_path / "aligner").config.hidden_dim == CONTEXT_WIDTH
    decoder = train_decoder.main(
        one_step(pipeline_dir, image_dir, tmp_path / "decoder", latent_aug_prob=1.0, save_pipeline=True)
    )
    assert decoder.global_step == 1 and np.isfinite(decoder.losses).all()
    assert isinstance(AsukaDecoder.from_pretrained(tmp_path / "decoder"), AsukaDecoder)
    saved = AsukaPipeline.from_pretrained(tmp_path / "decoder" / "pipeline")
    assert saved.unet.config.cross_attention_dim == CONTEXT_WIDTH


def test_training_refuses_a_backbone_without_a_training_objective(image_dir, tmp_path_factory, tmp_path, monkeypatch):
    """A folder whose backbone's spec has no `denoise`/`objective` is refused by both scripts before any loading."""
    untrained = dataclasses.replace(FLUX_FILL, name="flux-untrained", denoise=None, objective=None)
    monkeypatch.setattr(backbones, "backbone_for_pipeline", lambda class_name: untrained)
    flux = tiny_pipeline_dir(tmp_path_factory, "flux")
    for script in (train_aligner, train_decoder):
        with pytest.raises(ValueError, match=r"'flux-untrained' backbone \(AsukaFluxPipeline\) is not supported yet"):
            script.main(one_step(flux, image_dir, tmp_path / script.__name__))


def test_its_light_repo_loads_without_asuka_and_names_its_licence(tmp_path_factory, tmp_path):
    save_backbone = functools.partial(save_sd_backbone, make_components=make_tiny_sd2_components)
    pipe, light, _, _, cache = light_and_full_repos(
        tmp_path_factory.mktemp("hub_sd2"), SD2_INPAINTING.name, SD2_REPO, save_backbone
    )
    card = (light / "README.md").read_text()
    assert f"base_model: {SD2_REPO}" in card and "license: openrail++" in card and BACKBONE_SHA in card
    image, mask = make_inputs()
    expected = pipe(
        image, mask, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    out = load_light_repo_without_asuka(light, cache, tmp_path, image, mask, "AsukaPipeline", "unet", STEPS)
    assert np.abs(out - expected.images).max() <= 1e-6
    assert_backbone_loaded_from_pointer(tmp_path, SD2_REPO, SD_BACKBONE_CLASSES, light, ("mae", "aligner", "decoder"))
