"""Acceptance tests of the training scripts: CPU, tiny components, synthetic images, no network.

Scripts run in-process through `main(argv)` wherever possible; only `accelerate launch` and the
SIGKILL test use subprocesses. Each script run is shared by the tests that inspect it (module fixtures).
"""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import train_aligner
import train_decoder
import train_mae
from PIL import Image
from safetensors.torch import load_file

import asuka_training
from asuka.models import AsukaAligner, AsukaDecoder, AsukaMAE
from asuka.testing import make_tiny_pipeline
from tests.support.accelerate_launch import two_process_launch
from tests.support.training import (
    ROOT,
    intercept_hub,
    launch_env,
    random_images,
    tiny_pipeline_dir,
    training_argv,
)


RESOLUTION = "32"  # the tiny VAE has a scale factor of 2: 16x16 latents


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_pipeline_dir(tmp_path_factory, "sd")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Three random images of different sizes plus one unreadable file (skipped and counted)."""
    folder = random_images(tmp_path_factory.mktemp("images"), [(40, 48), (64, 36), (33, 33)])
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    return folder


@pytest.fixture(scope="module")
def object_dir(tmp_path_factory):
    """Two object silhouettes, so the runs use the paper's full 50/40/10 mask mixture."""
    folder = tmp_path_factory.mktemp("objects")
    for index, size in enumerate([(20, 30), (26, 18)]):
        silhouette = np.zeros(size, dtype=np.uint8)
        silhouette[2:-2, 3:-3] = 255
        Image.fromarray(silhouette).save(folder / f"object_{index}.png")
    return folder


def base_args(pipeline_dir, image_dir, output_dir, steps=3, **flags):
    """`training_argv` at the tiny VAE's resolution, with validation grids of two samples every two steps."""
    flags = {"resolution": RESOLUTION, "validation_steps": 2, "num_validation_images": 2, **flags}
    return training_argv(pipeline_dir, image_dir, output_dir, steps, **flags)


def state_dict_of(folder):
    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def assert_checkpoints(output_dir, steps):
    assert [p.name for p in asuka_training.list_checkpoints(output_dir)] == [f"checkpoint-{s}" for s in steps]
    assert not list(Path(output_dir).glob(".partial-*"))


# --------------------------------------------------------------------------- aligner
def test_prior_probability_schedule():
    p = train_aligner.reconstructed_prior_probability
    assert p(0) == pytest.approx(1.0)
    assert p(1000) == pytest.approx(0.55)
    assert p(2000) == pytest.approx(0.1)
    assert p(5000) == pytest.approx(0.1)
    # all three numbers are flags
    assert p(50, start=0.8, end=0.2, decay_steps=100) == pytest.approx(0.5)
    assert p(500, start=0.8, end=0.2, decay_steps=100) == pytest.approx(0.2)
    parser = train_aligner.build_aligner_parser()
    args = parser.parse_args(
        [
            "--pretrained_model_name_or_path",
            "x",
            "--prior_prob_start",
            "0.9",
            "--prior_prob_end",
            "0.3",
            "--prior_prob_decay_steps",
            "10",
        ]
    )
    assert (args.prior_prob_start, args.prior_prob_end, args.prior_prob_decay_steps) == (0.9, 0.3, 10)


