"""FLUX.1-Fill's training seam (asuka/pipelines/backbones.py): the denoise call is the transformer called as
`AsukaFluxPipeline.__call__` calls it, and the flow-matching objective is the one of diffusers' FLUX training
examples (σ from a density, optionally shifted as the scheduler shifts it, velocity target, one-step x0)."""

import dataclasses
import functools

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux_fill import calculate_shift

from asuka.pipelines.backbones import FLUX_FILL, FlowMatchingObjective, NoisePredictionObjective
from asuka.testing.configs import FLUX_SCHEDULER_CONFIG
from asuka.testing.flux import make_tiny_flux_pipeline
from tests.support.flux import pipeline_transformer_call


HEIGHT, WIDTH = 48, 32  # pixels: 6x4 latents, 3x2 packed tokens (not square, so height and width cannot swap)


@pytest.mark.parametrize("guidance", [None, torch.tensor([3.5, 30.0])])
def test_the_flux_denoise_call_is_the_transformer_called_as_the_pipeline_calls_it(guidance):
    pipe = make_tiny_flux_pipeline()
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 16, HEIGHT // 8, WIDTH // 8, generator=generator)
    raw_masked = torch.randn(2, 16, HEIGHT // 8, WIDTH // 8, generator=generator)
    mask = (torch.rand(2, 1, HEIGHT, WIDTH, generator=generator) > 0.5).float()
    tokens, pooled = torch.randn(2, 5, 32, generator=generator), torch.randn(2, 24, generator=generator)
    timesteps = torch.tensor([250.0, 875.0])
    config = pipe.vae.config
    scaled_masked = (raw_masked - config.shift_factor) * config.scaling_factor

    conditioning = {"prompt_embeds": tokens, "pooled_prompt_embeds": pooled}
    with torch.no_grad():
        out = FLUX_FILL.denoise(pipe.transformer, noisy, timesteps, conditioning, scaled_masked, mask, guidance)
        embedded = torch.full([2], 30.0) if guidance is None else guidance  # the release's 30 by default
        expected = pipeline_transformer_call(pipe, noisy, raw_masked, mask, timesteps, tokens, pooled, embedded)
        other_guidance = FLUX_FILL.denoise(pipe.transformer, noisy, timesteps, conditioning, scaled_masked, mask, 1.0)
    assert out.shape == noisy.shape
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, other_guidance)  # the guidance is embedded, not dropped


def test_the_flux_denoise_call_takes_the_mask_at_the_latents_size_too():
    """A mask given per latent pixel is spread over its 8x8 pixel block, as the pixel mask of the same blocks."""
    pipe = make_tiny_flux_pipeline()
    generator = torch.Generator().manual_seed(1)
    noisy, masked = torch.randn(2, 2, 16, 6, 4, generator=generator)
    latent_mask = (torch.rand(2, 1, 6, 4, generator=generator) > 0.5).float()
    pixel_mask = latent_mask.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    conditioning = {"prompt_embeds": torch.randn(2, 3, 32), "pooled_prompt_embeds": torch.randn(2, 24)}
    call = functools.partial(FLUX_FILL.denoise, pipe.transformer, noisy, torch.tensor([500.0, 500.0]), conditioning)
    with torch.no_grad():
        torch.testing.assert_close(call(masked, latent_mask), call(masked, pixel_mask), rtol=0, atol=0)


