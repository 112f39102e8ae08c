import pytest
import torch

from harness import PARAMETERIZATIONS, diffusion_loss, get_parameterization, make_schedule


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(64, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, 3, 3, generator=g, dtype=torch.float64)
    abar = torch.rand(64, 1, 1, 1, generator=g, dtype=torch.float64) * 0.998 + 0.001
    return x0, eps, abar, abar.sqrt() * x0 + (1 - abar).sqrt() * eps


@pytest.mark.parametrize("name", sorted(PARAMETERIZATIONS))
def test_target_and_to_x0_eps_are_inverses(name):
    p = get_parameterization(name)
    x0, eps, abar, x_t = _batch()
    pred = p.to_x0_eps(p.target(x0, eps, abar), x_t, abar)
    torch.testing.assert_close(pred.x0, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(pred.eps, eps, rtol=0, atol=1e-10)


@pytest.mark.parametrize("src", sorted(PARAMETERIZATIONS))
@pytest.mark.parametrize("dst", sorted(PARAMETERIZATIONS))
def test_conversion_between_parameterizations_round_trips(src, dst):
    # Any output can be re-expressed in another parameterization and brought back unchanged.
    p, q = get_parameterization(src), get_parameterization(dst)
    _, _, abar, x_t = _batch(1)
    out = torch.randn_like(x_t)
    pred = p.to_x0_eps(out, x_t, abar)
    back = p.target(*q.to_x0_eps(q.target(pred.x0, pred.eps, abar), x_t, abar), abar)
    torch.testing.assert_close(back, out, rtol=0, atol=1e-9)


def test_v_is_salimans_and_ho():
    x0, eps, abar, _ = _batch(2)
    v = get_parameterization("v").target(x0, eps, abar)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)


@pytest.mark.parametrize("name", sorted(PARAMETERIZATIONS))
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_loss_in_x0_space(name, weighting):
    """Hang et al. 2023: the min-SNR loss is min(SNR, gamma) ||x0 - x0_hat||^2 whatever the output space;
    the uniform loss is the plain MSE of the parameterization's own target."""
    sched, gamma = make_schedule("cosine", 1000), 5.0
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(16, 1, 4, 4, generator=g), torch.randn(16, 1, 4, 4, generator=g)
    t = torch.linspace(0, 999, 16).long()
    out = torch.randn(16, 1, 4, 4, generator=g)
    loss = diffusion_loss(lambda x, tt, y: out, x0, t, noise, sched, name, weighting, gamma=gamma)
    assert loss.shape == (16,)
    p = get_parameterization(name)
    abar = sched.abar(t, x0)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    if weighting == "uniform":
        expected = (out - p.target(x0, noise, abar)).pow(2).flatten(1).mean(1)
    else:
        x0_hat = p.to_x0_eps(out, x_t, abar).x0
        snr = sched.snr[t].float()
        expected = snr.clamp(max=gamma) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected, rtol=2e-4, atol=1e-6)


def test_min_snr_eps_weight_is_finite_at_zero_terminal_snr():
    sched = make_schedule("linear", 1000, zero_terminal_snr=True)
    x0 = torch.randn(2, 1, 4, 4)
    loss = diffusion_loss(
        lambda x, t, y: torch.zeros_like(x), x0, torch.tensor([999, 998]), torch.randn_like(x0), sched, "eps", "min_snr"
    )
    assert torch.isfinite(loss).all()


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="eps, v, x0"):
        get_parameterization("score")
    with pytest.raises(ValueError, match="min_snr, uniform"):
        diffusion_loss(
            lambda x, t, y: x,
            torch.zeros(1, 1, 2, 2),
            torch.zeros(1).long(),
            torch.zeros(1, 1, 2, 2),
            make_schedule("linear"),
            "eps",
            "p2",
        )
