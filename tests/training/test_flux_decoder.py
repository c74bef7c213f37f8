"""The 16-channel ASUKA decoder trains on a tiny FLUX.1-Fill backbone (`training/train_decoder.py`, docs/training.md):
under `accelerate launch` with two processes it is killed after a checkpoint, resumes there, writes an
`AsukaFluxPipeline` folder that loads and runs and pushes a light repo; it learns a colour-shift task; its one-step
x0 augmentation is the flow-matching estimate of the transformer called as the pipeline calls it.
"""

import json
import re
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F
import train_decoder
from PIL import Image

import asuka_training
from asuka import AsukaFluxPipeline
from asuka.defaults import FLUX_FILL_REPO
from asuka.models import AsukaDecoder
from asuka.pipelines.backbones import FLUX_FILL
from asuka.testing import make_tiny_pipeline
from asuka.testing.flux import make_tiny_flux_backbone_pipeline, make_tiny_flux_pipeline
from tests.support.accelerate_launch import two_process_launch
from tests.support.flux import pipeline_transformer_call
from tests.support.hub import BACKBONE_SHA, hub_cache, weight_files
from tests.support.training import (
    ROOT,
    intercept_hub,
    launch_env,
    random_images,
    training_argv,
)


RESOLUTION = 32  # the tiny FLUX VAE downsamples 8x: 4x4 latents, 2x2 packed tokens
# The light repo's weights: ASUKA's parts only (no transformer, VAE or text encoder).
LIGHT_WEIGHTS = [
    f"{name}/diffusion_pytorch_model.safetensors" for name in ("decoder", "mae", "pooled_aligner", "token_aligner")
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The three starting points: a tiny AsukaFluxPipeline folder, the plain FluxFillPipeline of its backbone, and a
    light repo of the former pointing to the latter."""
    root = tmp_path_factory.mktemp("flux")
    make_tiny_flux_backbone_pipeline(seed=0).save_pretrained(root / "plain")
    pipe = make_tiny_flux_pipeline(seed=0)
    pipe.save_pretrained(root / "asuka")
    pipe.save_pretrained(root / "light", light=True, backbone=str(root / "plain"))
    return {name: root / name for name in ("asuka", "plain", "light")}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(40, 48), (36, 36), (48, 33)])


def flux_args(source, image_dir, output_dir, steps, **flags):
    flags = {"resolution": RESOLUTION, "validation_steps": 0, **flags}
    return training_argv(source, image_dir, output_dir, steps, **flags)


# --------------------------------------------------------------------------- the one-step x0 augmentation
def hand_x0(pipe, latents, noise, timesteps, tokens, pooled, guidance):
    """x0 = noisy - σ v, the transformer called as AsukaFluxPipeline calls it on (1 - σ) x0 + σ noise, with the clean
    latents as the masked-image latents and an all-zero pixel mask."""
    batch, _, height, width = latents.shape
    sigmas = (timesteps.float() / 1000).view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * latents + sigmas * noise
    config = pipe.vae.config
    raw_latents = latents / config.scaling_factor + config.shift_factor  # the pipeline shifts and scales them again
    zero_mask = torch.zeros(batch, 1, height * pipe.vae_scale_factor, width * pipe.vae_scale_factor)
    guidance = torch.full([batch], guidance, dtype=torch.float32)
    velocity = pipeline_transformer_call(
        pipe, noisy, raw_latents, zero_mask, timesteps.float(), tokens, pooled, guidance
    )
    return noisy - sigmas * velocity


def test_the_x0_augmentation_is_the_flow_matching_estimate_of_the_pipelines_transformer_call():
    pipe = make_tiny_flux_pipeline(seed=0)
    transformer = pipe.transformer
    scheduler = FLUX_FILL.objective.training_scheduler(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 16, 4, 4, generator=generator)
    tokens, pooled = torch.randn(3, 5, 32, generator=generator), torch.randn(3, 24, generator=generator)
    conditioning = {"prompt_embeds": tokens, "pooled_prompt_embeds": pooled}

    noise, timesteps = torch.randn(latents.shape, generator=generator), torch.tensor([700, 850, 999])
    with torch.no_grad():
        expected = hand_x0(pipe, latents, noise, timesteps, tokens, pooled, guidance=30.0)
        default = asuka_training.one_step_x0(
            transformer, scheduler, latents, noise, timesteps, conditioning, FLUX_FILL
        )
        other = asuka_training.one_step_x0(
            transformer, scheduler, latents, noise, timesteps, conditioning, FLUX_FILL, guidance=4.0
        )
    torch.testing.assert_close(default, expected, atol=1e-5, rtol=1e-5)  # the release's guidance 30 by default
    torch.testing.assert_close(
        other, hand_x0(pipe, latents, noise, timesteps, tokens, pooled, guidance=4.0), atol=1e-5, rtol=1e-5
    )
    assert not torch.allclose(default, other, atol=1e-3)  # the guidance reaches the transformer

    # latent_augmentation draws which samples, their timesteps in [low, high] and their noise from the generator
    out, applied = train_decoder.latent_augmentation(
        latents, transformer, scheduler, conditioning, (700, 999), 0.5, torch.Generator().manual_seed(0), FLUX_FILL
    )
    replay = torch.Generator().manual_seed(0)
    chosen = torch.rand(3, generator=replay) < 0.5
    assert torch.equal(applied, chosen) and 0 < int(chosen.sum()) < 3
    drawn = torch.randint(700, 1000, (int(chosen.sum()),), generator=replay)
    drawn_noise = torch.randn(latents[chosen].shape, generator=replay)
    with torch.no_grad():
        estimate = hand_x0(pipe, latents[chosen], drawn_noise, drawn, tokens[chosen], pooled[chosen], 30.0)
    torch.testing.assert_close(out[chosen], estimate, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[~chosen], latents[~chosen])  # the others stay bit-identical


# --------------------------------------------------------------------------- it learns
def smooth_images(count, seed, size=RESOLUTION):
    """(count, 3, size, size) images in [0, 1]: random 4x4 colour fields, bicubically enlarged."""
    low = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def rectangle_holes(count, seed, size=RESOLUTION):
    generator, holes = torch.Generator().manual_seed(seed), torch.zeros(count, 1, size, size)
    for hole in holes:
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        hole[:, top : top + size // 2, left : left + size // 2] = 1
    return holes


def held_out_l1(decoder, vae, images, holes, shifted):
    """Mean L1 (in [-1, 1]) against the true `images` of the decoding of the colour-`shifted` images' latents (the
    posterior mean, unscaled as the decoder takes it), over the whole image and inside the holes."""
    with torch.no_grad():
        latents = vae.encode(shifted * 2 - 1).latent_dist.mean
        error = (decoder(latents, images * 2 - 1, holes, return_dict=False)[0] - (images * 2 - 1)).abs()
    return error.mean().item(), (error * holes).sum().item() / (3 * holes.sum().item())


# Measured on this test's setup (80 steps, lr 1e-3, batch 4) with --seed 0-4 (and the starting decoder seeded alike):
# the whole-image L1 fell from 0.49-0.52 to 0.23-0.24 (ratio 0.45-0.49), the hole's from 0.58-0.60 to 0.41-0.44
# (ratio 0.70-0.74); at 40 steps the ratios were 0.53-0.64 and 0.71-0.75. The margins sit above the worst measured
# ratio at 80 steps and far below 1 (no learning).
STEPS, WHOLE_MARGIN, HOLE_MARGIN = 80, 0.6, 0.85


def test_the_decoder_learns_to_undo_a_colour_shift(folders, tmp_path):
    """Decoder steps on the tiny FLUX VAE (colour jitter and the x0 augmentation on) lower the held-out L1 of
    colour-shifted latents' decodings against the true images well below the starting decoder's."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for index, image in enumerate(smooth_images(16, seed=0)):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(train_dir / f"{index}.png")
    vae = AsukaFluxPipeline.from_pretrained(folders["asuka"]).vae
    torch.manual_seed(0)
    start = AsukaDecoder.from_vae(vae)  # "the release": a decoder folder to start from
    start.save_pretrained(tmp_path / "start")

    result = train_decoder.main(
        flux_args(
            folders["asuka"],
            train_dir,
            tmp_path / "out",
            STEPS,
            train_batch_size=4,
            learning_rate=1e-3,
            lr_scheduler="constant",
            checkpointing_steps=0,
            decoder_model_name_or_path=tmp_path / "start",
        )
    )
    assert result.global_step == STEPS and np.isfinite(result.losses).all()

    images, holes = smooth_images(8, seed=100), rectangle_holes(8, seed=101)
    torch.manual_seed(102)
    shifted = train_decoder.color_jitter(images)  # the held-out colour shift, as training draws them
    before = held_out_l1(AsukaDecoder.from_pretrained(tmp_path / "start"), vae, images, holes, shifted)
    after = held_out_l1(AsukaDecoder.from_pretrained(tmp_path / "out"), vae, images, holes, shifted)
    print(f"held-out L1 (whole image, hole): step 0 {before}, step {STEPS} {after}")
    assert after[0] < WHOLE_MARGIN * before[0], (before, after)
    assert after[1] < HOLE_MARGIN * before[1], (before, after)