@pytest.fixture(scope="module")
def aligner_run(pipeline_dir, image_dir, object_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("aligner_run")
    first = train_aligner.main(
        base_args(
            pipeline_dir,
            image_dir,
            output_dir,
            steps=3,
            save_pipeline=True,
            validation_inference_steps=2,
            object_mask_dir=object_dir,
        )
    )
    checkpoints_after_first = [p.name for p in asuka_training.list_checkpoints(output_dir)]
    final_after_first = state_dict_of(output_dir)
    resumed = train_aligner.main(
        base_args(pipeline_dir, image_dir, output_dir, steps=4, resume_from_checkpoint="latest", validation_steps=0)
    )
    return output_dir, first, checkpoints_after_first, final_after_first, resumed


def test_aligner_writes_checkpoints_and_resumes_at_latest(aligner_run):
    output_dir, first, checkpoints_after_first, final_after_first, resumed = aligner_run
    assert first.global_step == 3 and len(first.losses) == 3
    assert checkpoints_after_first == ["checkpoint-2", "checkpoint-3"]  # rotation kept the 2 newest
    ckpt = output_dir / "checkpoint-3"
    assert (ckpt / "aligner" / "config.json").is_file()  # diffusers format inside the accelerate state
    assert first.num_bad_images >= 1  # broken.jpg was met, skipped and counted
    # resume continues at step 3 and runs exactly one more step
    assert resumed.initial_global_step == 3 and resumed.global_step == 4 and len(resumed.losses) == 1
    assert_checkpoints(output_dir, [3, 4])


def test_aligner_final_folder_loads_and_frozen_parts_stay_frozen(aligner_run, pipeline_dir):
    output_dir, first, _, _, _ = aligner_run
    aligner = AsukaAligner.from_pretrained(output_dir)
    assert isinstance(aligner, AsukaAligner)
    pipeline = Path(first.pipeline_dir)
    from asuka import AsukaPipeline

    pipe = AsukaPipeline.from_pretrained(pipeline)
    assert isinstance(pipe.aligner, AsukaAligner)
    for frozen in ("unet", "vae", "mae"):
        before, after = state_dict_of(pipeline_dir / frozen), state_dict_of(pipeline / frozen)
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), f"{frozen}.{key} changed"
    before, after = state_dict_of(pipeline_dir / "aligner"), state_dict_of(pipeline / "aligner")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the aligner did not learn"
    assert all(torch.equal(after[k], v) for k, v in state_dict_of(output_dir / "checkpoint-3" / "aligner").items())


def test_aligner_validation_grids_are_logged(aligner_run):
    output_dir, first, *_ = aligner_run
    grids = sorted((output_dir / "validation").glob("validation-*.png"))
    assert [g.name for g in grids][:2] == ["validation-0000002.png", "validation-0000003.png"]
    grid = Image.open(grids[0])
    assert grid.size == (3 * int(RESOLUTION), 2 * int(RESOLUTION))  # 2 samples x (input, output, original)
    card = (output_dir / "README.md").read_text()
    assert "base_model:" in card and "sample_grid.png" in card


def make_learnable_pipeline(folder):
    """The tiny pipeline with its cross-attention (and output) amplified, so the conditioning matters a lot.

    The random tiny UNet otherwise barely listens to its conditioning, leaving the aligner nothing to learn.
    """
    pipe = make_tiny_pipeline("sd", seed=0)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.mul_(300.0)
        pipe.unet.conv_out.weight.mul_(5.0)
        pipe.unet.conv_out.bias.mul_(5.0)
    pipe.save_pretrained(folder)
    return folder


def test_aligner_loss_drops_on_a_learnable_setup(image_dir, tmp_path):
    pipeline = make_learnable_pipeline(tmp_path / "learnable")
    result = train_aligner.main(
        base_args(
            pipeline,
            image_dir,
            tmp_path / "out",
            steps=60,
            checkpointing_steps=0,
            validation_steps=0,
            resolution=16,
            learning_rate=1e-2,
            prior_prob_decay_steps=0,
        )
    )
    losses = np.asarray(result.losses)
    assert len(losses) == 60 and np.isfinite(losses).all()
    start, end = losses[0], losses[-10:].mean()
    assert end < 0.75 * start, (start, end)


# --------------------------------------------------------------------------- MAE
def test_masked_patch_l2_counts_only_masked_patches():
    image = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :8, :8] = 1  # exactly one 8x8 patch
    mask[:, :, 20, 20] = 1  # one more patch, partially masked
    reconstruction = image.clone()
    reconstruction[:, :, 16:, 0:8] += 5.0  # wrong only in an unmasked patch -> no loss
    assert train_mae.masked_patch_l2(reconstruction, image, mask, 8) == 0
    reconstruction = image.clone()
    reconstruction[:, :, :8, :8] += 0.5  # wrong on the whole first masked patch
    # two masked patches per sample, one with squared error 0.25 everywhere -> mean 0.125
    assert train_mae.masked_patch_l2(reconstruction, image, mask, 8).item() == pytest.approx(0.125)


