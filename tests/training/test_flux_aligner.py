"""train_aligner.py on FLUX.1-Fill (tiny components, CPU, no network): the per-batch loss against a hand
computation, what trains and how, the start points (an AsukaFluxPipeline folder, a light repo, a plain FluxFill
folder with an MAE), the outputs under `accelerate launch` with two processes, and that it learns."""

import json
import re
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import torch
import train_aligner
from safetensors.torch import load_file

import asuka_training
from asuka import AsukaFluxPipeline
from asuka.models import AsukaAligner
from asuka.pipelines.backbones import FLUX_FILL
from asuka.testing import make_tiny_pipeline
from asuka.testing.flux import make_tiny_flux_backbone_pipeline
from tests.support.accelerate_launch import two_process_launch
from tests.support.flux import pipeline_transformer_call
from tests.support.hub import weight_files
from tests.support.inputs import make_inputs
from tests.support.training import (
    ROOT,
    intercept_hub,
    launch_env,
    random_images,
    tiny_pipeline_dir,
    training_argv,
)


RESOLUTION = 32  # the tiny FLUX VAE has FLUX's 8x factor: 4x4 latents, 2x2 packed tokens
HEAD_DIMS = {"aligner_head_dim": 16, "pooled_aligner_head_dim": 8}  # fresh aligners of the tiny widths (32, 24)
ALIGNER_WEIGHTS = [f"{name}/diffusion_pytorch_model.safetensors" for name in ("token_aligner", "pooled_aligner")]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(40, 48), (36, 36), (32, 50)])


def flux_args(pipeline_dir, image_dir, output_dir, steps=1, **flags):
    flags = {"resolution": RESOLUTION, "validation_steps": 0, "checkpointing_steps": 0, **flags}
    return training_argv(pipeline_dir, image_dir, output_dir, steps, **flags)


def trained_aligners(folder):
    return [AsukaAligner.from_pretrained(folder, subfolder=name) for name in ("token_aligner", "pooled_aligner")]


