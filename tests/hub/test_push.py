"""Producers of light repos: the converter's and the training scripts' `--push_to_hub` upload only
ASUKA's files and the model card (HfApi intercepted; the "Hub" is local folders)."""

import hashlib
import json

import pytest
import torch
import train_aligner
import train_decoder
import train_mae
from safetensors.torch import load_file

import asuka.convert.asuka_flux as asuka_flux
from asuka import AsukaFluxPipeline, AsukaPipeline
from asuka.convert.__main__ import main as convert_cli
from asuka.pipelines.model_card import PAPER_BIBTEX, PAPER_TITLE
from asuka.testing.flux import make_tiny_flux_components, make_tiny_masked_image_encoder
from tests.support.hub import save_flux_backbone, weight_files
from tests.support.training import (
    intercept_hub,
    random_images,
    tiny_pipeline_dir,
    training_argv,
)


pytestmark = pytest.mark.usefixtures("offline")  # this module's runs get their own HF_HOME, offline


LIGHT_FLUX_WEIGHTS = [
    f"{name}/diffusion_pytorch_model.safetensors"
    for name in ("decoder", "mae", "masked_image_encoder", "pooled_aligner", "token_aligner")
]


@pytest.fixture(scope="module")
def flux_backbone(tmp_path_factory):
    return save_flux_backbone(tmp_path_factory.mktemp("flux") / "backbone")


def test_converter_pushes_the_light_repo_and_its_card(flux_backbone, tmp_path, monkeypatch):
    """`--out` + `--push-to-hub`: the upload is the light repo; it loads against the backbone it points to."""
    release = tmp_path / "release"
    release.mkdir()
    for name in asuka_flux.RELEASE_FILES:  # hashed for the card; the weights come from the stub below
        (release / name).write_bytes(name.encode())
    tiny = make_tiny_flux_components(seed=0)
    encoder = make_tiny_masked_image_encoder(tiny["vae"])  # the release's encoder, unlike the backbone's

    def build_components(folder, condition_weight, encoder_config):
        assert encoder_config == dict(encoder.config)  # shaped like the backbone VAE's encoder
        return {**{n: tiny[n] for n in asuka_flux.COMPONENT_FOLDERS}, asuka_flux.ENCODER_FOLDER: encoder}

    monkeypatch.setattr(asuka_flux, "build_components", build_components)
    repos = intercept_hub(monkeypatch, tmp_path / "hub")
    out = tmp_path / "asuka-flux"
    argv = ["asuka-flux", "--release", str(release), "--out", str(out), "--push-to-hub", "me/asuka-flux"]
    assert convert_cli([*argv, "--backbone", str(flux_backbone), "--backbone-revision", "abc123"]) == 0
    assert [repo for repo, _ in repos] == ["me/asuka-flux"]
    uploaded = tmp_path / "hub" / "me/asuka-flux"
    assert weight_files(uploaded) == LIGHT_FLUX_WEIGHTS  # no transformer, VAE or text encoder; the release's encoder
    assert json.loads((uploaded / "transformer" / "backbone.json").read_text())["revision"] == "abc123"
    card = (uploaded / "README.md").read_text()
    assert f"base_model: {flux_backbone}" in card and "yikaiwang/ASUKA-FLUX.1-Fill" in card
    assert "arxiv.org/abs/2312.04831" in card and hashlib.sha256(b"vec.pt").hexdigest() in card
    assert PAPER_TITLE in card and PAPER_BIBTEX in card
    assert 'DiffusionPipeline.from_pretrained("me/asuka-flux", trust_remote_code=True' in card
    pipe = AsukaFluxPipeline.from_pretrained(uploaded)
    assert torch.equal(pipe.transformer.x_embedder.weight, tiny["transformer"].x_embedder.weight)
    assert torch.equal(pipe.token_aligner.null_embed, tiny["token_aligner"].null_embed)
    assert torch.equal(pipe.masked_image_encoder.encoder.conv_in.weight, encoder.encoder.conv_in.weight)


