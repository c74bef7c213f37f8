"""`python -m asuka.convert strdiffusion` on tiny seeded checkpoints: with and without `module.` prefixes,
wrong-shape keys, pickles holding non-tensor objects, safetensors inputs, no overwrite of an existing folder, offline
reload of the written folder."""

import pytest
import torch
from safetensors.torch import save_file

from asuka.convert.__main__ import main as convert_main
from asuka.convert.strdiffusion import convert_strdiffusion, load_official_state_dict
from asuka.models.strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline
from asuka.testing.strdiffusion import TINY_UNET
from tests.support.seeded import seeded_state_dict


def seeded(model: torch.nn.Module, seed: int) -> dict:
    """Official-format weights for `model`'s keys, drawn with the README's seeded rule."""
    return seeded_state_dict([(k, v.shape) for k, v in model.state_dict().items()], seed=seed)


@pytest.fixture()
def checkpoints(tmp_path):
    nets = {
        "texture": StrDiffusionUNet(in_channels=3, structure_channels=1, **TINY_UNET),
        "structure": StrDiffusionUNet(in_channels=1, structure_channels=0, **TINY_UNET),
        "discriminator": StrDiffusionDiscriminator(base_channels=4, t_emb_dim=16),
    }
    weights = {name: seeded(net, seed) for seed, (name, net) in enumerate(nets.items())}
    return tmp_path, weights


def write(path, state_dict, prefix=""):
    torch.save({prefix + k: v for k, v in state_dict.items()}, path)
    return str(path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_cli_converts_and_folder_loads_offline(checkpoints, prefix, monkeypatch):
    tmp, weights = checkpoints
    files = {name: write(tmp / f"{name}.pth", sd, prefix) for name, sd in weights.items()}
    out = tmp / "pipe"
    argv = ["strdiffusion", "--texture", files["texture"], "--structure", files["structure"]]
    assert convert_main(argv + ["--discriminator", files["discriminator"], "--out", str(out)]) == 0
    assert (out / "model_index.json").exists()
    assert (out / "discriminator" / "diffusion_pytorch_model.safetensors").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StrDiffusionPipeline.from_pretrained(out)
    for name, module in [
        ("texture", pipe.texture_unet),
        ("structure", pipe.structure_unet),
        ("discriminator", pipe.discriminator),
    ]:
        loaded = module.state_dict()
        assert set(loaded) == set(weights[name])
        assert all(torch.equal(loaded[k], v) for k, v in weights[name].items())
    assert pipe.texture_unet.config.base_channels == TINY_UNET["base_channels"]
    assert pipe.scheduler.config.num_train_timesteps == 100 and pipe.config.resample_u_max == 6


def test_converted_components_are_built_without_init_and_keep_constant_buffers(checkpoints):
    """Parameters are the checkpoint's own tensors (built on the meta device, loaded with assign); buffers outside
    the state dict (the discriminator's FIR kernels) are real, equal to a freshly built model's."""
    tmp, weights = checkpoints
    files = {name: write(tmp / f"{name}.pth", sd) for name, sd in weights.items()}
    components = convert_strdiffusion(files["texture"], files["structure"], files["discriminator"])
    fresh = StrDiffusionDiscriminator(base_channels=4, t_emb_dim=16)
    for name in ("texture_unet", "structure_unet", "discriminator"):
        tensors = [*components[name].parameters(), *components[name].buffers()]
        assert tensors and not any(t.is_meta for t in tensors)
    fresh_buffers = dict(fresh.named_buffers())
    assert any(key not in fresh.state_dict() for key in fresh_buffers)
    for key, buffer in components["discriminator"].named_buffers():
        if key not in fresh.state_dict():
            assert torch.equal(buffer, fresh_buffers[key])


def test_wrong_shape_key_is_a_clear_error(checkpoints, capsys):
    tmp, weights = checkpoints
    bad = dict(weights["structure"])
    bad["final_conv.bias"] = torch.zeros(5)
    files = [
        write(tmp / "t.pth", weights["texture"]),
        write(tmp / "s.pth", bad),
        write(tmp / "d.pth", weights["discriminator"]),
    ]
    argv = [
        "strdiffusion",
        "--texture",
        files[0],
        "--structure",
        files[1],
        "--discriminator",
        files[2],
        "--out",
        str(tmp / "o"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        convert_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "s.pth" in err and "final_conv.bias" in err and "(5,)" in err


def test_swapped_files_and_missing_keys_are_errors(checkpoints):
    from asuka.convert.strdiffusion import convert_denoiser, convert_strdiffusion

    tmp, weights = checkpoints
    t, s, d = (write(tmp / f"{n}.pth", weights[n]) for n in ("texture", "structure", "discriminator"))
    with pytest.raises(ValueError, match="swapped"):
        convert_strdiffusion(s, t, d)
    partial = dict(weights["structure"])
    partial.pop("final_conv.bias")
    with pytest.raises(ValueError, match="missing.*final_conv.bias"):
        convert_denoiser(partial, "Gs.pth")


class Payload:
    """An arbitrary object: unpickling it would run code from an untrusted file."""


def test_refuses_pickles_with_non_tensor_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "obj": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth.*weights_only"):
        load_official_state_dict(path)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(ValueError, match="flat mapping"):
        load_official_state_dict(nested)


def test_safetensors_checkpoints_load_like_pickles(checkpoints):
    tmp, weights = checkpoints
    save_file({"module." + k: v for k, v in weights["discriminator"].items()}, tmp / "D.safetensors")
    loaded = load_official_state_dict(tmp / "D.safetensors")
    assert loaded.keys() == weights["discriminator"].keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights["discriminator"].items())


def test_existing_output_is_not_overwritten(checkpoints, capsys):
    tmp, weights = checkpoints
    files = [write(tmp / f"{n}.pth", weights[n]) for n in ("texture", "structure", "discriminator")]
    out = tmp / "pipe"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["strdiffusion", "--texture", files[0], "--structure", files[1], "--discriminator", files[2]]
    with pytest.raises(SystemExit) as exit_info:
        convert_main(argv + ["--out", str(out)])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert convert_main(argv + ["--out", str(out), "--overwrite"]) == 0
    assert (out / "model_index.json").is_file() and not (out / "keep.txt").exists()