def scaled_latents(vae, pixels):
    """[-1, 1] pixels to the VAE posterior's mean, shifted and scaled as FLUX's latents are."""
    return (vae.encode(pixels).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor


# --------------------------------------------------------------------------- the loss of one batch
def test_the_loss_of_one_batch_is_the_flow_matching_objective_computed_by_hand():
    """Same σ and noise (one seeded generator), noisy = (1 - σ) x0 + σ noise, the conditioning as
    `AsukaFluxPipeline.encode_prior` makes it (null embeddings, condition_weight 0.5), the transformer called the
    pipeline's way, MSE against noise - x0."""
    pipe = make_tiny_pipeline("flux")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, RESOLUTION, RESOLUTION, generator=generator)
    mask = torch.zeros(2, 1, RESOLUTION, RESOLUTION)
    mask[0, :, 8:24, 4:20], mask[1, :, 16:, :] = 1, 1
    with torch.no_grad():
        latents = scaled_latents(pipe.vae, pixels * 2 - 1).contiguous()  # the noise below is drawn in this layout
        raw_masked = pipe.vae.encode((pixels * 2 - 1) * (mask < 0.5)).latent_dist.mean
        masked_latents = (raw_masked - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        prior = pipe.mae.prior(pixels, mask)
        aligners = asuka_training.AlignerPair(pipe.token_aligner, pipe.pooled_aligner)
        scheduler = FLUX_FILL.objective.training_scheduler(pipe.scheduler.config)
        loss = asuka_training.aligner_loss(
            FLUX_FILL,
            pipe.transformer,
            scheduler,
            aligners,
            prior,
            latents,
            masked_latents,
            mask,
            generator=torch.Generator().manual_seed(3),
        )

        draws = torch.Generator().manual_seed(3)
        noise = torch.randn(latents.shape, generator=draws)
        sigmas = torch.sigmoid(torch.normal(0.0, 1.0, (2,), generator=draws)).view(-1, 1, 1, 1)
        noisy = (1 - sigmas) * latents + sigmas * noise
        tokens, pooled = pipe.encode_prior(pixels, mask)  # the pipeline's conditioning of the same prior
        velocity = pipeline_transformer_call(
            pipe, noisy, raw_masked, mask, sigmas.flatten() * 1000, tokens, pooled, torch.full([2], 30.0)
        )
        expected = ((velocity - (noise - latents)) ** 2).mean()
    assert abs(loss.item() - expected.item()) <= 1e-5 * max(1.0, expected.item())
    assert pipe.token_aligner.config.condition_weight == 0.5 and pipe.token_aligner.null_embed.abs().sum() > 0


def test_gradients_reach_only_the_aligners_and_checkpointing_keeps_them():
    """Through the frozen transformer, with and without gradient checkpointing: the same loss and aligner gradients,
    none on the transformer."""
    pipe = make_tiny_pipeline("flux")
    pipe.transformer.requires_grad_(False)
    aligners = asuka_training.AlignerPair(pipe.token_aligner, pipe.pooled_aligner).requires_grad_(True)
    generator = torch.Generator().manual_seed(1)
    prior = torch.randn(2, pipe.mae.num_patches, 16, generator=generator)
    latents, masked = torch.randn(2, 2, 16, 4, 4, generator=generator)
    mask = (torch.rand(2, 1, 32, 32, generator=generator) > 0.5).float()
    scheduler = FLUX_FILL.objective.training_scheduler(pipe.scheduler.config)
    results = []
    for checkpointing in (False, True):
        pipe.transformer.enable_gradient_checkpointing() if checkpointing else None
        aligners.zero_grad(set_to_none=True)
        loss = asuka_training.aligner_loss(
            FLUX_FILL, pipe.transformer, scheduler, aligners, prior, latents, masked, mask,
            generator=torch.Generator().manual_seed(2),
        )  # fmt: skip
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in aligners.parameters()]))
    assert pipe.transformer.is_gradient_checkpointing
    assert all(p.grad is None for p in pipe.transformer.parameters())
    (plain_loss, plain), (checkpointed_loss, checkpointed) = results
    torch.testing.assert_close(plain_loss, checkpointed_loss)
    assert all(g.abs().sum() > 0 for g in plain[:4]) and len(plain) == len(list(aligners.parameters()))
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- what trains, the flags
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_bf16_trains_only_the_aligners_with_the_flags_objective_and_guidance(
    flux_dir, image_dir, tmp_path, monkeypatch
):
    seen_params, seen_calls = [], []

    def recording_optimizer(args, params, accelerator):
        params = list(params)
        seen_params.extend(params)
        return real_optimizer(args, params, accelerator)

    def recording_loss(*args, **kwargs):
        seen_calls.append(kwargs)
        return real_loss(*args, **kwargs)

    real_optimizer, real_loss = asuka_training.setup.make_optimizer, asuka_training.aligner_loss
    monkeypatch.setattr(asuka_training.setup, "make_optimizer", recording_optimizer)
    monkeypatch.setattr(asuka_training, "aligner_loss", recording_loss)
    output_dir = tmp_path / "bf16"
    result = train_aligner.main(
        flux_args(
            flux_dir,
            image_dir,
            output_dir,
            steps=2,
            mixed_precision="bf16",
            gradient_checkpointing=True,
            timestep_density="mode",
            timestep_shift="resolution",
            condition_weight=0.75,
        )
        + ["--guidance_range", "1", "50"]
    )
    assert result.global_step == 2 and np.isfinite(result.losses).all()
    pipe = make_tiny_pipeline("flux")
    trainable = [*pipe.token_aligner.parameters(), *pipe.pooled_aligner.parameters()]
    assert [p.shape for p in seen_params] == [p.shape for p in trainable]  # the two aligners, nothing else
    objective = seen_calls[0]["objective"]
    assert (objective.weighting_scheme, objective.shift) == ("mode", "resolution")
    guidance = torch.cat([call["guidance"] for call in seen_calls])
    assert guidance.shape == (4,) and ((guidance >= 1) & (guidance <= 50)).all() and guidance.unique().numel() == 4
    token, pooled = trained_aligners(output_dir)
    assert token.dtype == pooled.dtype == torch.float32 and token.config.condition_weight == 0.75
    assert not torch.equal(token.proj_in.weight, pipe.token_aligner.proj_in.weight)  # it trained
    card = (output_dir / "README.md").read_text()
    assert "license: other" in card and "FLUX.1 [dev] Non-Commercial License" in card
    assert f"Backbone: flux.1-fill, frozen; its licence, [{FLUX_FILL.licence.name}]" in card
    assert f"(that of `{FLUX_FILL.repo}`, the release; a fine-tune may add its own terms)" in card


