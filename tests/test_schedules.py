import math

import pytest
import torch

from harness import SCHEDULES, make_schedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1000, 250])
def test_abar_strictly_decreasing_in_unit_interval(name, T):
    abar = make_schedule(name, T).alphas_cumprod
    assert abar.dtype == torch.float64 and abar.shape == (T,)
    assert (abar > 0).all() and (abar <= 1).all()
    assert (abar[1:] < abar[:-1]).all()


def test_linear_matches_ddpm_and_scales_with_T():
    betas = make_schedule("linear", 1000).betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    betas = make_schedule("linear", 250).betas  # improved-diffusion: both ends scale by 1000 / T
    assert betas[0].item() == pytest.approx(4e-4) and betas[-1].item() == pytest.approx(0.08)


def test_cosine_equals_published_formula():
    # Nichol & Dhariwal 2021 eq. 17 with beta_t = min(1 - abar(t+1)/abar(t), 0.999), in plain Python.
    T, s = 1000, 0.008
    f = [math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2 for i in range(T + 1)]
    abar, prod = [], 1.0
    for i in range(T):
        prod *= 1 - min(1 - f[i + 1] / f[i], 0.999)
        abar.append(prod)
    got = make_schedule("cosine", T).alphas_cumprod
    torch.testing.assert_close(got, torch.tensor(abar, dtype=torch.float64), rtol=1e-12, atol=0)
    # The product telescopes: abar_t = f(t + 1) / f(0) wherever the clip did not bite (all but the end).
    torch.testing.assert_close(got[:-1], torch.tensor(f[1:T], dtype=torch.float64) / f[0], rtol=1e-9, atol=0)


def test_cosine_golden_values():
    # improved-diffusion / diffusers "squaredcos_cap_v2" at T = 1000.
    betas = make_schedule("cosine", 1000).betas
    assert betas[0].item() == pytest.approx(4.1284e-05, rel=1e-3)
    assert betas[-1].item() == pytest.approx(0.999)


def test_scaled_linear_is_linear_in_sqrt_beta():
    sqrt_beta = make_schedule("scaled_linear", 1000).betas.sqrt()
    assert sqrt_beta[0].item() ** 2 == pytest.approx(0.00085)
    assert sqrt_beta[-1].item() ** 2 == pytest.approx(0.012)
    torch.testing.assert_close(sqrt_beta.diff(), sqrt_beta.diff().mean().expand(999), rtol=1e-6, atol=0)


def test_sigmoid_follows_its_definition():
    T, start, end = 1000, -3.0, 3.0
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    f = lambda u: (sig(end) - sig(u * (end - start) + start)) / (sig(end) - sig(start))  # noqa: E731
    got = make_schedule("sigmoid", T).alphas_cumprod
    expected = torch.tensor([f((i + 1) / T) / f(0) for i in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(got[:-1], expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_zero_terminal_snr(name):
    plain, zsnr = make_schedule(name), make_schedule(name, zero_terminal_snr=True)
    assert zsnr.alphas_cumprod[-1].item() == 0.0 and zsnr.snr[-1].item() == 0.0
    assert zsnr.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    # Lin et al. 2023: sqrt(abar) is shifted and scaled, i.e. an affine function of the original.
    a, b = plain.alphas_cumprod.sqrt(), zsnr.alphas_cumprod.sqrt()
    slope = (b[0] - b[-1]) / (a[0] - a[-1])
    torch.testing.assert_close(b, slope * (a - a[-1]), rtol=0, atol=1e-12)
    assert (zsnr.alphas_cumprod[1:] < zsnr.alphas_cumprod[:-1]).all()


def test_q_sample_and_snr():
    sched = make_schedule("linear", 1000)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t].float().view(3, 1, 1, 1)
    torch.testing.assert_close(sched.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    torch.testing.assert_close(sched.snr, sched.alphas_cumprod / (1 - sched.alphas_cumprod))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="cosine, linear, scaled_linear, sigmoid"):
        make_schedule("quadratic")
