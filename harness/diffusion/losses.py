"""The denoising training loss L(theta) = E_t,eps [ w(t) || target - net(x_t, t) ||^2 ]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .parameterizations import X0, Eps, V, get_parameterization
from .schedules import Schedule


def uniform(snr: Tensor, parameterization, gamma: float) -> Tensor:
    """DDPM's L_simple: every timestep weighted 1 in the parameterization's own space."""
    return torch.ones_like(snr)


def min_snr(snr: Tensor, parameterization, gamma: float) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023): x0-space weight min(SNR, gamma), mapped to the output space."""
    return parameterization.min_snr_weight(snr, gamma)


Weighting = Callable[[Tensor, object, float], Tensor]  # w(SNR_t, parameterization, gamma), (B,)
WEIGHTINGS: dict[str, Weighting] = {
    "uniform": uniform,
    "min_snr": min_snr,
}


def diffusion_loss(
    model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: Schedule,
    parameterization: str | Eps | X0 | V = "eps",
    weighting: str | Weighting = "uniform",
    y: Tensor | None = None,
    *,
    gamma: float = 5.0,
) -> Tensor:
    """Per-example weighted MSE, shape (B,). ``t`` is long (B,) in [0, T); ``noise`` ~ N(0, I).

    ``parameterization`` and ``weighting`` are names, or the objects they name (a training loop resolves them
    once per run: processes.DDPM.training_loss).
    """
    if isinstance(weighting, str):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r}; valid: {', '.join(sorted(WEIGHTINGS))}")
        weighting = WEIGHTINGS[weighting]
    param = get_parameterization(parameterization) if isinstance(parameterization, str) else parameterization
    abar = schedule.abar(t, x0)  # (B, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    target = param.target(x0, noise, abar)
    out = model(x_t, t, y)
    mse = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    snr = schedule.snr.to(t.device)[t].float()  # (B,)
    return weighting(snr, param, gamma) * mse