def test_bad_flags_raise_value_errors(flux_dir, image_dir, tmp_path, tmp_path_factory):
    """A FLUX folder without an MAE, a non-inpainting transformer, a bad guidance range or density, a single
    aligner for FLUX's two, FLUX's flags on an SD backbone: each a `ValueError` that says what is accepted."""
    plain = tmp_path / "flux_fill"
    make_tiny_flux_backbone_pipeline().save_pretrained(plain)
    with pytest.raises(ValueError, match=r"has no mae/ \(a plain FluxFillPipeline folder\): pass --mae_model_name"):
        train_aligner.main(flux_args(plain, image_dir, tmp_path / "out"))
    text_to_image = make_tiny_pipeline("flux")
    config = {**text_to_image.transformer.config, "in_channels": 64}
    text_to_image.register_modules(transformer=type(text_to_image.transformer).from_config(config))
    text_to_image.save_pretrained(tmp_path / "flux_dev")
    with pytest.raises(ValueError, match=r"the transformer has 64 input channels; an inpainting \(384-channel\)"):
        train_aligner.main(flux_args(tmp_path / "flux_dev", image_dir, tmp_path / "out"))
    bad = {
        "--guidance_range LOW HIGH must satisfy 0 <= LOW <= HIGH, got 40.0 10.0": ["--guidance_range", "40", "10"],
        "not both": ["--guidance_range", "1", "10", "--guidance_scale", "3"],
        r"Unknown timestep density 'cosmap'; accepted: \['logit_normal', 'mode', 'uniform'\]": [
            "--timestep_density",
            "cosmap",
        ],
    }
    make_tiny_pipeline("flux").token_aligner.save_pretrained(tmp_path / "one_aligner")
    bad[r"one_aligner has no \['token_aligner', 'pooled_aligner'\]; accepted: a folder with token_aligner/"] = [
        "--aligner_model_name_or_path",
        str(tmp_path / "one_aligner"),
    ]
    for message, flags in bad.items():
        with pytest.raises(ValueError, match=message):
            train_aligner.main(flux_args(flux_dir, image_dir, tmp_path / "out") + flags)
    sd = tiny_pipeline_dir(tmp_path_factory, "sd")
    with pytest.raises(ValueError, match=r"\['--guidance_scale'\] apply to a backbone with a pooled vector"):
        train_aligner.main(flux_args(sd, image_dir, tmp_path / "out", resolution=16, guidance_scale=30))


