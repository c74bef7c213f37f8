"""diffusers' step-callback contract for the three pipelines: `_callback_tensor_inputs` (what diffusers'
`test_callback_inputs` checks, and more), `num_timesteps`, `interrupt`, `PipelineCallback` / `MultiPipelineCallbacks`
objects with their own `tensor_inputs`, and guidance."""

import inspect

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback, SDCFGCutoffCallback

from asuka import StrDiffusionPipeline
from asuka.testing import make_tiny_pipeline
from tests.support.pipeline_contract import CASES, make_pipe, run


class Recorder(PipelineCallback):
    """A ready-made-style callback object: declares its `tensor_inputs` and records what each step hands it."""

    tensor_inputs = None  # set per instance (the base class makes it a property)

    def __init__(self, tensor_inputs: list[str]):
        super().__init__()
        self.tensor_inputs = tensor_inputs
        self.steps: list[int] = []
        self.received: list[dict[str, torch.Tensor]] = []

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.steps.append(step_index)
        self.received.append({k: v.clone() for k, v in callback_kwargs.items()})
        return callback_kwargs


class SetGuidance(PipelineCallback):
    """Sets `pipeline._guidance_scale` after step 0, as diffusers' cut-off callbacks do (no tensor inputs)."""

    tensor_inputs = []

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == 0:
            pipeline._guidance_scale = self.scale
        return callback_kwargs


def recording_callback():
    """A step callback that records, per step, the names it was handed (each must be a tensor), and its records."""
    seen: list[list[str]] = []

    def record(p, i, t, tensors):
        assert all(isinstance(value, torch.Tensor) for value in tensors.values())
        seen.append(sorted(tensors))
        return tensors

    return record, seen