# --------------------------------------------------------------------------- starting points
def test_a_light_repo_trains_and_its_push_points_to_the_backbone_it_points_to(folders, image_dir, tmp_path):
    """From a light repo (the backbone's parts behind pointers); the pushed light repo points where the source does."""
    patch = pytest.MonkeyPatch()
    intercept_hub(patch, tmp_path / "hub")
    try:
        argv = flux_args(folders["light"], image_dir, tmp_path / "out", 1, checkpointing_steps=0, save_pipeline=True)
        train_decoder.main([*argv, "--push_to_hub", "--hub_model_id", "me/asuka-flux-decoder"])
    finally:
        patch.undo()
    uploaded = tmp_path / "hub" / "me/asuka-flux-decoder"
    assert weight_files(uploaded) == LIGHT_WEIGHTS
    assert json.loads((uploaded / "transformer" / "backbone.json").read_text())["repo"] == str(folders["plain"])
    for card in (uploaded / "README.md", tmp_path / "out" / "README.md"):  # the light repo's and the final folder's
        text = card.read_text()
        assert "license: other" in text and "FLUX.1 [dev] Non-Commercial License" in text, card
    pushed = AsukaFluxPipeline.from_pretrained(uploaded)
    trained = AsukaDecoder.from_pretrained(tmp_path / "out")
    assert all(torch.equal(value, pushed.decoder.state_dict()[key]) for key, value in trained.state_dict().items())