# --------------------------------------------------------------------------- start points
def test_start_points_a_plain_flux_fill_folder_a_light_repo_and_given_aligners(flux_dir, image_dir, tmp_path):
    plain = tmp_path / "flux_fill"
    make_tiny_flux_backbone_pipeline().save_pretrained(plain)
    train_aligner.main(
        flux_args(plain, image_dir, tmp_path / "fresh", mae_model_name_or_path=flux_dir, **HEAD_DIMS)
    )  # fresh aligners sized from the transformer config and the MAE
    token, pooled = trained_aligners(tmp_path / "fresh")
    mae_tokens = make_tiny_pipeline("flux").mae.num_patches
    assert (token.config.hidden_dim, token.config.null_embedding) == (32, "tokens")
    assert token.config.num_tokens == mae_tokens
    assert (pooled.config.hidden_dim, pooled.config.null_embedding) == (24, "pooled")
    assert token.config.condition_weight == pooled.config.condition_weight == 0.5

    given = train_aligner.main(  # --aligner_model_name_or_path: a learning rate of 0 keeps its weights
        flux_args(plain, image_dir, tmp_path / "given", mae_model_name_or_path=flux_dir, learning_rate=0,
                  aligner_model_name_or_path=flux_dir)
    )  # fmt: skip
    assert given.global_step == 1
    for name in ("token_aligner", "pooled_aligner"):
        start = load_file(str(flux_dir / name / "diffusion_pytorch_model.safetensors"))
        saved = load_file(str(tmp_path / "given" / name / "diffusion_pytorch_model.safetensors"))
        assert start.keys() == saved.keys() and all(torch.equal(start[k], saved[k]) for k in start)

    light = tmp_path / "light"
    AsukaFluxPipeline.from_pretrained(flux_dir).save_pretrained(light, light=True, backbone=str(flux_dir))
    patch = pytest.MonkeyPatch()
    intercept_hub(patch, tmp_path / "hub")
    try:
        train_aligner.main(
            flux_args(light, image_dir, tmp_path / "from_light", save_pipeline=True)
            + ["--push_to_hub", "--hub_model_id", "me/asuka-flux"]
        )
    finally:
        patch.undo()
    uploaded = tmp_path / "hub" / "me/asuka-flux"
    pointer = json.loads((uploaded / "transformer" / "backbone.json").read_text())
    assert pointer["repo"] == str(flux_dir)  # the light repo's backbone, not the light repo itself
    assert "torch_dtype=dtype" in (uploaded / "README.md").read_text()
    assert "dtype = torch.bfloat16" in (uploaded / "README.md").read_text()


# --------------------------------------------------------------------------- two processes: kill, resume, save, push


