# Copyright 2026 The asuka authors. Apache-2.0.
"""diffusers' step caches on the ASUKA pipelines.

A step cache skips or approximates part of the denoiser at some steps from what it computed at earlier ones.
diffusers ships them as hooks (`diffusers.hooks`): FirstBlockCache, TaylorSeer, MagCache, FasterCache and Pyramid
Attention Broadcast. They expect the pipeline to drive the denoiser in a particular way, which `StepCacheMixin`
gives both ASUKA pipelines:

* every denoiser call runs inside `denoiser.cache_context(name, ...)` (the hooks keep one state per name),
* `pipe.current_timestep` is the timestep of the step being run (PAB and FasterCache read it),
* the hooks' state is reset at the start and at the end of each call, so two calls in a row give what two fresh
  pipelines give.

The FLUX transformer carries diffusers' `CacheMixin` and takes every config. The SD-1.5 UNet has no `CacheMixin`;
of diffusers' hooks only Pyramid Attention Broadcast works on any model whose attention layers are diffusers'
`Attention` (the others need a registered transformer-block class), so `AsukaPipeline` takes PAB only, on the
UNet's self- and cross-attention layers.

This module ships to the Hub as remote code next to the pipelines, so it imports only torch and diffusers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_pyramid_attention_broadcast,
)
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS


# The configs a denoiser with diffusers' `CacheMixin` takes (the FLUX transformer).
CACHE_CONFIGS = (
    FirstBlockCacheConfig,
    TaylorSeerCacheConfig,
    MagCacheConfig,
    FasterCacheConfig,
    PyramidAttentionBroadcastConfig,
)

_PAB_HOOK = "pyramid_attention_broadcast"  # the name diffusers registers its PAB hooks under


class StepCacheMixin:
    """Drive a pipeline's denoiser (its `backbone_spec.denoiser`) the way diffusers' cache hooks expect.

    Listed before `DiffusionPipeline` in a pipeline's bases, so that its `maybe_free_model_hooks` (the end of every
    call) also resets the hooks of a denoiser without `CacheMixin`.
    """

    @property
    def current_timestep(self) -> torch.Tensor | None:
        """The timestep of the step being run; `None` outside the denoising loop."""
        return getattr(self, "_current_timestep", None)

    @property
    def step_cache_denoiser(self) -> torch.nn.Module:
        """The model the step caches hook into (the UNet or the transformer)."""
        return getattr(self, self.backbone_spec.denoiser)

    def enable_step_cache(self, config: Any) -> None:
        """Hook a diffusers cache config into the denoiser; a config's unset `current_timestep_callback` is set to
        read `pipe.current_timestep`. The FLUX transformer takes every config of `CACHE_CONFIGS`, the SD UNet
        `PyramidAttentionBroadcastConfig` only; a pipeline compiled with `fullgraph=True` none."""
        denoiser = self.step_cache_denoiser
        if getattr(self, "_compiled_fullgraph", False):
            raise ValueError(
                "The pipeline was compiled with fullgraph=True, which a step cache's hooks break: compile it with "
                "`compile_components(fullgraph=False)` to use a step cache."
            )
        if hasattr(config, "current_timestep_callback") and config.current_timestep_callback is None:
            config.current_timestep_callback = lambda: self.current_timestep
        if hasattr(denoiser, "enable_cache"):
            denoiser.enable_cache(config)
        elif isinstance(config, PyramidAttentionBroadcastConfig):
            if self.step_cache_enabled:
                raise ValueError("A step cache is already enabled; call `disable_step_cache()` first.")
            apply_pyramid_attention_broadcast(module=denoiser, config=config)
        else:
            raise ValueError(
                f"{type(denoiser).__name__} has no diffusers `CacheMixin`, so it takes no {type(config).__name__}; "
                "accepted: PyramidAttentionBroadcastConfig."
            )

    def disable_step_cache(self) -> None:
        """Remove the step cache's hooks from the denoiser (a no-op without one)."""
        denoiser = self.step_cache_denoiser
        if hasattr(denoiser, "disable_cache"):
            if denoiser.is_cache_enabled:
                denoiser.disable_cache()
        elif self.step_cache_enabled:
            HookRegistry.check_if_exists_or_initialize(denoiser).remove_hook(_PAB_HOOK, recurse=True)

    @property
    def step_cache_enabled(self) -> bool:
        """Whether a step cache is hooked into the denoiser."""
        denoiser = self.step_cache_denoiser
        if hasattr(denoiser, "is_cache_enabled"):
            return denoiser.is_cache_enabled
        return any(_has_hook(module, _PAB_HOOK) for module in denoiser.modules())

    @contextlib.contextmanager
    def denoiser_step(
        self, name: str, step_index: int, timestep: torch.Tensor, num_inference_steps: int
    ) -> Iterator[None]:
        """The context of one denoiser call of step `step_index`: `current_timestep` is `timestep`, and the call runs
        in the denoiser's `cache_context(name, ...)` (`"cond"`, or `"uncond"` for a second branch) where it has one."""
        self._current_timestep = timestep
        denoiser = self.step_cache_denoiser
        if not hasattr(denoiser, "cache_context"):
            yield
            return
        with denoiser.cache_context(
            name, step_index=step_index, num_inference_steps=num_inference_steps, timestep=timestep
        ):
            yield

    def reset_step_caches(self) -> None:
        """Forget the step caches' state and the current timestep (at the start and the end of a call)."""
        self._current_timestep = None
        denoiser = getattr(self, self.backbone_spec.denoiser, None)
        if denoiser is not None and any(hasattr(module, "_diffusers_hook") for module in denoiser.modules()):
            HookRegistry.check_if_exists_or_initialize(denoiser).reset_stateful_hooks(recurse=True)

    def _reset_step_state(self, guidance_scale: float) -> None:
        """The step state at the start of a call, and the step caches started afresh (even after an interrupted
        call)."""
        super()._reset_step_state(guidance_scale)
        self.reset_step_caches()

    def maybe_free_model_hooks(self) -> None:
        """diffusers' end of a call (offloading hooks, `CacheMixin` state), and the reset of the step caches."""
        self.reset_step_caches()
        super().maybe_free_model_hooks()


