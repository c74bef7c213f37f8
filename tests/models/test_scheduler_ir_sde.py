"""IRSDEScheduler against the reference IR-SDE goldens (T=100 and T=400), float32, <= 1e-6 relative."""

import pytest
import torch
from safetensors.torch import load_file

from asuka.schedulers import IRSDEScheduler
from tests.support import FIXTURES


GOLDEN = load_file(str(FIXTURES / "strdiffusion" / "golden_sde.safetensors"))
STEPS = {100: [1, 2, 40, 99, 100], 400: [1, 2, 160, 399, 400]}


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-6, what: str = ""):
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual.float() - expected).abs().max() / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


@pytest.fixture(params=[100, 400], ids=["T100", "T400"])
def sched(request):
    return request.param, IRSDEScheduler(num_train_timesteps=request.param)


def test_tables(sched):
    T, s = sched
    g = lambda k: GOLDEN[f"T{T}.{k}"]  # noqa: E731
    assert s.thetas.dtype == torch.float32 and len(s.thetas) == T + 1
    for name, table in [
        ("sigmas", s.sigmas),
        ("thetas_cumsum", s.thetas_cumsum),
        ("sigma_bars", s.sigma_bars),
        ("mean_decay", s.mean_decay),
    ]:
        assert_rel(table, g(name), what=name)
    # theta_t is reported through sigma_t = sqrt(2 theta_t) max_sigma; check it independently too
    assert_rel(s.thetas, g("sigmas") ** 2 / (2 * g("max_sigma") ** 2), tol=1e-5, what="thetas")
    assert_rel(s.dt, g("dt"), what="dt")
    assert abs(s.max_sigma - g("max_sigma").item()) < 1e-7
    assert_rel(s.noise_state(GOLDEN["inputs.mu"], noise=g("noise_state.noise")), g("noise_state.out"), what="noise")


def test_single_steps(sched):
    T, s = sched
    x0, mu = GOLDEN["inputs.x0"], GOLDEN["inputs.mu"]
    mask = GOLDEN["inputs.mask"]
    for t in STEPS[T]:
        g = lambda k: GOLDEN[f"T{T}.t{t}.{k}"]  # noqa: E731
        xt = g("xt")
        assert_rel(s.mu_bar(x0, mu, t), g("mu_bar"), what=f"mu_bar t={t}")
        assert_rel(s.sigma_bar(t, xt).reshape(()), g("sigma_bar"), what=f"sigma_bar t={t}")
        score = s.score_from_noise(g("noise_pred"), t)
        assert_rel(score, g("score"), what=f"score t={t}")
        assert_rel(s.reverse_sde_step_mean(xt, score, t, mu), g("reverse_sde_step_mean"), what=f"sde mean t={t}")
        out = s.reverse_sde_step(xt, score, t, mu, noise=g("reverse_sde_step.noise"))
        assert_rel(out, g("reverse_sde_step.out"), what=f"reverse sde t={t}")
        step = s.step(g("noise_pred"), t, xt, mu, noise=g("reverse_sde_step.noise")).prev_sample
        assert_rel(step, g("reverse_sde_step.out"), what=f"step() t={t}")
        assert_rel(s.reverse_ode_step(xt, score, t, mu), g("reverse_ode_step"), what=f"ode t={t}")
        assert_rel(s.step(g("noise_pred"), t, xt, mu, mode="ode").prev_sample, g("reverse_ode_step"), what="ode")
        assert_rel(s.reverse_optimum_step(xt, x0, t, mu), g("reverse_optimum_step"), what=f"posterior t={t}")
        assert_rel(s.real_noise(xt, x0, mu, t), g("real_noise"), tol=1e-5, what=f"real noise t={t}")
        fwd = s.forward_step(xt, t, mu, noise=g("forward_step.noise"))
        assert_rel(fwd, g("forward_step.out"), what=f"forward t={t}")
        s_x0, s_mu = GOLDEN["inputs.s_x0"] * mask, GOLDEN["inputs.s_mu"]
        states = s.add_noise(s_x0, g("generate_states_tm1.noise"), t - 1, s_mu)
        assert_rel(states, g("generate_states_tm1.out"), what=f"add_noise t-1={t - 1}")


def test_add_noise_per_sample_timesteps():
    s = IRSDEScheduler()
    x0, mu = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    noise = torch.randn(2, 3, 4, 4)
    both = s.add_noise(x0, noise, torch.tensor([3, 70]), mu)
    for i, t in enumerate([3, 70]):
        torch.testing.assert_close(both[i : i + 1], s.add_noise(x0[i : i + 1], noise[i : i + 1], t, mu[i : i + 1]))


def test_step_jump_reduces_to_posterior_mean_and_config_roundtrip(tmp_path):
    s = IRSDEScheduler(num_train_timesteps=100)
    x0, mu = GOLDEN["inputs.x0"], GOLDEN["inputs.mu"]
    t = 40
    xt = GOLDEN["T100.t40.xt"]
    eps = s.real_noise(xt, x0, mu, t)  # a perfect noise prediction
    mean = s.step_jump(eps, t, t - 1, xt, mu, noise=torch.zeros_like(xt))
    assert_rel(mean, s.reverse_optimum_step(xt, x0, t, mu), tol=1e-5, what="jump mean")
    z = torch.randn_like(x0)
    x1 = s.add_noise(x0, z, 1, mu)
    assert torch.allclose(s.step_jump(z, 1, 0, x1, mu), x0, atol=1e-5)  # last jump lands on x0
    s.set_timesteps(10)
    assert s.timesteps[0] == 100 and s.timesteps[-1] == 1 and len(s.timesteps) == 10
    s.save_pretrained(tmp_path)
    again = IRSDEScheduler.from_pretrained(tmp_path)
    assert again.config.num_train_timesteps == 100 and torch.equal(again.sigma_bars, s.sigma_bars)


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        IRSDEScheduler(schedule="linear")
    s = IRSDEScheduler()
    with pytest.raises(ValueError, match="timestep"):
        s.sigma_bar(101, torch.zeros(1))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="mode"):
        s.step(torch.zeros(1, 1, 2, 2), 5, torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), mode="euler")
