import pytest
import torch
from oracles import GaussianOracle

from harness import classifier_free, make_schedule, sample

S = torch.full((1, 4, 4), 0.4)
MU = {0: torch.full((1, 4, 4), -0.5), 1: torch.full((1, 4, 4), 0.8), 2: torch.full((1, 4, 4), 0.15)}
SIGMAS = {k: S for k in MU}  # equal variances: the guided score is again Gaussian
NULL = 2


def test_guided_output_is_one_plus_w_cond_minus_w_uncond():
    def model(x, t, y):
        return x * (y.view(-1, 1, 1, 1).float() + 1)

    x, t, y = torch.randn(3, 1, 2, 2), torch.zeros(3).long(), torch.tensor([0, 1, 0])
    w = 2.5
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL))
    torch.testing.assert_close(classifier_free(model, w, NULL)(x, t, y), (1 + w) * cond - w * uncond)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("sampler,steps", [("ddim", 200), ("ddpm", 1000)])
def test_guided_samples_have_the_predicted_mean(w, sampler, steps):
    """(1 + w) eps_c - w eps_u is the eps of N((1 + w) mu_c - w mu_u, s^2) at every noise level, so the
    samples must have that mean (and the data std)."""
    sched = make_schedule("cosine")
    oracle = GaussianOracle(sched, MU, SIGMAS, "v")
    labels = torch.tensor([0, 1]).repeat_interleave(1000)
    x = sample(
        oracle,
        (2000, 1, 4, 4),
        sched,
        sampler=sampler,
        steps=steps,
        parameterization="v",
        guidance=w,
        labels=labels,
        null_label=NULL,
        generator=torch.Generator().manual_seed(0),
    )
    for c in (0, 1):
        xc = x[labels == c].double()
        predicted = (1 + w) * MU[c] - w * MU[NULL]
        assert ((xc.mean(0) - predicted).abs() < 5 * 0.4 / 1000**0.5).all()
        assert abs(xc.std(0).mean().item() / 0.4 - 1) < 0.04


def test_both_branches_share_one_batched_call():
    sched = make_schedule("linear")
    seen = []

    def model(x, t, y):
        seen.append((x.shape[0], sorted(set(y.tolist()))))
        return torch.zeros_like(x)

    sample(
        model,
        (3, 1, 2, 2),
        sched,
        sampler="ddim",
        steps=5,
        guidance=1.0,
        labels=torch.tensor([0, 1, 1]),
        null_label=NULL,
    )
    assert seen == [(6, [0, 1, NULL])] * 5