def test_mae_script_checkpoints_resume_and_trains_partial_patch_parts(pipeline_dir, image_dir, tmp_path):
    output_dir = tmp_path / "mae"
    first = train_mae.main(base_args(pipeline_dir, image_dir, output_dir, steps=3, learning_rate=1e-2))
    assert first.global_step == 3
    assert_checkpoints(output_dir, [2, 3])
    resumed = train_mae.main(
        base_args(pipeline_dir, image_dir, output_dir, steps=5, resume_from_checkpoint="latest", validation_steps=0)
    )
    assert resumed.initial_global_step == 3 and resumed.global_step == 5
    mae = AsukaMAE.from_pretrained(output_dir)
    original = AsukaMAE.from_pretrained(pipeline_dir, subfolder="mae")
    assert not torch.equal(mae.alpha, original.alpha)
    assert not torch.equal(mae.decoder_patch_embed.proj.weight, original.decoder_patch_embed.proj.weight)
    assert json.loads((output_dir / "training_args.json").read_text())["adam_beta2"] == 0.95


def test_mae_script_writes_the_visible_input_order(pipeline_dir, image_dir, tmp_path):
    """Training feeds the MAE the visible order, so a fine-tuned release MAE ("reference") is written as "visible"."""
    release = tmp_path / "release_mae"
    mae = AsukaMAE.from_pretrained(pipeline_dir, subfolder="mae")
    mae.register_to_config(input_preprocessing="reference")
    mae.save_pretrained(release)
    output_dir = tmp_path / "mae"
    train_mae.main(base_args(release, image_dir, output_dir, steps=1, validation_steps=0))
    assert json.loads((output_dir / "config.json").read_text())["input_preprocessing"] == "visible"


# --------------------------------------------------------------------------- decoder
class OracleUNet(torch.nn.Module):
    """Predicts the exact noise from its input, using the clean latent it receives as masked-image condition."""

    def __init__(self, scheduler):
        super().__init__()
        self.scheduler, self.seen_masks = scheduler, []

    def forward(self, sample, timesteps, encoder_hidden_states):
        noisy, mask, clean = sample[:, :4], sample[:, 4:5], sample[:, 5:]
        self.seen_masks.append(mask)
        alphas = self.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noise = (noisy - alphas.sqrt() * clean) / (1 - alphas).sqrt()
        return type("Out", (), {"sample": noise})()


def test_decoder_augmentations_shape_range_and_rate():
    from diffusers import DDPMScheduler

    pixels = torch.rand(8, 3, 24, 20)
    jittered = train_decoder.color_jitter(pixels)
    assert jittered.shape == pixels.shape and jittered.dtype == pixels.dtype
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, pixels)
    # independent parameters per sample: the mean brightness shift differs between samples
    shifts = (jittered - pixels).mean(dim=(1, 2, 3))
    assert shifts.std() > 1e-3

    scheduler = DDPMScheduler()
    unet = OracleUNet(scheduler)
    latents = torch.randn(400, 4, 4, 4)
    generator = torch.Generator().manual_seed(0)
    out, applied = train_decoder.latent_augmentation(
        latents, unet, scheduler, {"prompt_embeds": torch.zeros(400, 1, 8)}, (700, 999), 0.5, generator
    )
    assert out.shape == latents.shape and applied.shape == (400,)
    assert abs(applied.float().mean().item() - 0.5) < 0.08
    assert torch.equal(out[~applied], latents[~applied])  # untouched samples stay bit-identical
    # the perfect denoiser recovers the clean latent: the x0 formula and the clean condition are right
    torch.testing.assert_close(out[applied], latents[applied], atol=1e-3, rtol=1e-3)
    assert all((m == 0).all() for m in unet.seen_masks)  # all-zero mask as condition
    none, applied_none = train_decoder.latent_augmentation(
        latents, unet, scheduler, {"prompt_embeds": torch.zeros(400, 1, 8)}, (700, 999), 0.0
    )
    assert not applied_none.any() and torch.equal(none, latents)