def test_a_plain_flux_fill_folder_trains_with_zero_conditioning(folders, image_dir, tmp_path):
    result = train_decoder.main(flux_args(folders["plain"], image_dir, tmp_path / "out", 2, checkpointing_steps=0))
    assert result.global_step == 2 and np.isfinite(result.losses).all()
    decoder = AsukaDecoder.from_pretrained(tmp_path / "out")
    assert decoder.config.latent_channels == 16 and decoder.post_quant_conv is None  # FLUX's VAE has no quant conv
    with pytest.raises(ValueError, match=r"--save_pipeline needs an ASUKA pipeline \(AsukaFluxPipeline"):
        train_decoder.main(flux_args(folders["plain"], image_dir, tmp_path / "again", 1, save_pipeline=True))


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_bf16_with_gradient_checkpointing_keeps_the_decoder_float32(folders, image_dir, tmp_path):
    """The frozen transformer, VAE and MAE in bf16 (the aligners stay float32), the decoder checkpointed; every
    sample through the x0 augmentation."""
    result = train_decoder.main(
        flux_args(
            folders["asuka"],
            image_dir,
            tmp_path / "out",
            2,
            mixed_precision="bf16",
            gradient_checkpointing=True,
            latent_aug_prob=1.0,
            checkpointing_steps=0,
        )
    )
    assert result.global_step == 2 and np.isfinite(result.losses).all()
    assert all(
        value.dtype == torch.float32 for value in AsukaDecoder.from_pretrained(tmp_path / "out").state_dict().values()
    )


def test_bad_flags_name_the_flag(folders, image_dir, tmp_path):
    cases = {
        "--resolution must be a multiple of 16": dict(resolution=40),
        "--latent_aug_timestep_max must be < 1000": dict(latent_aug_timestep_max=1000),
        "--latent_aug_timestep_min/max": dict(latent_aug_timestep_min=900, latent_aug_timestep_max=800),
        r"--latent_aug_prob must be in \[0, 1\]": dict(latent_aug_prob=1.5),
        "--guidance_scale must be >= 0": dict(guidance_scale=-1),
    }
    for message, flags in cases.items():
        with pytest.raises(ValueError, match=message):
            train_decoder.main(flux_args(folders["asuka"], image_dir, tmp_path / "out", 1, **flags))
    make_tiny_pipeline("sd").save_pretrained(tmp_path / "sd")
    with pytest.raises(ValueError, match="--guidance_scale applies to a denoiser that embeds a guidance scale"):
        train_decoder.main(flux_args(tmp_path / "sd", image_dir, tmp_path / "out", 1, guidance_scale=3.0))
    sd_decoder = tmp_path / "sd_decoder"  # 4 latent channels, SD's
    AsukaDecoder(
        block_out_channels=(8, 16), norm_num_groups=8, up_block_types=("UpDecoderBlock2D",) * 2
    ).save_pretrained(sd_decoder)
    with pytest.raises(ValueError, match="--decoder_model_name_or_path: the decoder takes 4 latent channels"):
        train_decoder.main(
            flux_args(folders["asuka"], image_dir, tmp_path / "out", 1, decoder_model_name_or_path=sd_decoder)
        )


