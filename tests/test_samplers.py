"""Samplers checked against the exact denoiser of Gaussian data (tests/oracles.py)."""

import math

import pytest
import torch
from oracles import GaussianOracle, exact_flow_endpoint

from harness import SAMPLERS, Prediction, make_schedule, sample, timesteps
from harness.diffusion.samplers import SamplerOptions, Trajectory

SHAPE = (2000, 2, 4, 4)  # 2,000 samples of 32 dimensions
MU = torch.linspace(-0.6, 0.6, 32).reshape(2, 4, 4)
S = torch.linspace(0.3, 0.9, 32).flip(0).reshape(2, 4, 4)


def _x_T(shape=SHAPE, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _sample(schedule, parameterization="eps", x_T=None, **kw):
    oracle = GaussianOracle(schedule, MU, S, parameterization)
    x_T = _x_T() if x_T is None else x_T
    return sample(
        oracle,
        x_T.shape,
        schedule,
        parameterization=parameterization,
        x_T=x_T,
        generator=torch.Generator().manual_seed(2),
        **kw,
    ).double()


# Settings where each sampler's discretization error is small against the sampling noise.
SETTINGS = [
    dict(sampler="ddpm", steps=1000, variance="fixed_small"),
    dict(sampler="ddpm", steps=1000, variance="fixed_large"),
    dict(sampler="ddim", steps=1000, eta=1.0),
    dict(sampler="ddim", steps=200, eta=0.0),
    dict(sampler="dpmpp_2m", steps=50),
    dict(sampler="heun", steps=50),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_samples_have_the_data_mean_and_std(setting, parameterization):
    x = _sample(make_schedule("linear"), parameterization, **setting)
    n = x.shape[0]
    standard_error = S / n**0.5
    assert ((x.mean(0) - MU).abs() < 5 * standard_error).all()
    ratio = x.std(0) / S
    assert abs(ratio.mean().item() - 1) < 0.03 and ((ratio - 1).abs() < 0.12).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "heun"])
def test_deterministic_samplers_converge_to_the_exact_flow(schedule, sampler):
    sched, x_T = make_schedule(schedule), _x_T((500, 2, 4, 4))
    errors = []
    for steps in [20, 50, 100, 250, 1000]:
        t = timesteps(1000, steps, "trailing")
        exact = exact_flow_endpoint(x_T, MU, S, sched.alphas_cumprod[t[0]].item(), sched.alphas_cumprod[t[-1]].item())
        errors.append((_sample(sched, x_T=x_T, sampler=sampler, steps=steps) - exact).abs().max().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < (1e-2 if sampler == "ddim" else 1e-3), errors


def test_orders_of_convergence():
    """On steps uniform in lambda = log(alpha / sigma), DDIM is first order (the error halves when the
    steps double) and Heun and DPM-Solver++(2M) are second order (it quarters)."""
    mu, s = 0.3, 0.5
    x_T = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def denoise(x, t, abar):  # the Gaussian oracle in closed form, at any abar
        v_t = abar * s**2 + 1 - abar
        c = x - math.sqrt(abar) * mu
        return Prediction(mu + math.sqrt(abar) * s**2 / v_t * c, math.sqrt(1 - abar) / v_t * c)

    def err(sampler, n):
        abar = torch.sigmoid(2 * torch.linspace(-5.0, 4.0, n, dtype=torch.float64)).tolist()
        traj = Trajectory(list(range(n)), abar, abar[1:] + [1.0])
        x = SAMPLERS[sampler](denoise, x_T.clone(), traj, SamplerOptions(), None)
        exact = exact_flow_endpoint(x_T, torch.tensor(mu), torch.tensor(s), abar[0], abar[-1])
        return (x - exact).abs().max().item()

    for sampler, order in [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)]:
        ratios = [err(sampler, n) / err(sampler, 2 * n) for n in (50, 100)]
        assert all(abs(r - 2**order) < 0.3 * order for r in ratios), (sampler, ratios)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_second_order_samplers_beat_ddim_at_20_steps(schedule):
    sched, x_T = make_schedule(schedule), _x_T((500, 2, 4, 4))
    reference = _sample(sched, x_T=x_T, sampler="ddim", steps=1000)
    dist = {
        s: (_sample(sched, x_T=x_T, sampler=s, steps=20) - reference).pow(2).mean().sqrt().item()
        for s in ["ddim", "dpmpp_2m", "heun"]
    }
    assert dist["dpmpp_2m"] < dist["ddim"] and dist["heun"] < dist["ddim"], dist


