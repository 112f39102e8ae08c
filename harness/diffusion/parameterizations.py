"""What the network predicts: eps (DDPM), x0, or v (Salimans & Ho 2022).

Each parameterization is one small object: the training ``target`` for (x_0, eps), the inverse map
``to_x0_eps`` from a network output back to (x0_hat, eps_hat), and the min-SNR loss weight in its
own output space. No other module branches on the name.

Notation: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps; SNR = abar / (1 - abar). ``abar`` is a tensor
that broadcasts against x (B, 1, 1, 1).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Prediction(NamedTuple):
    x0: Tensor  # x0_hat, (B, C, H, W)
    eps: Tensor  # eps_hat, (B, C, H, W)


class Eps:
    """Predict the noise, eps_hat = out (Ho et al. 2020)."""

    name = "eps"

    def target(self, x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
        return eps

    def to_x0_eps(self, out: Tensor, x_t: Tensor, abar: Tensor) -> Prediction:
        # x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar): undefined at abar = 0 (zero terminal SNR).
        return Prediction((x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out)

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        # ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2, so min(SNR, gamma) / SNR = min(1, gamma / SNR).
        return (gamma / snr).clamp(max=1.0)


class X0:
    """Predict the clean image, x0_hat = out."""

    name = "x0"

    def target(self, x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
        return x0

    def to_x0_eps(self, out: Tensor, x_t: Tensor, abar: Tensor) -> Prediction:
        # eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar): undefined at abar = 1, never reached.
        return Prediction(out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt())

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        return snr.clamp(max=gamma)  # Hang et al. 2023, eq. 8: min(SNR, gamma)


class V:
    """Predict the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, sec. 4)."""

    name = "v"

    def target(self, x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    def to_x0_eps(self, out: Tensor, x_t: Tensor, abar: Tensor) -> Prediction:
        # (x_t, v) is a rotation of (x_0, eps) by the angle phi with cos(phi) = sqrt(abar).
        a, s = abar.sqrt(), (1 - abar).sqrt()
        return Prediction(a * x_t - s * out, s * x_t + a * out)

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        # ||v - v_hat||^2 = (SNR + 1) ||x0 - x0_hat||^2, so the weight is min(SNR, gamma) / (SNR + 1).
        return snr.clamp(max=gamma) / (snr + 1)


PARAMETERIZATIONS: dict[str, Eps | X0 | V] = {p.name: p for p in (Eps(), X0(), V())}


def get_parameterization(name: str) -> Eps | X0 | V:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; valid: {', '.join(sorted(PARAMETERIZATIONS))}")
    return PARAMETERIZATIONS[name]