def test_decoder_x0_estimate_is_noisy_for_a_real_unet(pipeline_dir):
    """With the frozen tiny UNet the estimate differs from the clean latent (the corruption it simulates)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet")
    scheduler = DDPMScheduler()
    latents = torch.randn(2, 4, 16, 16)
    out, applied = train_decoder.latent_augmentation(
        latents, unet, scheduler, {"prompt_embeds": torch.zeros(2, 4, 32)}, (900, 999), 1.0
    )
    assert applied.all() and out.shape == latents.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, latents)


def test_patch_discriminator_keeps_its_checkpoint_layout():
    """Moved from train_decoder.py to asuka.models: checkpoint-N/discriminator/ folders of older runs still load."""
    from asuka.models import PatchDiscriminator

    convs, norms = [0, 2, 5, 8, 11], [3, 6, 9]
    expected = sorted(f"layers.{i}.{p}" for i in convs + norms for p in ("weight", "bias"))
    discriminator = PatchDiscriminator()
    assert sorted(discriminator.state_dict()) == expected
    config = discriminator.config
    assert (config.in_channels, config.base_channels, config.num_layers) == (3, 64, 3)
    assert discriminator(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 2, 2)


@pytest.fixture(scope="module")
def decoder_push_run(pipeline_dir, image_dir, tmp_path_factory):
    """Decoder training with a discriminator, a full pipeline folder and --push_to_hub --push_full_pipeline
    intercepted at HfApi (the default light push: tests/hub/test_push.py)."""
    uploads, patch = tmp_path_factory.mktemp("uploaded"), pytest.MonkeyPatch()
    repos = intercept_hub(patch, uploads)
    output_dir = tmp_path_factory.mktemp("decoder_run")
    try:
        result = train_decoder.main(
            base_args(
                pipeline_dir,
                image_dir,
                output_dir,
                steps=3,
                save_pipeline=True,
                discriminator_weight=0.1,
                push_to_hub=True,
                push_full_pipeline=True,
                hub_model_id="someone/asuka-decoder-test",
            )
        )
        resumed = train_decoder.main(
            base_args(
                pipeline_dir,
                image_dir,
                output_dir,
                steps=4,
                resume_from_checkpoint="latest",
                discriminator_weight=0.1,
                validation_steps=0,
            )
        )
    finally:
        patch.undo()
    return output_dir, result, resumed, uploads / "someone/asuka-decoder-test", repos


def test_decoder_checkpoints_resume_and_final_folder(decoder_push_run, pipeline_dir):
    output_dir, result, resumed, _, _ = decoder_push_run
    assert result.global_step == 3 and resumed.initial_global_step == 3 and resumed.global_step == 4
    assert_checkpoints(output_dir, [3, 4])
    assert (output_dir / "checkpoint-4" / "decoder" / "config.json").is_file()
    assert (output_dir / "checkpoint-4" / "discriminator" / "config.json").is_file()
    decoder = AsukaDecoder.from_pretrained(output_dir)
    assert isinstance(decoder, AsukaDecoder)
    # it started from the base VAE decoder: untouched VAE keys equal, trained ones moved
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae")
    start = AsukaDecoder.from_vae(vae)
    assert start.decoder.conv_in.weight.shape == decoder.decoder.conv_in.weight.shape
    assert not torch.equal(start.decoder.conv_out.weight, decoder.decoder.conv_out.weight)


def test_push_to_hub_uploads_card_and_loadable_weights(decoder_push_run):
    output_dir, result, _, uploaded, repos = decoder_push_run
    assert result.repo_id == "someone/asuka-decoder-test"
    assert repos and repos[0][0] == "someone/asuka-decoder-test"
    card = (uploaded / "README.md").read_text()
    assert "library_name: diffusers" in card and "base_model:" in card and "asuka" in card
    assert "## Training arguments" in card and '"max_train_steps": 3' in card
    assert "hub_token" not in card
    assert (uploaded / "sample_grid.png").is_file()
    assert not list(uploaded.glob("checkpoint-*"))
    from asuka import AsukaPipeline

    assert (uploaded / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # the complete pipeline folder
    pipe = AsukaPipeline.from_pretrained(uploaded)
    assert isinstance(pipe.decoder, AsukaDecoder)
    trained = state_dict_of(output_dir / "pipeline" / "decoder")
    assert all(torch.equal(v, pipe.decoder.state_dict()[k]) for k, v in trained.items())


# --------------------------------------------------------------------------- data
def test_hf_dataset_and_streaming_skip_and_count_bad_images(tmp_path):
    import io

    import datasets

    def png_bytes(seed):
        buffer = io.BytesIO()
        Image.fromarray((np.random.default_rng(seed).random((20, 30, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    rows = [
        {"bytes": png_bytes(0), "path": None},
        {"bytes": b"broken", "path": None},
        {"bytes": png_bytes(1), "path": None},
    ]
    data = datasets.Dataset.from_dict({"image": rows}).cast_column("image", datasets.Image())
    data_dir = tmp_path / "dataset"
    data_dir.mkdir()
    data.to_parquet(str(data_dir / "train.parquet"))

    parser = asuka_training.build_parser("test")
    for streaming in (False, True):
        argv = [
            "--pretrained_model_name_or_path",
            "x",
            "--dataset_name",
            str(data_dir),
            "--resolution",
            "16",
            "--max_train_steps",
            "2",
            "--seed",
            "0",
        ] + (["--streaming"] if streaming else [])
        dataset = asuka_training.build_dataset(asuka_training.parse_args(parser, argv))
        samples = list(dataset) if streaming else [dataset[i] for i in range(len(dataset))]
        assert sum(int(s["num_bad_images"]) for s in samples) == 1
        assert all(s["pixel_values"].shape == (3, 16, 16) and s["mask"].shape == (1, 16, 16) for s in samples)
        assert len(samples) == (2 if streaming else 3)  # map-style replaces the bad row by the next one


def test_training_pixels_come_from_asuka_imageio(tmp_path):
    """A file gives training the pixels the app gets (asuka.imageio), normalised to [0, 1] as always."""
    from asuka.imageio import load_image

    rng = np.random.default_rng(1)
    rgb = (rng.random((20, 28, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    tensor = asuka_training.load_training_image(tmp_path / "rgb.png", 16)
    # 8-bit RGB: short side bicubic-resized to 16 (28x20 -> 22x16), centre crop, / 255 -- unchanged normalisation
    resized = np.asarray(Image.fromarray(rgb).resize((22, 16), Image.BICUBIC), dtype=np.float32)[:, 3:19] / 255.0
    assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1))

    grey16 = (rng.random((20, 28)) * 65535).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    for name in ("grey16.png", "rotated.jpg"):
        expected = asuka_training.ImageTransform(16)(load_image(tmp_path / name), np.random.default_rng(0))
        assert torch.equal(asuka_training.load_training_image(tmp_path / name, 16), expected)
    # 16-bit values are scaled, not clipped to white; the EXIF rotation is applied
    assert asuka_training.load_training_image(tmp_path / "grey16.png", 16).mean() < 0.75
    upright = asuka_training.ImageTransform(16)(Image.open(tmp_path / "rotated.jpg").convert("RGB"), None)
    assert not torch.equal(asuka_training.load_training_image(tmp_path / "rotated.jpg", 16), upright)

    # the folder listing is asuka.imageio's: GIF included, hidden files and other extensions ignored
    Image.fromarray(rgb).save(tmp_path / "anim.gif")
    Image.fromarray(rgb).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("not an image")
    parser = asuka_training.build_parser("test")
    argv = ["--pretrained_model_name_or_path", "x", "--train_data_dir", str(tmp_path), "--resolution", "16"]
    dataset = asuka_training.build_dataset(asuka_training.parse_args(parser, argv))
    assert sorted(p.name for p in dataset.paths) == ["anim.gif", "grey16.png", "rgb.png", "rotated.jpg"]


def test_the_aligner_refuses_a_denoiser_without_the_inpainting_inputs(image_dir, tmp_path):
    pipe = make_tiny_pipeline("sd")
    pipe.register_modules(unet=type(pipe.unet).from_config({**pipe.unet.config, "in_channels": 4}))
    pipe.save_pretrained(tmp_path / "text_to_image")
    with pytest.raises(ValueError, match=r"the unet has 4 input channels; an inpainting \(9-channel\) one"):
        train_aligner.main(base_args(tmp_path / "text_to_image", image_dir, tmp_path / "out", steps=1))


def test_bad_flags_raise_value_errors(image_dir, tmp_path):
    parser = asuka_training.build_parser("test")
    with pytest.raises(ValueError, match="exactly one data source"):
        asuka_training.parse_args(parser, ["--pretrained_model_name_or_path", "x"])
    with pytest.raises(ValueError, match="is not a folder"):
        asuka_training.parse_args(
            parser, ["--pretrained_model_name_or_path", "x", "--train_data_dir", str(tmp_path / "nope")]
        )
    with pytest.raises(ValueError, match="hole_min"):
        asuka_training.parse_args(
            parser,
            [
                "--pretrained_model_name_or_path",
                "x",
                "--train_data_dir",
                str(image_dir),
                "--hole_min",
                "0.9",
                "--hole_max",
                "0.1",
            ],
        )
    args = asuka_training.parse_args(
        parser,
        [
            "--pretrained_model_name_or_path",
            "x",
            "--train_data_dir",
            str(image_dir),
            "--output_dir",
            str(tmp_path),
            "--resume_from_checkpoint",
            "checkpoint-7",
        ],
    )
    with pytest.raises(ValueError, match="checkpoint-N"):
        asuka_training.resolve_resume_path(args)


# --------------------------------------------------------------------------- processes


def test_accelerate_launch_two_cpu_processes(pipeline_dir, image_dir, tmp_path):
    output_dir = tmp_path / "ddp"
    command = two_process_launch(
        str(ROOT / "training" / "train_aligner.py"),
        *base_args(
            pipeline_dir, image_dir, output_dir, steps=2, train_batch_size=1, validation_steps=0, checkpointing_steps=2
        ),
        main_process_port=29517,
    )
    # torchrun-style launch of two processes; ACCELERATE_USE_CPU makes accelerate pick MULTI_CPU (gloo)
    completed = subprocess.run(command, env=launch_env(), capture_output=True, text=True, timeout=600)
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    writers = re.findall(r"process (\d+) of (\d+) writes the final folder", log)
    assert writers == [("0", "2")], log[-3000:]  # two processes ran; only the main one wrote
    assert isinstance(AsukaAligner.from_pretrained(output_dir), AsukaAligner)
    assert_checkpoints(output_dir, [2])
    assert (output_dir / "checkpoint-2" / "random_states_0.pkl").is_file()


def test_sigkill_after_first_checkpoint_then_resume(pipeline_dir, image_dir, tmp_path):
    output_dir, max_steps, interval = tmp_path / "killed", 10, 2
    argv = base_args(
        pipeline_dir,
        image_dir,
        output_dir,
        steps=max_steps,
        checkpointing_steps=interval,
        checkpoints_total_limit=3,
        validation_steps=0,
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "training" / "train_mae.py"), *argv],
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not asuka_training.list_checkpoints(output_dir):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL
    reached = max([int(s) for s in re.findall(rf"(\d+)/{max_steps} \[", stderr)] or [0])
    latest = int(asuka_training.list_checkpoints(output_dir)[-1].name.split("-")[1])
    assert latest < max_steps, "killed too late to test resuming"
    assert not (output_dir / "config.json").exists()  # no final folder: it really died mid-run

    resumed = train_mae.main(argv + ["--resume_from_checkpoint", "latest"])
    assert resumed.initial_global_step == latest
    assert reached - latest <= interval  # at most one checkpoint interval lost
    assert resumed.global_step == max_steps
    assert isinstance(AsukaMAE.from_pretrained(output_dir), AsukaMAE)


def test_example_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((ROOT / "training" / "configs").glob("*.yaml")):
        kinds[path.name] = str(load_config_from_file(str(path)).distributed_type)
    assert kinds == {
        "deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
        "fsdp.yaml": "DistributedType.FSDP",
        "fsdp_flux.yaml": "DistributedType.FSDP",
        "multi_gpu.yaml": "DistributedType.MULTI_GPU",
    }


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_aligner_bf16_accumulation_and_gradient_checkpointing(pipeline_dir, image_dir, tmp_path):
    """Mixed precision (frozen parts cast to bf16), accumulation and checkpointing work together; the
    saved component stays float32 and the aligner's outputs survive accelerate's fp32 output cast."""
    output_dir = tmp_path / "bf16"
    result = train_aligner.main(
        base_args(
            pipeline_dir,
            image_dir,
            output_dir,
            steps=2,
            resolution=16,
            gradient_accumulation_steps=2,
            gradient_checkpointing=True,
            mixed_precision="bf16",
            validation_steps=1,
            validation_inference_steps=1,
            num_validation_images=1,
        )
    )
    assert result.global_step == 2 and len(result.losses) == 2 and np.isfinite(result.losses).all()
    assert_checkpoints(output_dir, [1, 2])
    weights = state_dict_of(output_dir)
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert len(list((output_dir / "validation").glob("*.png"))) == 2
