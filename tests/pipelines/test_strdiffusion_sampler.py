"""The pipeline replays the reference sampler run (golden_sampler, T=100, 16x16, full-size seeded networks):
same draws, same accept/average/stop decisions, same discriminator values, the state entering every step,
and the output to <= 1e-4 relative."""

import json

import torch
from safetensors.torch import load_file

from asuka.convert.strdiffusion import convert_denoiser, convert_discriminator
from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline, extract_structure
from asuka.schedulers import IRSDEScheduler
from tests.support import FIXTURES
from tests.support.seeded import reference_state_dict


FIXTURES = FIXTURES / "strdiffusion"


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def test_replays_reference_sampler_run():
    golden = load_file(str(FIXTURES / "golden_sampler.safetensors"))
    trace = json.loads((FIXTURES / "sampler_trace.json").read_text())
    pipe = StrDiffusionPipeline(
        texture_unet=convert_denoiser(reference_state_dict("texture_denoiser")),
        structure_unet=convert_denoiser(reference_state_dict("structure_denoiser")),
        discriminator=convert_discriminator(reference_state_dict("discriminator")),
        scheduler=IRSDEScheduler(num_train_timesteps=trace["T"]),
        resolution=None,  # the run is 16x16
    )
    pipe.set_progress_bar_config(disable=True)

    # the pipeline's own structure extraction gives the reference's maps for this image
    gray, edges = extract_structure(golden["Y_GT"], sigma=2.0)
    assert torch.equal(edges, golden["X_LQ_edge"]) and rel_err(gray, golden["X_GT_gray"]) < 1e-6

    entering, disc_values = {}, []

    def on_texture(module, args):
        xt, _, t, structure = args
        entering.setdefault(int(t), (xt.clone(), structure.clone()))

    def on_discriminator(module, args, output):
        disc_values.append(output.item())

    pipe.texture_unet.register_forward_pre_hook(on_texture)
    pipe.discriminator.register_forward_hook(on_discriminator)
    tape = iter([golden[f"noise.{i:05d}"] for i in range(len(trace["noise_tape"]))])
    out = pipe(golden["Y_GT"], 1 - golden["mask"], noise_tape=tape, output_type="latent")
    assert next(tape, None) is None, "draws left unused"

    # state entering each step, in sampling order: a failure names the first diverging step
    for t in range(trace["T"], 0, -1):
        x, s = entering[t]
        err_x = rel_err(x, golden[f"step_in.t{t:04d}.x"])
        err_s = rel_err(s, golden[f"step_in.t{t:04d}.S"])
        assert err_x <= 1e-4 and err_s <= 1e-4, f"first divergence entering t={t}: x {err_x:.2e}, S {err_s:.2e}"

    # decisions at every resampling step
    expected = [
        (step["t"], i, r["decision"].split()[0])
        for step in trace["early_steps"]
        for i, r in enumerate(step["resample"], start=1)
    ]
    assert out.decisions == [expected]
    assert sum(d == "accept" for *_, d in expected) == 6 and len(expected) == 41

    # discriminator values: D_n (only where resampling happens; the pipeline skips unused D_n) and each D_p
    reference_d = [
        value
        for step in trace["early_steps"]
        if step["resample"]
        for value in [step["D_n"]] + [r["D_p"] for r in step["resample"]]
    ]
    assert len(disc_values) == len(reference_d)
    assert max(abs(a - b) for a, b in zip(disc_values, reference_d)) < trace["min_abs_D_p_minus_D_n"] / 10

    # the reference saves the composite of the known pixels and the final texture state (the latent output)
    known = golden["mask"].bool().expand_as(out.images)
    assert rel_err(torch.where(known, golden["Y_GT"], out.images), golden["output"]) <= 1e-4
