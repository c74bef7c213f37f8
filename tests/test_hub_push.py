"""Producers of light repos (issue 14): the converter's and the training scripts' `--push_to_hub` upload only
ASUKA's files and the model card (HfApi intercepted; the "Hub" is local folders)."""

import hashlib
import json

import pytest
import torch
from hub_helpers import intercept_uploads, save_flux_backbone, weight_files

import asuka.convert.asuka_flux as asuka_flux
from asuka import AsukaFluxPipeline
from asuka.convert.__main__ import main as convert_cli
from asuka.testing.flux import make_tiny_flux_components


LIGHT_FLUX_WEIGHTS = [
    f"{name}/diffusion_pytorch_model.safetensors" for name in ("decoder", "mae", "pooled_aligner", "token_aligner")
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
    monkeypatch.setattr(
        asuka_flux,
        "build_components",
        lambda folder, condition_weight: {n: tiny[n] for n in asuka_flux.COMPONENT_FOLDERS},
    )
    calls = intercept_uploads(monkeypatch, tmp_path / "hub")
    out = tmp_path / "asuka-flux"
    argv = ["asuka-flux", "--release", str(release), "--out", str(out), "--push-to-hub", "me/asuka-flux"]
    assert convert_cli([*argv, "--backbone", str(flux_backbone), "--backbone-revision", "abc123"]) == 0
    assert calls == [("create_repo", "me/asuka-flux"), ("upload_folder", "me/asuka-flux")]
    uploaded = tmp_path / "hub" / "me/asuka-flux"
    assert weight_files(uploaded) == LIGHT_FLUX_WEIGHTS  # no transformer, VAE or text encoder
    assert json.loads((uploaded / "transformer" / "backbone.json").read_text())["revision"] == "abc123"
    card = (uploaded / "README.md").read_text()
    assert f"base_model: {flux_backbone}" in card and "yikaiwang/ASUKA-FLUX.1-Fill" in card
    assert "arxiv.org/abs/2312.04831" in card and hashlib.sha256(b"vec.pt").hexdigest() in card
    assert 'DiffusionPipeline.from_pretrained("me/asuka-flux", trust_remote_code=True' in card
    pipe = AsukaFluxPipeline.from_pretrained(uploaded)
    assert torch.equal(pipe.transformer.x_embedder.weight, tiny["transformer"].x_embedder.weight)
    assert torch.equal(pipe.token_aligner.null_embed, tiny["token_aligner"].null_embed)
