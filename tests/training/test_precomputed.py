"""Precomputed aligner inputs: `training/prepare_aligner_inputs.py` and `train_aligner.py --precomputed`.

A run from the stored VAE posteriors and MAE priors gives the loss sequence of the run that encodes on the fly (same
seed, same pairs); prepare resumes without redoing complete shards, two processes store what one stores, and a
folder prepared for another run is refused. CPU, tiny components, no network.
"""

import subprocess

import numpy as np
import prepare_aligner_inputs
import pytest
import torch
import train_aligner
from safetensors.torch import load_file

import asuka_training
from asuka_training import precomputed
from asuka_training.aligner_inputs import vae_posteriors
from tests.support.accelerate_launch import two_process_launch
from tests.support.training import (
    ROOT,
    launch_env,
    random_images,
    tiny_pipeline_dir,
)


RESOLUTION = 32  # the tiny VAE halves it: 16x16 latents
# Data flags shared by the on-the-fly run and prepare: random crops and flips, so the pairs depend on the seed
DATA = {"resolution": RESOLUTION, "random_crop": True, "random_flip": True, "seed": 0}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_pipeline_dir(tmp_path_factory, "sd")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Five random images of different sizes plus one unreadable file (replaced by the next image and counted)."""
    folder = random_images(tmp_path_factory.mktemp("images"), [(40, 48), (64, 36), (33, 33), (48, 40), (36, 50)])
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def argv_of(flags: dict) -> list[str]:
    """`--key value` per flag; `True` stands for a bare switch, `None` for a flag left out, a tuple for values."""
    argv = []
    for key, value in flags.items():
        if value is not None:
            values = [] if value is True else value if isinstance(value, tuple) else [value]
            argv += [f"--{key}", *map(str, values)]
    return argv


def prepare_argv(pipeline_dir, image_dir, output_dir, **flags):
    """Prepare's flags: the data flags of the training runs, two epochs in shards of 4, encoded 3 at a time."""
    return argv_of(
        {
            "pretrained_model_name_or_path": pipeline_dir,
            "train_data_dir": image_dir,
            "output_dir": output_dir,
            **DATA,
            "num_epochs": 2,
            "shard_size": 4,
            "batch_size": 3,
            "num_validation_images": 2,
            **flags,
        }
    )


def aligner_argv(pipeline_dir, output_dir, steps=5, **flags):
    """A tiny aligner run of batch 2 on `train_data_dir=...`, or with `precomputed=DIR` on the shards; p falls from 1
    to 0.1 over 4 steps, so both priors are drawn; no checkpoints or grids."""
    return argv_of(
        {
            "pretrained_model_name_or_path": pipeline_dir,
            "output_dir": output_dir,
            "max_train_steps": steps,
            "train_batch_size": 2,
            "report_to": "none",
            **DATA,
            "prior_prob_decay_steps": 4,
            "checkpointing_steps": 0,
            "validation_steps": 0,
            "num_validation_images": 2,
            **flags,
        }
    )


@pytest.fixture(scope="module")
def prepared(pipeline_dir, image_dir, tmp_path_factory):
    """One complete prepare run: 6 images x 2 epochs = 12 samples in 3 shards."""
    folder = tmp_path_factory.mktemp("prepared") / "inputs"
    result = prepare_aligner_inputs.main(prepare_argv(pipeline_dir, image_dir, folder))
    return folder, result


def shard_tensors(folder):
    return {path.name: load_file(str(path)) for path in sorted(folder.glob("shard-*.safetensors"))}


