"""Noise schedules: each is a pure function of T returning abar_t (``alphas_cumprod``).

Everything else (beta_t, SNR, sigma) is derived from abar, as in VDM and improved-diffusion.
A committed schedule never changes its numbers; a new variant gets a new name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete VP diffusion q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t in [0, T)."""

    name: str
    alphas_cumprod: Tensor  # abar_t, float64, (T,)

    @property
    def T(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def betas(self) -> Tensor:
        # beta_t = 1 - abar_t / abar_{t-1}, with abar_{-1} = 1.
        abar_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / abar_prev

    @property
    def snr(self) -> Tensor:
        """SNR(t) = abar_t / (1 - abar_t) (Kingma et al. 2021)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def to(self, device) -> Schedule:
        """The same schedule with abar_t on ``device`` (float64 kept), moved once per run rather than per step."""
        return Schedule(self.name, self.alphas_cumprod.to(device))

    def abar(self, t: Tensor, like: Tensor) -> Tensor:
        """abar_t for a batch of timesteps, shaped to broadcast against ``like`` (B, ...)."""
        abar = self.alphas_cumprod.to(device=t.device)[t].to(like.dtype)
        return abar.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)."""
        abar = self.abar(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def _abar_from_betas(betas: Tensor) -> Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


def linear(T: int) -> Tensor:
    """DDPM (Ho et al. 2020): beta linear from 1e-4 to 0.02 at T=1000, ends scaled by 1000/T."""
    scale = 1000.0 / T  # improved-diffusion's get_named_beta_schedule("linear")
    return _abar_from_betas(torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64))


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: f(t) = cos^2(((t/T + s) / (1 + s)) pi/2), beta_t <= 0.999."""

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    i = torch.arange(T, dtype=torch.float64)
    betas = (1.0 - f((i + 1) / T) / f(i / T)).clamp(max=max_beta)
    return _abar_from_betas(betas)


def sigmoid(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Jabri et al. 2022 (as in denoising-diffusion-pytorch): abar follows a scaled sigmoid."""
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)
    betas = (1.0 - f[1:] / f[:-1]).clamp(0.0, 0.999)
    return _abar_from_betas(betas)


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's schedule: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)."""
    return _abar_from_betas(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)


def rescale_zero_terminal_snr(abar: Tensor) -> Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(abar) so abar_0 is kept and abar_T = 0."""
    sqrt_abar = abar.sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    return sqrt_abar**2


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear,
    "cosine": cosine,
    "sigmoid": sigmoid,
    "scaled_linear": scaled_linear,
}


def make_schedule(name: str, T: int = 1000, *, zero_terminal_snr: bool = False, **options) -> Schedule:
    """Build a named schedule; ``options`` go to the schedule function (e.g. ``s`` for cosine)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(sorted(SCHEDULES))}")
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}")
    abar = SCHEDULES[name](T, **options)
    if zero_terminal_snr:
        abar = rescale_zero_terminal_snr(abar)
    label = f"{name}+zsnr" if zero_terminal_snr else name
    return Schedule(name=label, alphas_cumprod=abar)
