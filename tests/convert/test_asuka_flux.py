"""The asuka-flux converter end to end: seeded release-format files -> CLI -> project modules == golden outputs.

The seeded weights are exactly those the golden tensors were computed with (tests/support/seeded.py). The 4096-wide
T5 aligner would be ~1B parameters; its file is written with the real key names at width 128 (the converter
reads the width off the checkpoint), and checked for an exact weight round trip instead of a golden. The decoder
checkpoint's VAE encoder (no golden: the reference only loads it into FLUX's autoencoder) is checked against
diffusers' own LDM conversion, and against tiny FLUX.1-Fill backbones whose VAE has the same or another encoder.
"""

import json
import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
from diffusers import FluxFillPipeline
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file

from asuka import AsukaFluxPipeline
from asuka.convert.__main__ import main as convert_cli
from asuka.convert.asuka_flux import DECODER_FILE, RELEASE_FILES, resolve_release, write_components
from asuka.convert.asuka_flux_keys import encoder_fingerprint
from asuka.convert.output import push_folder
from asuka.defaults import FLUX_FILL_REPO
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE, AsukaVAEEncoder
from asuka.pipelines.pipeline_asuka_flux import load_asuka_flux_components
from asuka.testing.flux import flux_fill_pipeline, make_tiny_flux_components
from tests.support.hub import BACKBONE_SHA, hub_cache
from tests.support.seeded import (
    DECODER_KEYS,
    FIXTURES,
    MAE_SINCOS_KEYS,
    bfl_encoder_keys,
    load_checkpoint_keys,
    relative_error,
    save_asuka_flux_release,
    seeded_state_dict,
)


NARROW = 128  # stands in for T5's 4096
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def narrow_t5_keys(width: int):
    """The T5 aligner's real key names, with every 4096-multiple dimension scaled to `width`."""
    scale = {4096: width, 28672: 7 * width, 20480: 5 * width, 12288: 3 * width}
    return [
        (key, [scale.get(dim, dim) for dim in shape]) for key, shape in load_checkpoint_keys("asuka_alignment_t5.pt")
    ]


def diffusers_encoder(encoder_sd: dict, down_block_types) -> dict:
    """Release `encoder.*` tensors in `AutoencoderKL.encoder` names, by diffusers' own whole-checkpoint conversion
    (as `from_single_file` runs it): the independent reference for the converter's checked, per-module one."""
    converted = convert_ldm_vae_checkpoint(encoder_sd, {"down_block_types": down_block_types, "up_block_types": ()})
    return {key.removeprefix("encoder."): value for key, value in converted.items()}