def test_the_stored_run_repeats_the_losses_of_the_run_that_encodes(pipeline_dir, image_dir, prepared, tmp_path):
    folder, result = prepared
    assert result.written == [0, 1, 2] and result.skipped == []
    # 5 steps of batch 2 over 6 images: all of epoch 0 (3 steps) and 2 steps of epoch 1
    on_the_fly = train_aligner.main(aligner_argv(pipeline_dir, tmp_path / "encoded", train_data_dir=image_dir))
    grid = {"validation_steps": 5, "validation_inference_steps": 2}  # one grid of the stored pixels, after step 5
    from_shards = train_aligner.main(aligner_argv(pipeline_dir, tmp_path / "stored", precomputed=folder, **grid))
    assert len(on_the_fly.losses) == len(from_shards.losses) == 5
    assert (tmp_path / "stored" / "validation" / "validation-0000005.png").is_file()
    np.testing.assert_allclose(from_shards.losses, on_the_fly.losses, rtol=0, atol=1e-5)
    assert len(set(np.round(on_the_fly.losses, 4))) == 5  # five different batches, not one repeated
    assert from_shards.num_bad_images == on_the_fly.num_bad_images >= 1  # the broken file was met in both
    # the same aligner comes out
    encoded = load_file(str(tmp_path / "encoded" / "diffusion_pytorch_model.safetensors"))
    stored = load_file(str(tmp_path / "stored" / "diffusion_pytorch_model.safetensors"))
    for key, value in encoded.items():
        torch.testing.assert_close(stored[key], value, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """The tiny FLUX pipeline with a masked-image encoder of its own (random weights), as the converted ASUKA-FLUX
    release has one."""
    from asuka import AsukaFluxPipeline
    from asuka.models import AsukaVAEEncoder
    from asuka.testing import make_tiny_pipeline

    pipe = make_tiny_pipeline("flux", seed=0)
    torch.manual_seed(1)
    encoder = AsukaVAEEncoder(**AsukaVAEEncoder.config_from_vae(pipe.vae.config))
    folder = tmp_path_factory.mktemp("tiny_flux_encoder")
    AsukaFluxPipeline(**{**pipe.components, "masked_image_encoder": encoder}).save_pretrained(folder)
    return folder


def test_flux_from_shards_repeats_the_losses_of_the_run_that_encodes(flux_dir, image_dir, tmp_path):
    """FLUX.1-Fill: both aligners, flow matching, a guidance drawn per sample; the masked image through the folder's
    own encoder in both runs."""
    from asuka.models import AsukaVAEEncoder

    folder = tmp_path / "inputs"
    prepare_aligner_inputs.main(prepare_argv(flux_dir, image_dir, folder))
    flags = {"guidance_range": (1, 4), "learning_rate": 1e-3}
    on_the_fly = train_aligner.main(aligner_argv(flux_dir, tmp_path / "encoded", train_data_dir=image_dir, **flags))
    from_shards = train_aligner.main(aligner_argv(flux_dir, tmp_path / "stored", precomputed=folder, **flags))
    assert len(on_the_fly.losses) == 5
    np.testing.assert_allclose(from_shards.losses, on_the_fly.losses, rtol=0, atol=1e-5)
    assert len(set(np.round(on_the_fly.losses, 4))) == 5
    # the stored masked-image posterior is the folder's encoder's, not the VAE's
    stored = precomputed.PrecomputedDataset(folder, {})[0]
    encoder = AsukaVAEEncoder.from_pretrained(flux_dir, subfolder="masked_image_encoder")
    args = train_aligner.build_aligner_parser().parse_args(aligner_argv(flux_dir, "-", train_data_dir=image_dir))
    sample = asuka_training.build_dataset(args)[0]
    masked = (sample["pixel_values"][None] * 2 - 1) * (1 - sample["mask"][None])
    with torch.no_grad():
        expected = encoder.encode(masked).latent_dist.mean[0]
    torch.testing.assert_close(stored["masked_latent_mean"], expected, rtol=1e-5, atol=1e-6)
    assert precomputed.read_manifest(folder)["masked_image_encoder"]["class"] == "AsukaVAEEncoder"


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_bf16_inputs_are_stored_in_bf16_and_repeat_the_bf16_run(pipeline_dir, image_dir, tmp_path):
    """Under --mixed_precision bf16 the frozen models run, and the inputs are stored, in bf16 (half the bytes); at
    batch 1."""
    folder = tmp_path / "inputs"
    bf16 = {"mixed_precision": "bf16"}
    # bf16 rounding depends on the batch the VAE and MAE see (their kernels differ): encode as the training batch
    prepare = {"num_epochs": 1, "shard_size": 8, "batch_size": 1, **bf16}
    prepare_aligner_inputs.main(prepare_argv(pipeline_dir, image_dir, folder, **prepare))
    assert precomputed.read_manifest(folder)["dtype"] == "bfloat16"
    assert precomputed.PrecomputedDataset(folder, {})[0]["prior"].dtype == torch.bfloat16
    steps = {"steps": 3, "train_batch_size": 1, **bf16}  # batch 1: the VAE's latents are contiguous, not channels-last
    on_the_fly = train_aligner.main(aligner_argv(pipeline_dir, tmp_path / "a", train_data_dir=image_dir, **steps))
    from_shards = train_aligner.main(aligner_argv(pipeline_dir, tmp_path / "b", precomputed=folder, **steps))
    np.testing.assert_allclose(from_shards.losses, on_the_fly.losses, rtol=0, atol=1e-5)


def test_stored_samples_are_the_training_data_and_its_encodings(pipeline_dir, image_dir, prepared):
    """Each stored sample is the on-the-fly data's (epoch, index) item: its mask bit for bit, its posteriors and
    priors those of the frozen VAE and MAE on its pixels; the validation batch is the on-the-fly run's."""
    from diffusers import AutoencoderKL

    from asuka.models import AsukaMAE

    folder, _ = prepared
    manifest = precomputed.read_manifest(folder)
    assert (manifest["samples_per_epoch"], manifest["num_epochs"], manifest["count"]) == (6, 2, 12)
    args = train_aligner.build_aligner_parser().parse_args(aligner_argv(pipeline_dir, "-", train_data_dir=image_dir))
    data = asuka_training.build_dataset(args)
    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    mae = AsukaMAE.from_pretrained(pipeline_dir, subfolder="mae")
    stored = precomputed.PrecomputedDataset(folder, {})
    for epoch, index in [(0, 0), (0, 5), (1, 2)]:
        data.set_epoch(epoch)
        stored.set_epoch(epoch)
        expected, sample = data[index], stored[index]
        assert torch.equal(sample["mask"], expected["mask"])
        assert sample["num_bad_images"] == expected["num_bad_images"]
        pixels, mask = expected["pixel_values"][None], expected["mask"][None]
        with torch.no_grad():
            posterior = vae.encode(pixels * 2 - 1).latent_dist
            masked = vae.encode((pixels * 2 - 1) * (1 - mask)).latent_dist
            references = {
                "latent_mean": posterior.mean,
                "latent_std": posterior.std,
                "masked_latent_mean": masked.mean,
                "masked_latent_std": masked.std,
                "prior": mae.prior(pixels, mask),
                "prior_full": mae.prior(pixels, torch.zeros_like(mask)),
            }
        for name, reference in references.items():
            torch.testing.assert_close(sample[name], reference[0], rtol=1e-5, atol=1e-6, msg=name)
    masks = []
    for epoch in (0, 1):
        stored.set_epoch(epoch)
        masks.append([stored[index]["mask"] for index in range(6)])
    assert any(not torch.equal(*pair) for pair in zip(*masks))  # each epoch draws its own masks
    validation = asuka_training.validation_batch(asuka_training.build_dataset(args), 2)
    stored_validation = stored.validation_batch(2)
    for name in ("pixel_values", "mask"):
        assert torch.equal(stored_validation[name], validation[name])


def test_sampling_from_the_posterior_is_diffusers_latent_dist_sample(pipeline_dir):
    """The on-the-fly latents are drawn as before (diffusers' `latent_dist.sample()`), now from (mean, std); the stored
    posteriors are given the layout of the VAE's (`latent_memory_format`)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    pixels, mask = torch.rand(2, 3, RESOLUTION, RESOLUTION), torch.zeros(2, 1, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        distribution = vae.encode(pixels * 2 - 1).latent_dist
        torch.manual_seed(3)
        expected = distribution.sample() * vae.config.scaling_factor
        torch.manual_seed(3)
        drawn = asuka_training.sample_latents(vae.config, distribution.mean, distribution.std)
        read_back = {name: tensor.contiguous() for name, tensor in vae_posteriors(vae, pixels, mask).items()}
        stored = asuka_training.StoredInputs("cpu", torch.float32, vae).posteriors({**read_back, "mask": mask})
        torch.manual_seed(3)
        from_stored = asuka_training.sample_latents(vae.config, stored["latent_mean"], stored["latent_std"])
    assert torch.equal(drawn, expected)
    assert drawn.stride() == expected.stride()  # the same layout, so noise drawn like it (randn_like) falls alike
    assert torch.equal(from_stored, expected) and from_stored.stride() == expected.stride()


def test_prepare_resumes_without_redoing_complete_shards(pipeline_dir, image_dir, prepared, tmp_path, monkeypatch):
    folder = tmp_path / "inputs"
    save_atomic = precomputed.save_atomic

    def killed_while_writing(tensors, path):
        if path.name == precomputed.shard_name(1):
            path.with_name(f".partial-{path.name}").write_bytes(b"half a shard")
            raise KeyboardInterrupt("killed")
        save_atomic(tensors, path)

    monkeypatch.setattr(precomputed, "save_atomic", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        prepare_aligner_inputs.main(prepare_argv(pipeline_dir, image_dir, folder))
    monkeypatch.undo()
    first = folder / precomputed.shard_name(0)
    assert first.is_file() and not (folder / precomputed.shard_name(1)).exists()
    with pytest.raises(ValueError, match="incomplete: 2 of 3 shards are missing"):
        precomputed.PrecomputedDataset(folder, {})
    written_before = first.stat().st_mtime_ns

    encoded = []
    encode_shard = prepare_aligner_inputs.encode_shard
    monkeypatch.setattr(
        prepare_aligner_inputs, "encode_shard", lambda *a: encoded.append(list(a[2])) or encode_shard(*a)
    )
    resumed = prepare_aligner_inputs.main(prepare_argv(pipeline_dir, image_dir, folder))
    assert resumed.skipped == [0] and resumed.written == [1, 2]
    assert encoded == [[4, 5, 6, 7], [8, 9, 10, 11]]  # shard 0's samples were not encoded again
    assert first.stat().st_mtime_ns == written_before
    assert not list(folder.glob(".partial-*"))
    reference = shard_tensors(prepared[0])
    for name, tensors in shard_tensors(folder).items():
        assert tensors.keys() == reference[name].keys()
        for key, value in tensors.items():
            assert torch.equal(value, reference[name][key]), (name, key)


def test_each_process_writes_every_nth_shard():
    for num_shards in (1, 5, 8):
        for processes in (1, 2, 3):
            parts = [precomputed.process_shards(num_shards, p, processes) for p in range(processes)]
            assert sorted(k for part in parts for k in part) == list(range(num_shards))
    assert precomputed.process_shards(5, 1, 2) == [1, 3]
    assert list(precomputed.shard_positions(2, 10, 4)) == [8, 9]


def test_two_processes_store_what_one_stores(pipeline_dir, image_dir, prepared, tmp_path):
    folder = tmp_path / "inputs"
    command = two_process_launch(
        str(ROOT / "training" / "prepare_aligner_inputs.py"),
        *prepare_argv(pipeline_dir, image_dir, folder),
        main_process_port=29531,
    )
    completed = subprocess.run(command, env=launch_env(), capture_output=True, text=True, timeout=600)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    assert "on process 0 of 2" in log, log[-3000:]
    assert precomputed.read_manifest(folder) == precomputed.read_manifest(prepared[0])
    reference = shard_tensors(prepared[0])
    stored = shard_tensors(folder)
    assert stored.keys() == reference.keys()
    for name, tensors in stored.items():
        for key, value in tensors.items():
            torch.testing.assert_close(value, reference[name][key], rtol=0, atol=0, msg=f"{name} {key}")


def test_a_folder_prepared_for_another_run_is_refused(pipeline_dir, image_dir, prepared, tmp_path_factory, tmp_path):
    from diffusers import AutoencoderKL

    folder, _ = prepared
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=r"resolution: 32 != 16"):
        train_aligner.main(aligner_argv(pipeline_dir, output, precomputed=folder, resolution=16))
    flux_dir = tiny_pipeline_dir(tmp_path_factory, "flux")
    flux_inputs = tmp_path / "flux-inputs"
    prepare_aligner_inputs.main(prepare_argv(flux_dir, image_dir, flux_inputs, num_epochs=1, shard_size=8))
    with pytest.raises(ValueError, match=r"backbone: 'flux.1-fill' != 'sd-1.5-inpainting'"):
        train_aligner.main(aligner_argv(pipeline_dir, output, precomputed=flux_inputs))
    other_vae = tiny_pipeline_dir(tmp_path_factory, "sd")  # the tiny pipeline, its VAE then changed slightly
    vae = AutoencoderKL.from_pretrained(other_vae, subfolder="vae")
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1.01)
    vae.save_pretrained(other_vae / "vae")
    with pytest.raises(ValueError, match=r"vae: "):
        train_aligner.main(aligner_argv(other_vae, output, precomputed=folder))
    # prepare refuses to resume a folder of other flags
    with pytest.raises(ValueError, match=r"other flags or models .*samples"):
        prepare_aligner_inputs.main(prepare_argv(pipeline_dir, image_dir, folder, seed=1))
    # the shards replace the data source
    with pytest.raises(ValueError, match="drop --train_data_dir"):
        train_aligner.main(aligner_argv(pipeline_dir, output, precomputed=folder, train_data_dir=image_dir))
    with pytest.raises(ValueError, match="no readable manifest.json"):
        train_aligner.main(aligner_argv(pipeline_dir, output, precomputed=tmp_path))


def test_stored_bytes_per_sample_are_the_benchmarks_count(pipeline_dir, prepared):
    """The bytes docs/training.md states per sample (benchmarks/aligner_precompute.py) are a shard's data bytes."""
    from diffusers import AutoencoderKL

    from asuka.models import AsukaMAE
    from benchmarks import aligner_precompute

    folder, _ = prepared
    components = {
        "vae": AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae"),
        "mae": AsukaMAE.from_pretrained(pipeline_dir, subfolder="mae"),
    }
    expected = aligner_precompute.stored_bytes_per_sample(components, RESOLUTION, device="cpu")
    for path in sorted(folder.glob("shard-*.safetensors")):
        raw = path.read_bytes()
        header = int.from_bytes(raw[:8], "little")
        samples = len(load_file(str(path))["index"])
        assert len(raw) - 8 - header == expected * samples, path.name