def test_noised_draws_sigma_then_clean_estimate_inverts_it():
    """noisy = (1 - σ) x0 + σ noise with σ = t / 1000, target noise - x0, and the exact velocity gives x0 back."""
    objective = FLUX_FILL.objective
    scheduler = objective.training_scheduler(FLUX_SCHEDULER_CONFIG)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    latents = torch.randn(64, 16, 4, 6)
    noisy, timesteps, target = objective.noised(scheduler, latents, generator=torch.Generator().manual_seed(0))
    # the same draws, by hand: the noise first, then σ = sigmoid(N(0, 1))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    sigmas = torch.sigmoid(torch.normal(0.0, 1.0, (64,), generator=generator))
    torch.testing.assert_close(timesteps, sigmas * 1000)
    torch.testing.assert_close(noisy, (1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(target, noise - latents)
    torch.testing.assert_close(objective.clean_estimate(scheduler, noisy, target, timesteps), latents)
    assert 0 < sigmas.min() and sigmas.max() < 1 and abs(sigmas.mean().item() - 0.5) < 0.06


@pytest.mark.parametrize("scheme", ["mode", "uniform"])
def test_the_other_densities_round_trip_too(scheme):
    objective = dataclasses.replace(FLUX_FILL.objective, weighting_scheme=scheme)
    scheduler = objective.training_scheduler(FLUX_SCHEDULER_CONFIG)
    latents = torch.randn(8, 16, 4, 4)
    noisy, timesteps, target = objective.noised(scheduler, latents, generator=torch.Generator().manual_seed(3))
    assert ((timesteps > 0) & (timesteps < 1000)).all()
    torch.testing.assert_close(objective.clean_estimate(scheduler, noisy, target, timesteps), latents)


def test_the_shifts_are_the_schedulers_own():
    """The static and resolution shifts give the σ the scheduler's `set_timesteps` makes of the same draws."""
    latent_size = (32, 48)  # 16 x 24 = 384 packed tokens
    draws = FlowMatchingObjective().sigmas(
        FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        6,
        latent_size,
        generator=torch.Generator().manual_seed(5),
    )

    def shifted(shift, **config):
        scheduler = FlowMatchEulerDiscreteScheduler(**{**FLUX_SCHEDULER_CONFIG, **config})
        objective = FlowMatchingObjective(shift=shift)
        return objective.sigmas(scheduler, 6, latent_size, generator=torch.Generator().manual_seed(5)), scheduler

    static, scheduler = shifted("static", use_dynamic_shifting=False)
    scheduler.set_timesteps(sigmas=draws.tolist())
    torch.testing.assert_close(static, scheduler.sigmas[:-1])
    assert (static > draws).all()  # FLUX's shift 3 moves σ towards noise

    resolution, scheduler = shifted("resolution")
    mu = calculate_shift(384, 256, 4096, 0.5, 1.15)
    scheduler.set_timesteps(sigmas=draws.tolist(), mu=mu)
    torch.testing.assert_close(resolution, scheduler.sigmas[:-1])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("weighting_scheme", "cosmap", r"Unknown timestep density 'cosmap'; accepted: \['logit_normal', 'mode'"),
        ("shift", "dynamic", r"Unknown timestep shift 'dynamic'; accepted: \['none', 'static', 'resolution'\]"),
        ("logit_std", 0.0, r"logit_std must be > 0"),
    ],
)
def test_bad_objective_fields_raise_value_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FLUX_FILL.objective, **{field: value})


def test_the_noise_is_drawn_as_randn_like_in_the_latents_layout():
    """As diffusers' training examples draw it (`torch.randn_like`, then the timesteps), so a VAE's channels-last
    latents get the same noise and timesteps from the global RNG as before the objectives took a generator: the SD
    runs' loss sequences stay what they were."""
    latents = torch.randn(2, 4, 8, 6).to(memory_format=torch.channels_last)
    ddpm = DDPMScheduler()
    torch.manual_seed(0)
    noisy, timesteps, target = NoisePredictionObjective().noised(ddpm, latents)
    torch.manual_seed(0)
    noise = torch.randn_like(latents)
    expected_timesteps = torch.randint(0, 1000, (2,)).long()
    torch.testing.assert_close(timesteps, expected_timesteps, rtol=0, atol=0)
    torch.testing.assert_close(target, noise, rtol=0, atol=0)
    torch.testing.assert_close(noisy, ddpm.add_noise(latents, noise, expected_timesteps), rtol=0, atol=0)

    flow = FLUX_FILL.objective
    torch.manual_seed(1)
    _, _, velocity = flow.noised(flow.training_scheduler(FLUX_SCHEDULER_CONFIG), latents)
    torch.manual_seed(1)
    torch.testing.assert_close(velocity, torch.randn_like(latents) - latents, rtol=0, atol=0)