def test_callback_gets_exactly_the_tensors_it_asks_for(pipe, case):
    names = pipe._callback_tensor_inputs
    assert "latents" in names
    for requested in (["latents"], names, []):
        record, seen = recording_callback()
        run(
            pipe, case, output_type="latent", callback_on_step_end=record, callback_on_step_end_tensor_inputs=requested
        )
        assert seen == [sorted(requested)] * pipe.num_timesteps, requested
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        run(pipe, case, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents", "noise_pred"])


def test_callback_tensor_inputs_default_to_the_latents(pipe, case):
    default = inspect.signature(type(pipe).__call__).parameters["callback_on_step_end_tensor_inputs"].default
    assert default == ["latents"]
    record, seen = recording_callback()
    run(pipe, case, callback_on_step_end=record)
    assert seen == [["latents"]] * pipe.num_timesteps


def test_num_timesteps_lets_a_callback_zero_the_latents_at_the_last_step(pipe, case):
    steps = []

    def zero_last(p, i, t, tensors):  # edits the dict it is handed (all the tensors) and returns it, as diffusers' do
        steps.append(i)
        if i == p.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    callback = dict(callback_on_step_end=zero_last, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    latent = run(pipe, case, output_type="latent", **callback)
    assert steps == list(range(pipe.num_timesteps)) and pipe.num_timesteps >= case.steps
    assert latent.abs().sum() == 0
    assert torch.count_nonzero(run(pipe, case, output_type="latent")) > 0
    assert np.abs(run(pipe, case, **callback) - run(pipe, case)).max() > 1e-3


def shifting_callback(name: str):
    """A step callback that adds 1 to the tensor `name` after the first step."""

    def shift(p, i, t, tensors):
        return {name: tensors[name] + 1} if i == 0 else {}

    return shift


def test_every_callback_tensor_a_callback_replaces_steers_the_rest_of_the_run(pipe, case):
    # A name the pipeline hands out but does not take back (or takes back and ignores) leaves the result unchanged.
    # The final latents show it: the tiny networks' pixels are mostly clamped to 0 or 1, which can hide a change.
    base = run(pipe, case, output_type="latent")
    for name in pipe._callback_tensor_inputs:
        callback = dict(callback_on_step_end=shifting_callback(name), callback_on_step_end_tensor_inputs=[name])
        assert (run(pipe, case, output_type="latent", **callback) - base).abs().max() > 1e-3, name


def test_interrupt_stops_the_loop_at_that_step(pipe, case):
    states = []

    def record(p, i, t, tensors):
        states.append(tensors["latents"].clone())
        return tensors

    steps = 3
    run(
        pipe,
        case,
        num_inference_steps=steps,
        output_type="latent",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    assert len(states) >= 3
    seen = []

    def stop_after_second(p, i, t, tensors):
        seen.append(i)
        if i == 1:
            p._interrupt = True
        return tensors

    stopped = run(pipe, case, num_inference_steps=steps, output_type="latent", callback_on_step_end=stop_after_second)
    assert seen == [0, 1]
    torch.testing.assert_close(stopped, states[1])
    assert not torch.allclose(stopped, states[-1])
    # The next call starts afresh.
    assert np.array_equal(run(pipe, case), run(pipe, case))
    assert pipe.interrupt is False


def test_callback_object_receives_exactly_its_own_tensor_inputs(pipe, case):
    # The names other than the latents, so the pipeline's default `["latents"]` would not do.
    names = [name for name in pipe._callback_tensor_inputs if name != "latents"]
    recorder = Recorder(names)
    run(pipe, case, callback_on_step_end=recorder)
    assert recorder.steps == list(range(pipe.num_timesteps))
    assert all(set(received) == set(names) for received in recorder.received)


def test_multi_pipeline_callbacks_runs_both_with_their_inputs(pipe, case):
    first, second = Recorder(["latents"]), Recorder(pipe._callback_tensor_inputs[-1:])
    run(pipe, case, callback_on_step_end=MultiPipelineCallbacks([first, second]))
    assert first.steps == second.steps == list(range(pipe.num_timesteps))
    wanted = {"latents", pipe._callback_tensor_inputs[-1]}
    assert all(set(received) == wanted for received in first.received + second.received)


# ------------------------------------------------------------------------------------------------------ guidance


def guided_sd_pipe():
    pipe = make_tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # one timestep per step
    return pipe


def sd_guided_run(pipe, *callbacks: PipelineCallback, steps: int = 4):
    """AsukaPipeline with classifier-free guidance against random negative embeddings; the latents of every step."""
    recorder = Recorder(["latents"])
    negative = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(5))
    out = run(
        pipe,
        CASES[0],
        num_inference_steps=steps,
        guidance_scale=5.0,
        negative_prompt_embeds=negative,
        callback_on_step_end=MultiPipelineCallbacks([*callbacks, recorder]),
    )
    return out, [received["latents"] for received in recorder.received]


def test_sd_cfg_cutoff_callback_changes_the_result_after_the_cutoff_step():
    pipe = guided_sd_pipe()
    full, full_latents = sd_guided_run(pipe)
    cut, cut_latents = sd_guided_run(pipe, SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1))
    assert pipe.guidance_scale == 0.0 and not pipe.do_classifier_free_guidance
    # Steps 0 and 1 ran with guidance in both runs; from step 2 on, the cut-off run has none.
    for step in (0, 1):
        torch.testing.assert_close(cut_latents[step], full_latents[step], rtol=0, atol=0)
    assert (cut_latents[2] - full_latents[2]).abs().max() > 1e-4
    assert np.abs(cut - full).max() > 1e-3


def test_sd_callback_can_change_the_guidance_strength():
    pipe = guided_sd_pipe()
    full, full_latents = sd_guided_run(pipe)
    kept, _ = sd_guided_run(pipe, SetGuidance(5.0))
    weakened, weakened_latents = sd_guided_run(pipe, SetGuidance(2.0))
    assert pipe.guidance_scale == 2.0 and pipe.do_classifier_free_guidance
    assert np.array_equal(kept, full)
    torch.testing.assert_close(weakened_latents[0], full_latents[0], rtol=0, atol=0)
    assert (weakened_latents[1] - full_latents[1]).abs().max() > 1e-4
    assert np.abs(weakened - full).max() > 1e-3


def test_flux_guidance_scale_is_readable_in_a_callback():
    case = CASES[1]
    pipe = make_pipe(case)
    read = []

    def record(p, i, t, tensors):
        read.append(p.guidance_scale)
        return tensors

    run(pipe, case, guidance_scale=7.5, callback_on_step_end=record)
    assert read == [7.5] * pipe.num_timesteps
    assert pipe.guidance_scale == 7.5


def test_strdiffusion_has_no_guidance_and_says_so():
    case = CASES[2]
    pipe = make_pipe(case)
    with pytest.raises(TypeError, match="guidance_scale"):
        run(pipe, case, guidance_scale=2.0)
    doc = StrDiffusionPipeline.__call__.__doc__
    assert "guidance_scale" in doc and "no text" in doc.lower()