def test_two_processes_killed_after_a_checkpoint_resume_save_and_push(flux_dir, image_dir, tmp_path):
    """`accelerate launch` with two processes (gloo): SIGKILL after the first checkpoint, resume at that step with
    --save_pipeline and --push_to_hub (HfApi intercepted in both processes), then load and run what it wrote."""
    output_dir, uploads, max_steps, interval = tmp_path / "run", tmp_path / "hub", 12, 3
    argv = flux_args(
        flux_dir, image_dir, output_dir, steps=max_steps, train_batch_size=1, checkpointing_steps=interval,
        checkpoints_total_limit=2, validation_steps=interval, num_validation_images=1, validation_inference_steps=1,
    )  # fmt: skip
    script = (ROOT / "tests" / "support" / "fake_hub_launch.py", uploads, ROOT / "training" / "train_aligner.py")
    launch = two_process_launch(*map(str, script), main_process_port=29531)  # a port of its own
    process = subprocess.Popen([*launch, *argv], env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not asuka_training.list_checkpoints(output_dir):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)  # torchrun starts them in sessions of their own
    for victim in (process, *workers):
        victim.send_signal(signal.SIGKILL)
    process.communicate()
    psutil.wait_procs(workers, timeout=30)
    latest = int(asuka_training.list_checkpoints(output_dir)[-1].name.split("-")[1])
    assert latest < max_steps and not (output_dir / "token_aligner").exists()  # it died mid-run
    assert (output_dir / f"checkpoint-{latest}" / "aligners" / "token_aligner" / "config.json").is_file()

    resume = ["--resume_from_checkpoint", "latest", "--save_pipeline", "--push_to_hub", "--hub_model_id", "me/flux"]
    completed = subprocess.run(
        [*launch, *argv, *resume], env=launch_env(), capture_output=True, text=True, timeout=600
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-3000:]
    assert re.findall(r"Resuming from checkpoint \S*checkpoint-(\d+)", log) == [str(latest)], log[-3000:]
    assert re.findall(r"process (\d+) of (\d+) writes the final folder", log) == [("0", "2")]
    assert asuka_training.list_checkpoints(output_dir)[-1].name == f"checkpoint-{max_steps}"
    assert sorted(p.name for p in (output_dir / "validation").glob("*.png"))[-1] == f"validation-{max_steps:07d}.png"

    pipe = AsukaFluxPipeline.from_pretrained(output_dir / "pipeline")
    for aligner, trained in zip((pipe.token_aligner, pipe.pooled_aligner), trained_aligners(output_dir)):
        assert all(torch.equal(value, aligner.state_dict()[key]) for key, value in trained.state_dict().items())
    image, mask = make_inputs(RESOLUTION)
    out = pipe(image, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(out.images).all()

    uploaded = uploads / "me/flux"
    assert weight_files(uploaded) == sorted([*ALIGNER_WEIGHTS, *(f"{n}/diffusion_pytorch_model.safetensors"
                                                                  for n in ("decoder", "mae"))])  # fmt: skip
    for name in FLUX_FILL.components:  # the backbone's parts: pointers only
        assert sorted(p.name for p in (uploaded / name).iterdir()) == ["backbone.json", "backbone_component.py"]
    card = (uploaded / "README.md").read_text()
    assert f"base_model: {flux_dir}" in card and "license: other" in card and FLUX_FILL.licence.name in card
    light = AsukaFluxPipeline.from_pretrained(uploaded)
    assert torch.equal(light.token_aligner.proj_in.weight, pipe.token_aligner.proj_in.weight)


# --------------------------------------------------------------------------- it learns
def make_sensitive_flux_dir(folder, factor: float = 30.0):
    """The tiny FLUX pipeline with its token and pooled input projections scaled by `factor`: the transformer's
    prediction depends strongly on the conditioning the aligners give it."""
    pipe = make_tiny_pipeline("flux")
    with torch.no_grad():
        pipe.transformer.context_embedder.weight.mul_(factor)
        pipe.transformer.time_text_embed.text_embedder.linear_1.weight.mul_(factor)
    pipe.save_pretrained(folder)
    return pipe


class ZeroConditioning(torch.nn.Module):
    """All-zero tokens and pooled vector, in place of the aligners: the loss without any conditioning."""

    def forward(self, prior, return_dict=False):
        return torch.zeros(*prior.shape[:2], 32), torch.zeros(prior.shape[0], 24)


def held_out_loss(pipe, aligner) -> float:
    """The loss on 8 held-out images (not the training images) with a fixed hole, averaged over 4 seeded draws of
    σ and noise; the posterior means as latents, so only the aligner differs between two calls."""
    pixels = torch.rand(8, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(8, 1, RESOLUTION, RESOLUTION)
    mask[:, :, 8:24, 4:20] = 1
    scheduler = FLUX_FILL.objective.training_scheduler(pipe.scheduler.config)
    with torch.no_grad():
        latents = scaled_latents(pipe.vae, pixels * 2 - 1)
        masked = scaled_latents(pipe.vae, (pixels * 2 - 1) * (mask < 0.5))
        prior = pipe.mae.prior(pixels, mask)
        losses = [
            asuka_training.aligner_loss(
                FLUX_FILL, pipe.transformer, scheduler, aligner, prior, latents, masked, mask,
                generator=torch.Generator().manual_seed(seed),
            ).item()
            for seed in range(4)
        ]  # fmt: skip
    return float(np.mean(losses))


def test_it_learns_on_a_conditioning_sensitive_transformer(image_dir, tmp_path):
    """40 steps (batch 2, lr 1e-2) lower the held-out loss from 8.46 at step 0 to 1.22, below the 1.39 of no
    conditioning at all: the aligners learn conditioning, not only to silence it. Measured with seeds 0-3: 1.22,
    1.17, 1.14, 1.15 (0.135-0.144 of the start, 0.82-0.87 of no conditioning); the test asks for under 0.25 of the
    start and under 0.95 of no conditioning."""
    pipe = make_sensitive_flux_dir(tmp_path / "sensitive")
    start = held_out_loss(pipe, asuka_training.AlignerPair(pipe.token_aligner, pipe.pooled_aligner))
    unconditioned = held_out_loss(pipe, ZeroConditioning())
    result = train_aligner.main(
        flux_args(tmp_path / "sensitive", image_dir, tmp_path / "out", steps=40, learning_rate=1e-2,
                  prior_prob_decay_steps=0)
    )  # fmt: skip
    assert result.global_step == 40 and np.isfinite(result.losses).all()
    end = held_out_loss(pipe, asuka_training.AlignerPair(*trained_aligners(tmp_path / "out")))
    assert end < 0.25 * start, (start, end)
    assert end < 0.95 * unconditioned, (unconditioned, end)
