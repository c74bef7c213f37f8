"""`python -m asuka.convert mae` on a tiny random transformers `ViTMAEForPreTraining` (saved to a tmp folder) and
the same weights as an MAE-repository `.pth`: every weight mapped, the encoder and the reconstruction equal to
ViTMAE's run from its own modules with the cls token left out, strict and safe loading, the CLI end to end."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTMAEForPreTraining

from asuka.convert.__main__ import main as convert_main
from asuka.convert.mae import convert_mae
from asuka.models.mae import IMAGENET_MEAN, IMAGENET_STD, AsukaMAE, get_2d_sincos_pos_embed
from tests.support.vitmae import tiny_vitmae


@pytest.fixture(scope="module")
def vitmae(tmp_path_factory):
    """A seeded tiny ViTMAE (every weight random, LayerNorms too; MAE's sin-cos tables) and its saved folder."""
    model = tiny_vitmae(random_weights=True)
    folder = tmp_path_factory.mktemp("vitmae") / "tiny-vit-mae"
    model.save_pretrained(folder)
    return model, folder


def mae_repository_state_dict(model: ViTMAEForPreTraining) -> dict[str, torch.Tensor]:
    """The tiny model's weights in the MAE repository's names (`models_mae.MaskedAutoencoderViT`)."""
    vit, decoder = model.vit, model.decoder
    out = {
        "cls_token": vit.embeddings.cls_token,
        "pos_embed": vit.embeddings.position_embeddings,
        "patch_embed.proj.weight": vit.embeddings.patch_embeddings.projection.weight,
        "patch_embed.proj.bias": vit.embeddings.patch_embeddings.projection.bias,
        "norm.weight": vit.layernorm.weight,
        "norm.bias": vit.layernorm.bias,
        "decoder_embed.weight": decoder.decoder_embed.weight,
        "decoder_embed.bias": decoder.decoder_embed.bias,
        "mask_token": decoder.mask_token,
        "decoder_pos_embed": decoder.decoder_pos_embed,
        "decoder_norm.weight": decoder.decoder_norm.weight,
        "decoder_norm.bias": decoder.decoder_norm.bias,
        "decoder_pred.weight": decoder.decoder_pred.weight,
        "decoder_pred.bias": decoder.decoder_pred.bias,
    }
    for prefix, layers in (("blocks", vit.layers), ("decoder_blocks", decoder.decoder_layers)):
        for i, layer in enumerate(layers):
            attn = layer.attention
            for param in ("weight", "bias"):
                qkv = [getattr(attn, f"{x}_proj").get_parameter(param) for x in "qkv"]
                out[f"{prefix}.{i}.attn.qkv.{param}"] = torch.cat(qkv)
                out[f"{prefix}.{i}.attn.proj.{param}"] = attn.o_proj.get_parameter(param)
                out[f"{prefix}.{i}.norm1.{param}"] = layer.layernorm_before.get_parameter(param)
                out[f"{prefix}.{i}.norm2.{param}"] = layer.layernorm_after.get_parameter(param)
                out[f"{prefix}.{i}.mlp.fc1.{param}"] = layer.mlp.fc1.get_parameter(param)
                out[f"{prefix}.{i}.mlp.fc2.{param}"] = layer.mlp.fc2.get_parameter(param)
    return {key: value.detach().clone() for key, value in out.items()}


@pytest.fixture(scope="module")
def mae_pth(vitmae, tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "mae_visualize_tiny.pth"
    torch.save({"model": mae_repository_state_dict(vitmae[0])}, path)
    return path


def assert_all_weights_mapped(model: ViTMAEForPreTraining, mae: AsukaMAE) -> None:
    """Every AsukaMAE tensor, one by one: the source's (fused qkv = cat(q, k, v)), or a documented addition."""
    source = mae_repository_state_dict(model)
    converted = mae.state_dict()
    added = {"alpha", "decoder_patch_embed.proj.weight", "decoder_patch_embed.proj.bias"}
    rebuilt = {"pos_embed", "decoder_pos_embed"}
    assert set(converted) == (set(source) - {"cls_token"}) | added
    for key in set(converted) - added - rebuilt:
        assert torch.equal(converted[key], source[key]), key
    for key in rebuilt:
        assert torch.allclose(converted[key], source[key][:, 1:], atol=1e-6), key
    q, k, v = (getattr(model.vit.layers[1].attention, f"{x}_proj").weight for x in "qkv")
    assert torch.equal(converted["blocks.1.attn.qkv.weight"], torch.cat([q, k, v]))
    assert converted["alpha"].item() == 1.0
    assert not converted["decoder_patch_embed.proj.weight"].any()
    assert not converted["decoder_patch_embed.proj.bias"].any()
    assert converted["decoder_patch_embed.proj.weight"].shape == (16, 4, 8, 8)


@torch.no_grad()
def assert_same_function(model: ViTMAEForPreTraining, mae: AsukaMAE) -> None:
    """On a fully visible image, ViTMAE's encoder run from its own modules on the patch tokens (no cls token) gives
    AsukaMAE's encoder output, and ViTMAE's decoder so run gives AsukaMAE's reconstruction."""
    torch.manual_seed(1)
    image, mask = torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)
    captured = {}
    handle = mae.norm.register_forward_hook(lambda module, args, output: captured.update(encoder=output))
    reconstruction = mae.reconstruct(image, mask)
    handle.remove()

    x = mae.preprocess(image, mask)[0]
    embeddings, decoder = model.vit.embeddings, model.decoder
    h = embeddings.patch_embeddings(x) + embeddings.position_embeddings[:, 1:]
    for layer in model.vit.layers:
        h = layer(h)
    h = model.vit.layernorm(h)
    assert torch.allclose(captured["encoder"], h, atol=1e-5)

    d = decoder.decoder_embed(h) + decoder.decoder_pos_embed[:, 1:]
    for layer in decoder.decoder_layers:
        d = layer(d)
    pixels = model.unpatchify(decoder.decoder_pred(decoder.decoder_norm(d)), (32, 32))
    expected = pixels * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(reconstruction, expected, atol=1e-5)


def test_vitmae_folder_maps_every_weight_and_runs_the_same(vitmae):
    model, folder = vitmae
    mae, record = convert_mae(folder)
    assert_all_weights_mapped(model, mae)
    assert_same_function(model, mae)
    config = mae.config
    assert (config.image_size, config.patch_size, config.in_channels) == (32, 8, 3)
    assert (config.embed_dim, config.depth, config.num_heads) == (32, 2, 4)
    assert (config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads) == (16, 2, 2)
    assert (config.mlp_ratio, config.norm_eps, config.input_preprocessing) == (2.0, 1e-5, "visible")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert record["sha256"]["model.safetensors"] == digest


def test_mae_repository_pth_converts_the_same(vitmae, mae_pth):
    model, folder = vitmae
    mae, record = convert_mae(mae_pth, num_heads=4, decoder_num_heads=2)
    assert_all_weights_mapped(model, mae)
    assert_same_function(model, mae)
    from_folder = convert_mae(folder)[0].state_dict()
    assert all(torch.equal(value, from_folder[key]) for key, value in mae.state_dict().items())
    assert mae.config.norm_eps == 1e-6  # MAE's own; a .pth does not store it
    assert record["sha256"] == {mae_pth.name: hashlib.sha256(mae_pth.read_bytes()).hexdigest()}


def test_pth_heads_default_to_the_mae_models_and_unknown_widths_ask_for_them(mae_pth):
    with pytest.raises(ValueError, match="32 wide.*--num-heads"):
        convert_mae(mae_pth)


def test_image_size_rebuilds_the_tables_for_the_new_grid(vitmae):
    with pytest.raises(ValueError, match="--image-size is 44; accepted: a positive multiple of the patch size 8"):
        convert_mae(vitmae[1], image_size=44)
    mae, _ = convert_mae(vitmae[1], image_size=48, prior_layer=2)
    assert mae.config.image_size == 48 and mae.config.prior_layer == 2
    assert torch.allclose(mae.pos_embed, get_2d_sincos_pos_embed(32, 6))
    assert torch.isfinite(mae.prior(torch.rand(1, 3, 40, 40), torch.zeros(1, 1, 40, 40))).all()


class Payload:
    """An arbitrary object: unpickling it would run code from an untrusted file."""


def test_refuses_pickles_holding_anything_but_tensors(vitmae, tmp_path):
    state_dict = mae_repository_state_dict(vitmae[0])
    evil = tmp_path / "evil.pth"
    torch.save({"model": {**state_dict, "payload": Payload()}}, evil)
    with pytest.raises(ValueError, match="evil.pth.*weights_only"):
        convert_mae(evil, num_heads=4, decoder_num_heads=2)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {**state_dict, "epoch": 3}}, plain)
    with pytest.raises(ValueError, match="'epoch' holds a int, not a tensor"):
        convert_mae(plain, num_heads=4, decoder_num_heads=2)


