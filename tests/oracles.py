"""Closed-form denoisers for Gaussian data: the exact answers samplers are checked against."""

from __future__ import annotations

import torch
from torch import Tensor

from harness.diffusion.parameterizations import get_parameterization
from harness.diffusion.schedules import Schedule


class GaussianOracle:
    """The exact model for data x_0 ~ N(mu, diag(s^2)), in any parameterization.

    With x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps and v_t = abar s^2 + 1 - abar:
        E[x_0 | x_t] = mu + sqrt(abar) s^2 / v_t (x_t - sqrt(abar) mu)
        E[eps | x_t] = sqrt(1 - abar) / v_t (x_t - sqrt(abar) mu)
    ``mu`` and ``s`` may depend on the label y (a dict label -> (mu, s)) for guidance tests.
    """

    def __init__(self, schedule: Schedule, mu, s, parameterization: str = "eps"):
        self.schedule, self.param = schedule, get_parameterization(parameterization)
        self.conditional = isinstance(mu, dict)
        if self.conditional:  # tables indexed by label: (num_labels, C, H, W)
            mu = torch.stack([mu[k] for k in sorted(mu)])
            s = torch.stack([s[k] for k in sorted(s)])
        self.mu, self.s = mu.double(), s.double()
        self.calls = 0

    def moments(self, y: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        if not self.conditional:
            return self.mu.to(like), self.s.to(like)
        return self.mu[y].to(like), self.s[y].to(like)

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.calls += 1
        x = x_t.double()
        abar = self.schedule.abar(t, x)
        mu, s = self.moments(y, x)
        v_t = abar * s**2 + 1 - abar
        centred = x - abar.sqrt() * mu
        x0_hat = mu + abar.sqrt() * s**2 / v_t * centred
        eps_hat = (1 - abar).sqrt() / v_t * centred
        return self.param.target(x0_hat, eps_hat, abar).to(x_t.dtype)


def exact_flow_endpoint(x_T: Tensor, mu: Tensor, s: Tensor, abar_T: float, abar_last: float) -> Tensor:
    """Where the probability-flow ODE takes x_T, denoised at the last visited timestep.

    In Karras' variables x~ = x / sqrt(abar), sigma^2 = (1 - abar) / abar, Gaussian data gives
    x~(sigma) - mu proportional to sqrt(s^2 + sigma^2). The samplers' last step returns
    E[x_0 | x_last] = mu + s^2 / (s^2 + sigma_last^2) (x~_last - mu).
    """
    x = x_T.double()
    mu, s = mu.double(), s.double()
    sigma_T2 = (1 - abar_T) / abar_T
    sigma_l2 = (1 - abar_last) / abar_last
    x_tilde_T = x / abar_T**0.5
    return mu + (x_tilde_T - mu) * s**2 / ((s**2 + sigma_l2) ** 0.5 * (s**2 + sigma_T2) ** 0.5)


class FlowOracle:
    """The exact velocity of the linear interpolant x_t = (1 - t) x_0 + t eps for x_0 ~ N(mu, diag(s^2)).

    With V_t = (1 - t)^2 s^2 + t^2 and c = x_t - (1 - t) mu (Gaussian conditioning):
        E[x_0 | x_t] = mu + (1 - t) s^2 / V_t c,    E[eps | x_t] = t / V_t c
        v(x_t, t) = E[eps - x_0 | x_t] = (t - (1 - t) s^2) / V_t c - mu
    Its ODE maps x_1 to x_t = (1 - t) mu + sqrt(V_t) x_1, so the endpoint at t = 0 is mu + s x_1.
    Called as the network is, with the time input t * ``time_scale``; ``mu``, ``s`` may be dicts label -> value.
    """

    def __init__(self, mu, s, time_scale: float):
        self.gauss = GaussianOracle(None, mu, s)  # only for its per-label moment tables
        self.time_scale, self.calls = time_scale, 0

    def __call__(self, x_t: Tensor, t_in: Tensor, y: Tensor | None = None) -> Tensor:
        self.calls += 1
        x = x_t.double()
        t = (t_in.double() / self.time_scale).view(-1, *([1] * (x.dim() - 1)))
        mu, s = self.gauss.moments(y, x)
        v_t = (1 - t) ** 2 * s**2 + t**2
        return ((t - (1 - t) * s**2) / v_t * (x - (1 - t) * mu) - mu).to(x_t.dtype)