def test_samplers_agree_across_parameterizations():
    sched, x_T = make_schedule("cosine"), _x_T((100, 2, 4, 4))
    for sampler in SAMPLERS:
        eps, v = (_sample(sched, p, x_T=x_T, sampler=sampler, steps=30) for p in ["eps", "v"])
        torch.testing.assert_close(eps, v, rtol=0, atol=1e-3)


def test_ddim_eta_one_is_ancestral_ddpm():
    sched = make_schedule("linear")
    a = _sample(sched, sampler="ddim", steps=100, eta=1.0)
    b = _sample(sched, sampler="ddpm", steps=100, variance="fixed_small")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_zero_terminal_snr_with_v_prediction(sampler):
    sched = make_schedule("linear", zero_terminal_snr=True)
    x = _sample(sched, "v", sampler=sampler, steps=200 if sampler != "ddpm" else 1000)
    assert torch.isfinite(x).all()
    assert ((x.mean(0) - MU).abs() < 5 * S / x.shape[0] ** 0.5).all()
    assert abs((x.std(0) / S).mean().item() - 1) < 0.03


def test_eps_at_zero_terminal_snr_is_refused():
    with pytest.raises(ValueError, match="zero terminal SNR"):
        _sample(make_schedule("linear", zero_terminal_snr=True), "eps", sampler="ddim", steps=10)


def test_last_step_returns_x0_prediction():
    sched = make_schedule("linear")
    x_T = _x_T((50, 2, 4, 4))
    for sampler in SAMPLERS:
        x = _sample(sched, x_T=x_T, sampler=sampler, steps=1)  # one step: x0_hat(x_T, t=999)
        oracle = GaussianOracle(sched, MU, S, "x0")
        torch.testing.assert_close(x, oracle(x_T, torch.full((50,), 999)).double(), rtol=0, atol=2e-4)


def test_deterministic_for_a_generator():
    sched = make_schedule("cosine")
    oracle = GaussianOracle(sched, MU, S)
    runs = [
        sample(oracle, (8, 2, 4, 4), sched, sampler="ddpm", steps=50, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("sampler,calls", [("ddpm", 20), ("ddim", 20), ("dpmpp_2m", 20), ("heun", 39)])
def test_network_calls_per_run(sampler, calls):
    sched = make_schedule("scaled_linear")  # sigma_T = 14.6 < 80: every Heun step but the last is 2nd order
    oracle = GaussianOracle(sched, MU, S)
    sample(oracle, (4, 2, 4, 4), sched, sampler=sampler, steps=20)
    assert oracle.calls == calls


def test_spacings_match_diffusers():
    # diffusers' DDIMScheduler.set_timesteps at T = 1000 (Lin et al. 2023, Table 2 for 10 steps).
    assert timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps(1000, 3, "trailing").tolist() == [999, 666, 332]
    assert timesteps(1000, 3, "leading").tolist() == [666, 333, 0]
    assert timesteps(1000, 3, "linspace").tolist() == [999, 500, 0]
    for spacing in ["leading", "trailing", "linspace"]:
        assert timesteps(1000, 1000, spacing).tolist() == list(range(999, -1, -1))


def test_bad_arguments_are_refused():
    sched = make_schedule("linear")
    oracle = GaussianOracle(sched, MU, S)
    with pytest.raises(ValueError, match="dpmpp_2m, heun"):
        sample(oracle, (1, 2, 4, 4), sched, sampler="euler_a", steps=10)
    with pytest.raises(ValueError, match=r"steps must be in \[1, 1000\]"):
        sample(oracle, (1, 2, 4, 4), sched, sampler="ddim", steps=1001)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler only"):
        sample(oracle, (1, 2, 4, 4), sched, sampler="heun", steps=10, eta=0.5)
    with pytest.raises(ValueError, match="guidance > 0 needs labels"):
        sample(oracle, (1, 2, 4, 4), sched, sampler="ddim", steps=10, guidance=1.0)