# ------------------------------------------------------------------------------------------ training scripts

SD_LIGHT_WEIGHTS = [f"{name}/diffusion_pytorch_model.safetensors" for name in ("aligner", "decoder", "mae")]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A full tiny AsukaPipeline folder: what the scripts train from, and the backbone their light repos point to."""
    return tiny_pipeline_dir(tmp_path_factory, "sd")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(36, 40)] * 2)


def run_and_push(script, pipeline_dir, image_dir, output_dir, uploads, **flags):
    """One tiny training step with --push_to_hub intercepted; returns the uploaded folder."""
    patch = pytest.MonkeyPatch()
    intercept_hub(patch, uploads)
    argv = training_argv(
        pipeline_dir, image_dir, output_dir, 1, resolution=32, validation_steps=0, checkpointing_steps=100, **flags
    )
    try:
        script.main([*argv, "--push_to_hub", "--hub_model_id", "me/asuka-sd"])
    finally:
        patch.undo()
    return uploads / "me/asuka-sd"


def test_decoder_pushes_the_light_repo_by_default(pipeline_dir, image_dir, tmp_path):
    output_dir = tmp_path / "run"
    uploaded = run_and_push(train_decoder, pipeline_dir, image_dir, output_dir, tmp_path / "hub", save_pipeline=True)
    assert weight_files(uploaded) == SD_LIGHT_WEIGHTS  # no UNet, VAE or text encoder, no checkpoints
    pointer = json.loads((uploaded / "unet" / "backbone.json").read_text())
    assert pointer["repo"] == str(pipeline_dir)  # --pretrained_model_name_or_path, as no --hub_backbone_id was given
    card = (uploaded / "README.md").read_text()
    assert f"base_model: {pipeline_dir}" in card and "arxiv.org/abs/2312.04831" in card
    assert "## Training arguments" in card and '"max_train_steps": 1' in card and "hub_token" not in card
    assert 'DiffusionPipeline.from_pretrained("me/asuka-sd", trust_remote_code=True' in card
    pipe = AsukaPipeline.from_pretrained(uploaded)
    trained = load_file(str(output_dir / "pipeline" / "decoder" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(value, pipe.decoder.state_dict()[key]) for key, value in trained.items())
    backbone_unet = load_file(str(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(value, pipe.unet.state_dict()[key]) for key, value in backbone_unet.items())


def test_aligner_push_points_to_the_named_backbone(pipeline_dir, image_dir, tmp_path):
    sha = "fedcba9876543210fedcba9876543210fedcba98"
    uploaded = run_and_push(
        train_aligner,
        pipeline_dir,
        image_dir,
        tmp_path / "run",
        tmp_path / "hub",
        save_pipeline=True,
        hub_backbone_id="stable-diffusion-v1-5/stable-diffusion-inpainting",
        hub_backbone_revision=sha,
    )
    assert weight_files(uploaded) == SD_LIGHT_WEIGHTS
    for name in ("unet", "vae", "scheduler"):
        pointer = json.loads((uploaded / name / "backbone.json").read_text())
        assert pointer["repo"] == "stable-diffusion-v1-5/stable-diffusion-inpainting" and pointer["revision"] == sha
    card = (uploaded / "README.md").read_text()
    assert "license: creativeml-openrail-m" in card and sha in card


def test_mae_push_holds_only_the_mae(pipeline_dir, image_dir, tmp_path):
    uploaded = run_and_push(train_mae, pipeline_dir, image_dir, tmp_path / "run", tmp_path / "hub")
    assert weight_files(uploaded) == ["diffusion_pytorch_model.safetensors"]
    assert json.loads((uploaded / "config.json").read_text())["_class_name"] == "AsukaMAE"
    assert "## Training arguments" in (uploaded / "README.md").read_text()