def edited_folder(folder, tmp_path, edit):
    """A copy of the ViTMAE folder with `edit` applied to its safetensors state dict."""
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "config.json").write_text((folder / "config.json").read_text())
    state_dict = load_file(folder / "model.safetensors")
    edit(state_dict)
    save_file(state_dict, copy / "model.safetensors")
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"vit.extra.weight": torch.zeros(1)}), "Unexpected key 'vit.extra.weight'"),
        (
            lambda sd: sd.update({"vit.encoder.layer.1.output.dense.bias": torch.zeros(5)}),
            "Wrong shape for MAE key 'vit.encoder.layer.1.output.dense.bias': got \\(5,\\)",
        ),
        (lambda sd: sd.pop("decoder.decoder_norm.bias"), "Missing MAE key.*decoder_norm.bias"),
        (
            lambda sd: sd.update({"decoder.decoder_pos_embed": torch.randn(1, 17, 16)}),
            "'decoder.decoder_pos_embed' is not MAE's fixed 2-D sin-cos table",
        ),
    ],
    ids=["unexpected", "wrong-shape", "missing", "learned-table"],
)
def test_bad_folders_are_clear_errors(vitmae, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        convert_mae(edited_folder(vitmae[1], tmp_path, edit))


def test_encoder_only_checkpoint_and_missing_source_are_clear_errors(vitmae, tmp_path, capsys):
    state_dict = mae_repository_state_dict(vitmae[0])
    encoder_only = {k: v for k, v in state_dict.items() if not k.startswith(("decoder", "mask"))}
    path = tmp_path / "mae_pretrain_tiny.pth"
    torch.save({"model": encoder_only}, path)
    with pytest.raises(ValueError, match="missing key 'decoder_embed.weight'.*encoder only"):
        convert_mae(path, num_heads=4, decoder_num_heads=2)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["mae", "--from", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "absent.pth: no such file or folder" in capsys.readouterr().err


def test_cli_writes_a_folder_that_loads_offline(vitmae, tmp_path, monkeypatch):
    model, folder = vitmae
    out = tmp_path / "mae"
    assert convert_main(["mae", "--from", str(folder), "--out", str(out)]) == 0
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.glob("*.bin")) and not list(tmp_path.glob(".mae.incomplete-*"))
    record = json.loads((out / "conversion.json").read_text())
    assert record["source"] == str(folder) and record["initialised"] == {"alpha": 1.0, "decoder_patch_embed": "zeros"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    mae = AsukaMAE.from_pretrained(out)
    assert mae.config.input_preprocessing == "visible"
    assert_all_weights_mapped(model, mae)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["mae", "--from", str(folder), "--out", str(out)])
    assert exit_info.value.code == 2


def test_hub_id_reads_the_downloaded_folder_and_an_unreachable_one_is_a_clear_error(vitmae, monkeypatch):
    import huggingface_hub

    requested = []

    def snapshot_download(repo_id, allow_patterns):
        requested.append((repo_id, allow_patterns))
        if repo_id != "facebook/tiny-vit-mae":
            raise huggingface_hub.errors.LocalEntryNotFoundError("offline")
        return str(vitmae[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    mae, record = convert_mae("facebook/tiny-vit-mae")
    assert_all_weights_mapped(vitmae[0], mae)
    assert record["source"] == "facebook/tiny-vit-mae" and record["norm_pix_loss"] is False
    assert "model.safetensors" in requested[0][1] and "config.json" in requested[0][1]
    with pytest.raises(ValueError, match="no-such/mae: no such file or folder, and no Hub model repo"):
        convert_mae("no-such/mae")
    with pytest.raises(ValueError, match="for a .pth only"):
        convert_mae("facebook/tiny-vit-mae", num_heads=12)
    assert len(requested) == 2  # refused before any download