def _has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None


# `--cache NAME[:VALUE]`: each cache's main knob and its default.
CACHE_KNOBS = {
    "first-block": ("threshold", 0.12),
    "taylorseer": ("cache_interval", 5),
    "mag": ("threshold", 0.06),
    "faster": ("spatial_attention_block_skip_range", 2),
    "pab": ("spatial_attention_block_skip_range", 2),
}


def parse_cache_spec(spec: str, num_inference_steps: int, mag_ratios: torch.Tensor | None = None) -> Any:
    """The diffusers cache config of `spec`, `NAME[:VALUE]` with NAME one of `CACHE_KNOBS` and VALUE its main knob
    (`first-block:0.12`, `taylorseer:5`, `mag:0.06`, `faster:2`, `pab:2`).

    MagCache needs the denoiser's magnitude ratios: `mag_ratios` (e.g. from `calibrate_mag_cache`), else diffusers'
    FLUX ones (`FLUX_MAG_RATIOS`, measured on FLUX.1-dev), interpolated to `num_inference_steps`. FasterCache is set
    up for a guidance-distilled denoiser (one branch per step), as FLUX.1-Fill is.
    """
    name, _, value = spec.partition(":")
    if name not in CACHE_KNOBS:
        raise ValueError(f"Unknown cache {name!r} in {spec!r}; accepted: {', '.join(CACHE_KNOBS)} (as NAME[:VALUE]).")
    knob, default = CACHE_KNOBS[name]
    try:
        knob_value = type(default)(value) if value else default
    except ValueError:
        raise ValueError(
            f"Cache {spec!r}: {knob} must be a{'n integer' if isinstance(default, int) else ' number'}, e.g. "
            f"{name}:{default}."
        ) from None
    if knob_value <= 0:
        raise ValueError(f"Cache {spec!r}: {knob} must be positive, e.g. {name}:{default}.")
    if name == "first-block":
        return FirstBlockCacheConfig(threshold=knob_value)
    if name == "taylorseer":
        return TaylorSeerCacheConfig(cache_interval=knob_value)
    if name == "mag":
        ratios = FLUX_MAG_RATIOS if mag_ratios is None else mag_ratios
        return MagCacheConfig(threshold=knob_value, num_inference_steps=num_inference_steps, mag_ratios=ratios)
    if name == "faster":
        return FasterCacheConfig(
            spatial_attention_block_skip_range=knob_value,
            is_guidance_distilled=True,
            attention_weight_callback=lambda _: 0.5,
        )
    return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=knob_value)


def calibrate_mag_cache(pipe: StepCacheMixin, *args: Any, num_inference_steps: int, **kwargs: Any) -> list[float]:
    """MagCache's calibration run on the user's own settings: call `pipe(*args, num_inference_steps=..., **kwargs)`
    once with nothing skipped and return the per-step magnitude ratios, for `MagCacheConfig(mag_ratios=...)` (or
    `parse_cache_spec(..., mag_ratios=...)`) at these settings. The pipeline's own step cache must be off."""
    if pipe.step_cache_enabled:
        raise ValueError("Disable the step cache (`pipe.disable_step_cache()`) before calibrating MagCache.")
    if "callback_on_step_end" in kwargs:
        raise ValueError("`calibrate_mag_cache` uses the step callback itself; call it without one.")
    # One step more than the run, so that the hook never reaches its end-of-run reset before the last step is read.
    pipe.enable_step_cache(MagCacheConfig(calibrate=True, num_inference_steps=num_inference_steps + 1))
    ratios: list[float] = []

    def read_ratios(pipeline, step, timestep, callback_kwargs):
        for module in pipe.step_cache_denoiser.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = None if registry is None else registry.get_hook("mag_cache_block_hook")
            if hook is not None and hook.is_tail:
                ratios[:] = hook.state_manager._state_cache["cond"].calibration_ratios
        return {}

    try:
        pipe(*args, num_inference_steps=num_inference_steps, callback_on_step_end=read_ratios, **kwargs)
    finally:
        pipe.disable_step_cache()
    return list(ratios)