# --------------------------------------------------------------------------- two processes, killed, resumed


def test_two_processes_killed_after_a_checkpoint_resume_save_and_push(folders, image_dir, tmp_path):
    """`accelerate launch` with two processes (gloo): SIGKILL once the first checkpoint is complete, then a second
    launch resumes at that checkpoint's step, writes the AsukaFluxPipeline folder and pushes the light repo."""
    output_dir, interval, long_run = tmp_path / "run", 2, 400  # a run far too long to end before the kill
    script = str(ROOT / "training" / "train_decoder.py")
    argv = flux_args(
        folders["asuka"], image_dir, output_dir, long_run, train_batch_size=1, checkpointing_steps=interval
    )
    process = subprocess.Popen(
        two_process_launch(script, *argv, main_process_port=29531),
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not asuka_training.list_checkpoints(output_dir):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    # the workers run in sessions of their own (torch elastic), so each is killed by its id, then the launcher
    workers = psutil.Process(process.pid).children(recursive=True)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(workers) >= 2 and psutil.wait_procs(workers, timeout=30)[1] == []
    latest = int(asuka_training.list_checkpoints(output_dir)[-1].name.split("-")[1])
    assert latest < long_run and not (output_dir / "config.json").exists()  # it died mid-run
    assert (output_dir / f"checkpoint-{latest}" / "decoder" / "config.json").is_file()

    # the resumed launch, with the Hub intercepted in both processes; its light repo points to FLUX.1-Fill-dev,
    # served from a local cache at a pinned commit
    cache = hub_cache(tmp_path / "cache", FLUX_FILL_REPO, folders["plain"])
    end = latest + 2
    resumed_argv = flux_args(
        folders["asuka"],
        image_dir,
        output_dir,
        end,
        train_batch_size=1,
        checkpointing_steps=interval,
        resume_from_checkpoint="latest",
        save_pipeline=True,
        push_to_hub=True,
        hub_model_id="me/asuka-flux-decoder",
        hub_backbone_id=FLUX_FILL_REPO,
        hub_backbone_revision=BACKBONE_SHA,
    )
    launcher = str(ROOT / "tests" / "support" / "fake_hub_launch.py")
    completed = subprocess.run(
        two_process_launch(launcher, str(tmp_path / "hub"), script, *resumed_argv, main_process_port=29532),
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    assert f"Resuming from checkpoint {output_dir / f'checkpoint-{latest}'}" in log
    assert re.findall(r"process (\d+) of (\d+) writes the final folder", log) == [("0", "2")], log[-3000:]
    assert asuka_training.list_checkpoints(output_dir)[-1].name == f"checkpoint-{end}"

    pipe = AsukaFluxPipeline.from_pretrained(output_dir / "pipeline")
    trained = AsukaDecoder.from_pretrained(output_dir)
    assert all(torch.equal(value, pipe.decoder.state_dict()[key]) for key, value in trained.state_dict().items())
    image, hole = torch.rand(1, 3, RESOLUTION, RESOLUTION), torch.zeros(1, 1, RESOLUTION, RESOLUTION)
    hole[..., 8:24, 8:24] = 1
    out = pipe(image, hole, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(out.images).all()

    uploaded = tmp_path / "hub" / "me/asuka-flux-decoder"
    assert weight_files(uploaded) == LIGHT_WEIGHTS  # only ASUKA's parts, no checkpoints
    assert sorted(p.name for p in uploaded.iterdir() if p.is_dir()) == sorted(
        ["decoder", "mae", "pooled_aligner", "token_aligner", "scheduler", "transformer", "vae"]
    )
    pointer = json.loads((uploaded / "transformer" / "backbone.json").read_text())
    assert (pointer["repo"], pointer["revision"]) == (FLUX_FILL_REPO, BACKBONE_SHA)
    card = (uploaded / "README.md").read_text()
    assert f"base_model: {FLUX_FILL_REPO}" in card and "license: other" in card
    assert "FLUX.1 [dev] Non-Commercial License" in card and '"max_train_steps": ' + str(end) in card
    light = AsukaFluxPipeline.from_pretrained(uploaded, cache_dir=str(cache))
    assert all(torch.equal(value, light.decoder.state_dict()[key]) for key, value in trained.state_dict().items())
