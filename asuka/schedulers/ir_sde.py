"""Mean-reverting SDE (IR-SDE) scheduler used by StrDiffusion.

The forward process is dx = theta_t (mu - x) dt + sigma_t dW: it drifts the clean picture x0 toward a
mean mu (the masked image, or the masked edge map) while adding noise of stationary std `max_sigma`.
All numbers follow the reference implementation (image-restoration-sde / StrDiffusion) in float32,
including its cosine theta schedule and its dt = -ln(eps) / sum(theta).

mu is always an explicit argument: the same tables serve the texture SDE and the structure SDE.
"""

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class IRSDESchedulerOutput(BaseOutput):
    """Output of `IRSDEScheduler.step`: the state one level down and the score that was used."""

    prev_sample: torch.Tensor
    score: torch.Tensor


def _cosine_thetas(num_steps: int, s: float = 0.008) -> torch.Tensor:
    """theta_t = 1 - abar(t + 1) on the reference's (T + 2)-step cosine grid, t = 0..T (float32)."""
    length = num_steps + 2
    grid = torch.linspace(0, length, length + 1, dtype=torch.float32)
    abar = torch.cos(((grid / length) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = abar / abar[0]
    return 1 - abar[1:-1]


class IRSDEScheduler(SchedulerMixin, ConfigMixin):
    """Tables and steps of StrDiffusion's mean-reverting SDE (IR-SDE), as a diffusers scheduler.

    Parameters:
        num_train_timesteps (`int`, *optional*, defaults to 100):
            T; the tables have T + 1 entries (index 0 is never a step).
        max_sigma (`float`, *optional*, defaults to 30.0):
            Stationary noise level; values >= 1 are read on the 0..255 scale (the reference's `max_sigma: 30` means
            30 / 255).
        eps (`float`, *optional*, defaults to 0.005):
            exp(-sum(theta) * dt) at t = T, which fixes dt.
        schedule (`str`, *optional*, defaults to `"cosine"`):
            Only `"cosine"`, the schedule every StrDiffusion config uses.

    Example:

    ```py
    >>> import torch
    >>> from asuka.schedulers import IRSDEScheduler

    >>> scheduler = IRSDEScheduler(num_train_timesteps=100)
    >>> clean, mean = torch.rand(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    >>> noisy = scheduler.add_noise(clean, torch.randn_like(clean), 100, mean)  # the state at t = T
    ```
    """

    order = 1

    @register_to_config
    def __init__(
        self, num_train_timesteps: int = 100, max_sigma: float = 30.0, eps: float = 0.005, schedule: str = "cosine"
    ):
        if schedule != "cosine":
            raise ValueError(f"Unsupported schedule {schedule!r}; only 'cosine' is implemented.")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}.")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {eps}.")
        self.max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma
        self.thetas = _cosine_thetas(num_train_timesteps)
        self.sigmas = torch.sqrt(self.max_sigma**2 * 2 * self.thetas)
        self.thetas_cumsum = torch.cumsum(self.thetas, dim=0) - self.thetas[0]
        self.dt = -1 / self.thetas_cumsum[-1] * math.log(eps)
        self.sigma_bars = torch.sqrt(self.max_sigma**2 * (1 - torch.exp(-2 * self.thetas_cumsum * self.dt)))
        self.mean_decay = torch.exp(-self.thetas_cumsum * self.dt)
        self.timesteps = torch.arange(num_train_timesteps, 0, -1)
        self.num_inference_steps = num_train_timesteps

    # ----------------------------------------------------------------------------------------- helpers
    def _at(self, table: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped to broadcast against `like` (t: int, 0-d or per-sample [B] tensor)."""
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.numel() not in (1, like.shape[0]):
                raise ValueError(f"timesteps must have 1 or {like.shape[0]} entries, got {t.numel()}.")
            values = table[t.long().cpu()].reshape(-1, *([1] * (like.ndim - 1)))
        else:
            index = int(t)
            if not 0 <= index <= self.config.num_train_timesteps:
                raise ValueError(f"timestep {index} outside 0..{self.config.num_train_timesteps}.")
            values = table[index]
        return values.to(device=like.device, dtype=like.dtype)

    def _noise(self, like: torch.Tensor, noise: torch.Tensor | None, generator: Generator) -> torch.Tensor:
        if noise is not None:
            if noise.shape != like.shape:
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(like.shape)}.")
            return noise
        return randn_tensor(shape=like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def _dt(self, like: torch.Tensor) -> torch.Tensor:
        return self.dt.to(device=like.device, dtype=like.dtype)

    def _sqrt_dt(self) -> float:
        return math.sqrt(self.dt)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device = None):
        """Descending integer steps T..1. Fewer steps than T visit an evenly spaced subset (jumps use
        `step_jump`)."""
        total = self.config.num_train_timesteps
        num_inference_steps = total if num_inference_steps is None else num_inference_steps
        if not 1 <= num_inference_steps <= total:
            raise ValueError(f"num_inference_steps must be in 1..{total}, got {num_inference_steps}.")
        steps = torch.linspace(total, 1, num_inference_steps).round().long()
        self.timesteps = torch.unique_consecutive(steps).to(device)
        self.num_inference_steps = len(self.timesteps)

    # -------------------------------------------------------------------------------------- marginals
    def sigma_bar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Std of x_t given x0, broadcastable against `like`."""
        return self._at(self.sigma_bars, t, like)

    def mu_bar(self, x0: torch.Tensor, mu: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Mean of x_t given x0: mu + (x0 - mu) exp(-sum(theta_1..t) dt)."""
        return mu + (x0 - mu) * torch.exp(-self._at(self.thetas_cumsum, t, x0) * self._dt(x0))

    def add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: int | torch.Tensor,
        mu: torch.Tensor,
    ) -> torch.Tensor:
        """Forward marginal sample x_t = mu_bar(x0, t) + sigma_bar_t * noise (reference `generate_states`)."""
        return self.mu_bar(original_samples, mu, timesteps) + noise * self.sigma_bar(timesteps, original_samples)

    def noise_state(
        self, x: torch.Tensor, noise: torch.Tensor | None = None, generator: Generator = None
    ) -> torch.Tensor:
        """The sampler's start state x + max_sigma * z."""
        return x + self.max_sigma * self._noise(x, noise, generator)

    def score_from_noise(self, noise_pred: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """score = -noise / sigma_bar_t."""
        return -noise_pred / self.sigma_bar(t, noise_pred)

    def real_noise(self, xt: torch.Tensor, x0: torch.Tensor, mu: torch.Tensor, t: int | torch.Tensor):
        """The noise that produced xt from x0 (the training target of the denoisers)."""
        return (xt - self.mu_bar(x0, mu, t)) / self.sigma_bar(t, xt)

    # ------------------------------------------------------------------------------------------ steps
    def _drift(self, x: torch.Tensor, mu: torch.Tensor, t, score: torch.Tensor | None, score_weight: float):
        theta = self._at(self.thetas, t, x)
        drift = theta * (mu - x)
        if score is not None:
            drift = drift - score_weight * self._at(self.sigmas, t, x) ** 2 * score
        return drift * self._dt(x)

    def _dispersion(self, x: torch.Tensor, t, noise: torch.Tensor | None, generator: Generator) -> torch.Tensor:
        return self._at(self.sigmas, t, x) * (self._noise(x, noise, generator) * self._sqrt_dt())

    def reverse_sde_step_mean(self, x: torch.Tensor, score: torch.Tensor, t, mu: torch.Tensor) -> torch.Tensor:
        """Reverse SDE step without its noise term."""
        return x - self._drift(x, mu, t, score, 1.0)

    def reverse_sde_step(
        self,
        x: torch.Tensor,
        score: torch.Tensor,
        t,
        mu: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: Generator = None,
    ) -> torch.Tensor:
        """x - (theta_t (mu - x) - sigma_t^2 score) dt - sigma_t sqrt(dt) z (the reference's sign)."""
        return x - self._drift(x, mu, t, score, 1.0) - self._dispersion(x, t, noise, generator)

    def reverse_ode_step(self, x: torch.Tensor, score: torch.Tensor, t, mu: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE step: x - (theta_t (mu - x) - sigma_t^2 score / 2) dt."""
        return x - self._drift(x, mu, t, score, 0.5)

    def forward_step(
        self, x: torch.Tensor, t, mu: torch.Tensor, noise: torch.Tensor | None = None, generator: Generator = None
    ) -> torch.Tensor:
        """One forward Euler-Maruyama step x + theta_t (mu - x) dt + sigma_t sqrt(dt) z (for resampling)."""
        return x + self._drift(x, mu, t, None, 0.0) + self._dispersion(x, t, noise, generator)

    def _posterior_coefficients(self, xt: torch.Tensor, t, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dt = self._dt(xt)
        cumsum_t = self._at(self.thetas_cumsum, t, xt)
        cumsum_s = self._at(self.thetas_cumsum, s, xt)
        one_step = torch.equal(torch.as_tensor(s), torch.as_tensor(t) - 1)  # also for per-sample [B] timesteps
        a = torch.exp(-self._at(self.thetas, t, xt) * dt) if one_step else torch.exp(-(cumsum_t - cumsum_s) * dt)
        return a, torch.exp(-cumsum_t * dt), torch.exp(-cumsum_s * dt)

    def reverse_optimum_step(self, xt: torch.Tensor, x0: torch.Tensor, t, mu: torch.Tensor) -> torch.Tensor:
        """Posterior mean E[x_{t-1} | x_t, x0] (the denoisers' training target)."""
        a, b, c = self._posterior_coefficients(xt, t, t - 1)
        term1 = a * (1 - c**2) / (1 - b**2)
        term2 = c * (1 - a**2) / (1 - b**2)
        return term1 * (xt - mu) + term2 * (x0 - mu) + mu

    def step_jump(
        self,
        noise_pred: torch.Tensor,
        t: int,
        s: int,
        sample: torch.Tensor,
        mu: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: Generator = None,
    ) -> torch.Tensor:
        """Ancestral jump from level t to level s < t for fewer-step sampling: predict x0 from the
        noise, then sample the exact Ornstein-Uhlenbeck posterior q(x_s | x_t, x0). For s = t - 1 its mean
        is `reverse_optimum_step`."""
        x0 = mu + (sample - mu - self.sigma_bar(t, sample) * noise_pred) / self._at(self.mean_decay, t, sample)
        a, b, c = self._posterior_coefficients(sample, t, s)
        mean = a * (1 - c**2) / (1 - b**2) * (sample - mu) + c * (1 - a**2) / (1 - b**2) * (x0 - mu) + mu
        if s == 0:
            return mean
        std = self.max_sigma * torch.sqrt((1 - c**2) * (1 - a**2) / (1 - b**2))
        return mean + std * self._noise(sample, noise, generator)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        mu: torch.Tensor,
        generator: Generator = None,
        noise: torch.Tensor | None = None,
        mode: str = "sde",
        return_dict: bool = True,
    ) -> IRSDESchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Turn a noise prediction into a score and take one reverse step ("sde" or "ode") at `timestep`."""
        score = self.score_from_noise(model_output, timestep)
        if mode == "sde":
            prev = self.reverse_sde_step(sample, score, timestep, mu, noise=noise, generator=generator)
        elif mode == "ode":
            prev = self.reverse_ode_step(sample, score, timestep, mu)
        else:
            raise ValueError(f"mode must be 'sde' or 'ode', got {mode!r}.")
        if not return_dict:
            return prev, score
        return IRSDESchedulerOutput(prev_sample=prev, score=score)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