def write_release(folder: Path) -> None:
    """The six release files in their real formats, with seeded weights (a FLUX.1-sized VAE encoder included)."""
    generator = torch.Generator().manual_seed(7)
    save_asuka_flux_release(
        folder,
        mae=seeded_state_dict(load_checkpoint_keys("mae_300.pth:model"), sincos_keys=MAE_SINCOS_KEYS),
        token_aligner=seeded_state_dict(narrow_t5_keys(NARROW)),
        pooled_aligner=seeded_state_dict(load_checkpoint_keys("asuka_alignment_clip.pt")),
        decoder=seeded_state_dict(load_checkpoint_keys(DECODER_KEYS)),
        decoder_checkpoint_extra={  # the VAE encoder, and the training wrapper's other state, to be ignored
            **seeded_state_dict(bfl_encoder_keys(), seed=3),
            "quant_conv.weight": torch.randn(32, 32, 1, 1),
            "loss.logvar": torch.zeros(()),
        },
        pooled_null=torch.randn(1, 768, generator=generator),
        token_null=torch.randn(1, 256, NARROW, generator=generator),
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    write_release(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def empty_hub_cache(tmp_path_factory):
    """The Hub cache the converter looks in for the backbone: empty, so no cached FLUX.1-Fill counts (no network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hf_cache")))
        yield


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "asuka-flux"
    assert convert_cli(["asuka-flux", "--release", str(release), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------ golden


def test_output_layout_and_model_card(converted, release):
    for name in ("mae", "token_aligner", "pooled_aligner", "decoder"):
        assert (converted / name / "config.json").is_file()
        assert (converted / name / "diffusion_pytorch_model.safetensors").is_file()
    card = (converted / "README.md").read_text()
    assert "base_model: black-forest-labs/FLUX.1-Fill-dev" in card and "AsukaFluxPipeline.from_pretrained" in card
    metadata = json.loads((converted / "conversion.json").read_text())
    assert sorted(metadata["release_files_sha256"]) == sorted(RELEASE_FILES)
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_golden_mae(converted):
    golden = load_file(FIXTURES / "golden_mae.safetensors")
    mae = AsukaMAE.from_pretrained(converted / "mae")
    with torch.no_grad():
        out = mae(golden["image_01"], golden["mask"])
    assert relative_error(out.prior, golden["prior"]) <= 1e-4
    expected_pixels = golden["reconstruction"] * IMAGENET_STD + IMAGENET_MEAN  # golden is in normalised space
    assert relative_error(out.reconstruction, expected_pixels) <= 1e-4


def test_golden_pooled_aligner(converted, release):
    golden = load_file(FIXTURES / "golden_aligner_768.safetensors")
    aligner = AsukaAligner.from_pretrained(converted / "pooled_aligner")
    assert aligner.config.null_embedding == "pooled" and aligner.config.condition_weight == 0.5
    with torch.no_grad():
        full = aligner(golden["prior"], condition_weight=1.0)
        default = aligner(golden["prior"])
    assert relative_error(full.tokens, golden["tokens"]) <= 1e-4
    assert relative_error(full.pooled, golden["pooled"]) <= 1e-4
    null = torch.load(release / "vec.pt", weights_only=True)
    assert relative_error(default.pooled, null + 0.5 * (golden["pooled"] - null)) <= 1e-4


def test_token_aligner_weights_and_null_round_trip(converted, release):
    aligner = AsukaAligner.from_pretrained(converted / "token_aligner")
    assert aligner.config.hidden_dim == NARROW and aligner.config.null_embedding == "tokens"
    assert aligner.config.num_tokens == 256
    release_sd = torch.load(release / "asuka_alignment_t5.pt", weights_only=True)
    state = aligner.state_dict()
    assert torch.equal(state["proj_in.weight"], release_sd["0.weight"])
    assert torch.equal(state["blocks.3.linear2.weight"], release_sd["4.linear2.weight"])
    assert torch.equal(state["norm_out.bias"], release_sd["5.bias"])
    assert torch.equal(aligner.null_embed.detach(), torch.load(release / "txt_256.pt", weights_only=True))
    assert not any("modulation" in key for key in state)  # unused by the forward pass, dropped
    with torch.no_grad():
        assert torch.equal(aligner(torch.randn(1, 256, 512), condition_weight=0.0).tokens, aligner.null_embed)


def test_golden_decoder(converted):
    golden = load_file(FIXTURES / "golden_decoder.safetensors")
    decoder = AsukaDecoder.from_pretrained(converted / "decoder")
    assert decoder.config.latent_channels == 16 and decoder.post_quant_conv is None
    with torch.no_grad():
        out = decoder(golden["z_unscaled"], golden["image"], golden["mask"]).sample
    assert relative_error(out, golden["out"]) <= 1e-4


def test_converted_folder_loads_as_pipeline_components(converted):
    components = load_asuka_flux_components(converted)
    assert sorted(components) == ["decoder", "mae", "masked_image_encoder", "pooled_aligner", "token_aligner"]
    assert isinstance(components["masked_image_encoder"], AsukaVAEEncoder)


# ------------------------------------------------------------------------------------------ masked-image encoder


def test_unverifiable_encoder_is_stored_with_diffusers_names(converted, release):
    """Without the backbone (no folder, not in the Hub cache) the release's encoder is stored, with FLUX.1's VAE
    encoder config; its weights are diffusers' own conversion of the release's `encoder.*`."""
    record = json.loads((converted / "conversion.json").read_text())["masked_image_encoder"]
    assert record["case"] == "unverified" and record["stored"] and record["backbone_fingerprint"] is None
    assert FLUX_FILL_REPO in record["summary"] and "--backbone" in record["summary"]
    encoder = AsukaVAEEncoder.from_pretrained(converted / "masked_image_encoder")
    assert list(encoder.config.block_out_channels) == [128, 256, 512, 512] and encoder.config.latent_channels == 16
    release_sd = torch.load(release / DECODER_FILE, weights_only=True)["state_dict"]
    encoder_sd = {key: value for key, value in release_sd.items() if key.startswith("encoder.")}
    expected = diffusers_encoder(encoder_sd, encoder.config.down_block_types)
    state = encoder.encoder.state_dict()
    assert sorted(state) == sorted(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert record["fingerprint"] == encoder_fingerprint(expected)
    assert "masked_image_encoder/" in (converted / "README.md").read_text()


@pytest.fixture(scope="module")
def tiny_release(release, tmp_path_factory):
    """The release with a tiny VAE encoder in its decoder checkpoint, and two tiny FLUX.1-Fill backbones (saved
    `FluxFillPipeline`s): `equal`, a folder whose VAE encoder holds those weights (by diffusers' own conversion), and
    `other`, whose VAE encoder is another, served from a Hub cache as FLUX.1-Fill-dev at `BACKBONE_SHA`.

    Returns (release, equal, cache, the release's encoder in diffusers names)."""
    root = tmp_path_factory.mktemp("tiny_release")
    components = make_tiny_flux_components(seed=0)
    vae_config = components["vae"].config
    encoder_sd = seeded_state_dict(
        bfl_encoder_keys(vae_config.block_out_channels, vae_config.layers_per_block), seed=5
    )
    folder = release_copy(release, root / "release", skip=DECODER_FILE)
    state = torch.load(release / DECODER_FILE, weights_only=True)["state_dict"]
    state = {key: value for key, value in state.items() if not key.startswith("encoder.")}
    torch.save({"state_dict": {**state, **encoder_sd}}, folder / DECODER_FILE)

    flux_fill_pipeline(components).save_pretrained(root / "other")
    cache = hub_cache(root / "hf_cache", FLUX_FILL_REPO, root / "other")
    release_encoder = diffusers_encoder(encoder_sd, vae_config.down_block_types)
    components["vae"].encoder.load_state_dict(release_encoder)
    flux_fill_pipeline(components).save_pretrained(root / "equal")
    return folder, root / "equal", cache, release_encoder


def saved_flux_fill(folder: Path) -> FluxFillPipeline:
    """A saved tiny `FluxFillPipeline` (it has no text encoders)."""
    return FluxFillPipeline.from_pretrained(
        folder, **dict.fromkeys(("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"))
    )


def mask_latents(pipe, generator_seed: int = 0) -> torch.Tensor:
    """The packed masked-image latents `pipe` prepares for a fixed 32x48 image and hole (FluxFillPipeline's call)."""
    image = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(9)) * 2 - 1
    mask = torch.zeros(2, 1, 32, 48)
    mask[..., 8:24, 16:40] = 1
    _, latents = pipe.prepare_mask_latents(
        mask=mask,
        masked_image=image * (1 - mask),
        batch_size=2,
        num_channels_latents=16,
        num_images_per_prompt=1,
        height=32,
        width=48,
        dtype=torch.float32,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(generator_seed),
    )
    return latents


def test_encoder_equal_to_the_backbones_is_not_stored(tiny_release, tmp_path, capsys):
    """`--backbone FOLDER` with the same encoder: the fingerprints agree (for the release checkpoint and the diffusers
    VAE built from its weights), nothing more is stored, and the masked image is encoded as today: by the VAE."""
    release, equal, _, _ = tiny_release
    out = tmp_path / "out"
    assert convert_cli(["asuka-flux", "--release", str(release), "--out", str(out), "--backbone", str(equal)]) == 0
    assert "equals the VAE encoder" in capsys.readouterr().out
    record = json.loads((out / "conversion.json").read_text())["masked_image_encoder"]
    backbone_encoder = saved_flux_fill(equal).vae.encoder.state_dict()
    assert record["case"] == "equal" and not record["stored"]
    assert record["fingerprint"] == record["backbone_fingerprint"] == encoder_fingerprint(backbone_encoder)
    assert (
        not (out / "masked_image_encoder").exists() and "masked_image_encoder/" not in (out / "README.md").read_text()
    )
    assert json.loads((out / "model_index.json").read_text())["masked_image_encoder"] == [None, None]

    loaded = AsukaFluxPipeline.from_pretrained(out)  # the light repo, pointing to the backbone folder
    assert loaded.masked_image_encoder is None
    assert torch.equal(mask_latents(loaded), mask_latents(flux_fill_pipeline(loaded.components)))


def test_encoder_different_from_the_cached_backbones_is_stored_and_used(tiny_release, tmp_path, capsys):
    """The default backbone found in the Hub cache (never downloaded) with another encoder: the release's is stored
    and encodes the masked image, exactly as a diffusers VAE holding the release's encoder would, in the light repo
    and in the two-source assembly."""
    release, equal, cache, release_encoder = tiny_release
    out = tmp_path / "out"
    argv = ["asuka-flux", "--release", str(release), "--out", str(out), "--backbone-revision", BACKBONE_SHA]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        assert convert_cli(argv) == 0
    assert "differs from the VAE encoder" in capsys.readouterr().out
    record = json.loads((out / "conversion.json").read_text())["masked_image_encoder"]
    assert record["case"] == "different" and record["stored"]
    assert record["fingerprint"] == encoder_fingerprint(release_encoder) != record["backbone_fingerprint"]
    assert "masked_image_encoder/" in (out / "README.md").read_text()

    expected = mask_latents(saved_flux_fill(equal))  # a diffusers VAE with the release's encoder
    hub = dict(cache_dir=str(cache), revision=BACKBONE_SHA)
    for loaded in (
        AsukaFluxPipeline.from_pretrained(out, cache_dir=str(cache)),  # the light repo
        AsukaFluxPipeline.from_pretrained(FLUX_FILL_REPO, asuka=out, **hub),  # assembled from two sources
    ):
        assert isinstance(loaded.masked_image_encoder, AsukaVAEEncoder)
        assert torch.equal(mask_latents(loaded), expected)
        assert not torch.equal(mask_latents(flux_fill_pipeline(loaded.components)), expected)  # the backbone's VAE


def test_the_converted_mae_reads_images_as_the_release_does(converted):
    """The release's numbers come from its own input order, so the converted MAE is configured with it."""
    assert json.loads((converted / "mae" / "config.json").read_text())["input_preprocessing"] == "reference"
    assert AsukaMAE.from_pretrained(converted / "mae").config.input_preprocessing == "reference"


# ------------------------------------------------------------------------------------------ errors


def release_copy(release: Path, target: Path, skip: str = "") -> Path:
    """A release folder of symlinks to the seeded files (cheap), without `skip`."""
    target.mkdir()
    for name in RELEASE_FILES:
        if name != skip:
            os.symlink(release / name, target / name)
    return target


def run_cli_error(release: Path, out: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        convert_cli(["asuka-flux", "--release", str(release), "--out", str(out)])
    assert exit_info.value.code == 2
    assert not out.exists()  # nothing that could look like a converted folder
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    return capsys.readouterr().err


def test_missing_file_is_named(release, tmp_path, capsys):
    broken = release_copy(release, tmp_path / "release", skip="asuka_decoder.ckpt")
    assert "asuka_decoder.ckpt" in run_cli_error(broken, tmp_path / "out", capsys)


def test_wrong_shape_names_file_and_key(release, tmp_path, capsys):
    broken = release_copy(release, tmp_path / "release", skip="asuka_alignment_clip.pt")
    state = torch.load(release / "asuka_alignment_clip.pt", weights_only=True)
    state["2.linear2.weight"] = state["2.linear2.weight"][:, :100]
    torch.save(state, broken / "asuka_alignment_clip.pt")
    error = run_cli_error(broken, tmp_path / "out", capsys)
    assert "asuka_alignment_clip.pt" in error and "2.linear2.weight" in error


def test_wrong_null_embedding_shape_is_named(release, tmp_path, capsys):
    broken = release_copy(release, tmp_path / "release", skip="vec.pt")
    torch.save(torch.zeros(1, 4096), broken / "vec.pt")
    error = run_cli_error(broken, tmp_path / "out", capsys)
    assert "vec.pt" in error and "(1, 768)" in error


@pytest.mark.parametrize("key", ["decoder.up.9.block.0.conv1.weight", "encoder.down.9.block.0.conv1.weight"])
def test_unexpected_key_names_file_and_key(release, tmp_path, capsys, key):
    broken = release_copy(release, tmp_path / "release", skip="asuka_decoder.ckpt")
    checkpoint = torch.load(release / "asuka_decoder.ckpt", weights_only=True)
    checkpoint["state_dict"][key] = torch.zeros(3, 3, 3, 3)
    torch.save(checkpoint, broken / "asuka_decoder.ckpt")
    error = run_cli_error(broken, tmp_path / "out", capsys)
    assert "asuka_decoder.ckpt" in error and key in error


class SideEffect:
    """Unpickling this would create a file: the converter must never get that far."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_non_tensor_object_is_refused_without_unpickling(release, tmp_path, capsys):
    broken = release_copy(release, tmp_path / "release", skip="mae_300.pth")
    marker = tmp_path / "unpickled"
    torch.save({"model": {"pos_embed": SideEffect(str(marker))}}, broken / "mae_300.pth")
    error = run_cli_error(broken, tmp_path / "out", capsys)
    assert "mae_300.pth" in error and "Refusing" in error
    assert not marker.exists()


def test_plain_non_tensor_value_is_refused(release, tmp_path, capsys):
    broken = release_copy(release, tmp_path / "release", skip="asuka_alignment_t5.pt")
    state = torch.load(release / "asuka_alignment_t5.pt", weights_only=True)
    state["0.bias"] = [0.0] * NARROW
    torch.save(state, broken / "asuka_alignment_t5.pt")
    error = run_cli_error(broken, tmp_path / "out", capsys)
    assert "asuka_alignment_t5.pt" in error and "'0.bias'" in error and "not a tensor" in error


def test_existing_output_is_not_overwritten(release, converted, capsys):
    before = sorted(p.name for p in converted.iterdir())
    with pytest.raises(SystemExit):
        convert_cli(["asuka-flux", "--release", str(release), "--out", str(converted)])
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in converted.iterdir()) == before


def test_half_written_output_never_looks_valid(tmp_path, monkeypatch):
    """A failure while saving (here: the decoder, after the MAE and aligners) leaves nothing at --out."""
    components = make_tiny_flux_components()
    out = tmp_path / "out"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(AsukaDecoder, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        write_components(components, out, card="", metadata={})
    assert not out.exists() and list(tmp_path.iterdir()) == []

    partial = tmp_path / "partial"  # what an interrupted non-atomic writer would leave
    components["mae"].save_pretrained(partial / "mae")
    with pytest.raises(ValueError, match="decoder"):
        load_asuka_flux_components(partial)


# ------------------------------------------------------------------------------------------ Hub (faked, no network)


def test_release_repo_id_downloads_only_the_release_files(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, **kwargs):
        calls.append((repo_id, sorted(allow_patterns)))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_release("yikaiwang/ASUKA-FLUX.1-Fill") == tmp_path
    assert calls == [("yikaiwang/ASUKA-FLUX.1-Fill", sorted(RELEASE_FILES))]
    with pytest.raises(ValueError, match="neither a folder nor a Hub repo"):
        resolve_release("not a repo id")


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create", repo_id, exist_ok, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, folder_path))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    push_folder(tmp_path, "me/asuka-flux", token="t", private=True)
    assert calls == [
        ("init", "t"),
        ("create", "me/asuka-flux", True, True),
        ("upload", "me/asuka-flux", str(tmp_path)),
    ]
