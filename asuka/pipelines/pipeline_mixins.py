# Copyright 2026 The asuka authors. Apache-2.0.
"""The call state the asuka pipelines share, as mixins of their classes.

`StepStateMixin` gives every pipeline diffusers' step-callback contract and the input checks they share;
`AsukaInpaintMixin` gives the ASUKA pipelines (SD and FLUX) their guidance scale, their working-resolution check and
the preview of their `mae` prior. The image steps themselves are the pure functions of `inpaint_steps`.

This module ships to the Hub as remote code next to the pipeline files (see `hub_export`), so it imports only
torch, diffusers, PIL and its relative siblings.
"""

from collections.abc import Callable
from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from .inpaint_steps import OUTPUT_TYPES, ImageInput, mae_reconstruction


# A pipeline's `callback_on_step_end`: `callback(pipe, step, timestep, callback_kwargs) -> dict | None`, or a diffusers
# callback object (which brings its own `tensor_inputs`).
StepCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict | None] | PipelineCallback | MultiPipelineCallbacks
)


class StepStateMixin:
    """diffusers' step-callback contract of a pipeline call: `num_timesteps` and `interrupt` (`__call__` sets
    `self._num_timesteps` and `self._interrupt`), the callback's tensor names, and the input checks every pipeline
    shares."""

    @property
    def num_timesteps(self) -> int:
        """How many steps the current (or last) call runs."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a step callback to stop the loop after that step."""
        return self._interrupt

    def _check_common_inputs(self, output_type: str, counts: dict[str, Any], tensor_inputs: list[str]) -> None:
        """The checks of a pipeline's `check_inputs` that all pipelines share.

        `counts` maps argument names (e.g. `num_inference_steps`) to values that must be positive integers;
        `tensor_inputs` (`callback_on_step_end_tensor_inputs`) must be in the pipeline's `_callback_tensor_inputs`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` is {output_type!r}; expected one of {OUTPUT_TYPES}.")
        for name, value in counts.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` is {value!r}; expected a positive integer.")
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has {unknown}; "
                f"expected names in {self._callback_tensor_inputs}."
            )

    def _step_callback(
        self, callback: StepCallback, step: int, timestep: torch.Tensor, tensors: dict, names: list[str]
    ) -> dict[str, torch.Tensor]:
        """Run `callback` after a step with the `tensors` it asked for (`names`); the tensors it returns (a dict, or
        None for none) replace those of the same name, the others stay.

        The callback may have edited the conditioning in place, which a `conditioning_cache` (see
        `cached_attention`) cannot see for inference tensors, so the cache is invalidated after it."""
        outputs = callback(self, step, timestep, {k: tensors[k] for k in names}) or {}
        cache = getattr(self, "conditioning_cache", None)
        if cache is not None:
            cache.invalidate()
        return {k: outputs.get(k, value) for k, value in tensors.items()}

    @staticmethod
    def _check_start_state(name: str, given: torch.Tensor | None, expected: tuple[int, ...], layout: str) -> None:
        """A start state passed to a call (`latents`, ...) must have the shape the call would draw; `layout` names
        its dimensions for the message."""
        if given is not None and tuple(given.shape) != tuple(expected):
            raise ValueError(
                f"`{name}` has shape {tuple(given.shape)}; expected {tuple(expected)} ({layout}) for this input."
            )

    @staticmethod
    def step_callback_tensor_inputs(callback: StepCallback | None, tensor_inputs: list[str]) -> list[str]:
        """The tensors a step callback receives: a callback object's own `tensor_inputs`, else `tensor_inputs`."""
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            return callback.tensor_inputs
        return tensor_inputs


class AsukaInpaintMixin(StepStateMixin):
    """What the ASUKA pipelines (SD and FLUX) share beyond the step state: the guidance scale, the working-resolution
    check and the preview of their `mae` prior."""

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the current step (classifier-free for SD, FLUX's embedded guidance for FLUX); a step
        callback may change `_guidance_scale`."""
        return self._guidance_scale

    def _reset_step_state(self, guidance_scale: float) -> None:
        """The step state at the start of a call: its guidance scale (a step callback may change it), no interrupt."""
        self._guidance_scale = guidance_scale
        self._interrupt = False

    @staticmethod
    def _check_working_resolution(working_resolution: int, multiple: int) -> None:
        """The backbone needs at least one `multiple` (its size step) of working resolution."""
        if working_resolution < multiple:
            raise ValueError(f"`working_resolution` is {working_resolution}; expected at least {multiple}.")

    def mae_reconstruction(
        self, image: ImageInput, mask_image: ImageInput, mae_input_preprocessing: str | None = None
    ) -> list[PIL.Image.Image]:
        """The MAE's own pixel estimate ("what the prior thinks"), pasted into the hole at the input's size; pass the
        run's `mae_input_preprocessing` to see that run's prior."""
        return mae_reconstruction(self.mae, image, mask_image, mae_input_preprocessing)
