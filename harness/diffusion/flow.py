"""Flow matching: the linear interpolant between data and noise, trained on its velocity.

Rectified flow / conditional flow matching (Liu et al. 2023; Lipman et al. 2023) with t in [0, 1]:

    x_t = (1 - t) x_0 + t eps,        v = dx_t/dt = eps - x_0   (the training target)

Sampling integrates dx/dt = v_hat(x, t) from t = 1 (x_1 = noise) down to t = 0. The network is the
DDPM U-Net; it sees t * ``time_scale`` (``diffusion.timesteps`` - 1), the range its sinusoidal embedding
was sized for: with t in [0, 1] its lower frequencies (periods up to 2 pi 10^4) would hardly move and
the embedding would barely tell times apart.

Samplers share one signature, ``sampler(velocity, x, ts) -> x_0`` with ``velocity(x_t, t) -> v_hat``
and ``ts`` the descending time grid from 1 to 0. The process itself (training example, sampling) is the
``Flow`` class of ``processes.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .guidance import classifier_free
from .samplers import Sampler

Velocity = Callable[[Tensor, float], Tensor]


# -- training ---------------------------------------------------------------------------------------


def uniform(n: int, generator: torch.Generator, device) -> Tensor:
    """t ~ U[0, 1) (Liu et al. 2023)."""
    return torch.rand(n, generator=generator, device=device)


def logit_normal(n: int, generator: torch.Generator, device) -> Tensor:
    """t = sigmoid(u), u ~ N(0, 1): Esser et al. 2024 (SD3), eq. 19 with m = 0, s = 1; favours mid t."""
    return torch.sigmoid(torch.randn(n, generator=generator, device=device))


FLOW_TIMES: dict[str, Callable[[int, torch.Generator, object], Tensor]] = {
    "uniform": uniform,
    "logit_normal": logit_normal,
}


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x_0 + t eps, with ``t`` (B,) broadcast over x."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * eps


def flow_loss(model, x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None, *, time_scale: float) -> Tensor:
    """Per-example || (eps - x_0) - v_hat(x_t, t) ||^2, shape (B,); ``t`` float (B,) in [0, 1]."""
    out = model(interpolate(x0, noise, t), t * time_scale, y)
    return (out.float() - (noise - x0).float()).pow(2).flatten(1).mean(dim=1)


# -- sampling ---------------------------------------------------------------------------------------


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """``steps`` + 1 times from 1 to 0, uniform, then shifted t' = s t / (1 + (s - 1) t) (SD3, eq. 23).

    s > 1 spends more steps at high noise (t near 1); s = 1 is the uniform grid.
    """
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * u / (1 + (shift - 1) * u)).tolist()


def euler(velocity: Velocity, x: Tensor, ts: list[float]) -> Tensor:
    """Euler's method on dx/dt = v_hat (Liu et al. 2023, sec. 2): one network call per step."""
    for t, t_next in zip(ts, ts[1:]):
        x = x + (t_next - t) * velocity(x, t)
    return x


def heun(velocity: Velocity, x: Tensor, ts: list[float]) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1 on the flow's ODE), the last step Euler.

    The last step lands on t = 0, where the data are; ending with Euler there keeps Karras' rule, so
    ``steps`` steps cost 2 steps - 1 network calls.
    """
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        d = velocity(x, t)
        x_euler = x + (t_next - t) * d
        if i == len(ts) - 2:
            return x_euler
        x = x + (t_next - t) * 0.5 * (d + velocity(x_euler, t_next))
    return x


# sample_flow reads these for both: the grid's step count and shift, and the guidance around the network.
_EVERY = frozenset({"steps", "guidance", "time_shift"})
FLOW_SAMPLERS: dict[str, Sampler] = {"euler": Sampler(euler, _EVERY), "heun": Sampler(heun, _EVERY)}


def make_velocity(model, labels: Tensor | None, time_scale: float, clip_x0: bool) -> Velocity:
    def velocity(x_t: Tensor, t: float) -> Tensor:
        t_batch = torch.full((x_t.shape[0],), t * time_scale, dtype=torch.float32, device=x_t.device)
        v = model(x_t, t_batch, labels)
        if clip_x0:  # x0_hat = x_t - t v_hat clipped to the data range, v re-derived; t > 0 at every call
            x0 = (x_t - t * v).clamp(-1.0, 1.0)
            v = (x_t - x0) / t
        return v

    return velocity


def sample_flow(
    model,
    shape: tuple[int, ...],
    *,
    sampler: str,
    steps: int,
    time_scale: float,
    shift: float = 1.0,
    guidance: float = 0.0,
    labels: Tensor | None = None,
    null_label: int | None = None,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Generate (B, C, H, W) from ``model(x_t, t * time_scale, y) -> v_hat``, starting at x_1 = ``x_T``."""
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; valid: {', '.join(FLOW_SAMPLERS)}")
    if steps < 1 or shift <= 0:
        raise ValueError(f"steps must be >= 1 and shift > 0, got {steps} and {shift}")
    if guidance < 0:
        raise ValueError(f"guidance weight must be >= 0, got {guidance}")
    if guidance > 0 and (labels is None or null_label is None):
        raise ValueError("guidance > 0 needs labels and a null_label (a class-conditional model)")
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
    x = x_T.to(device=device or x_T.device, dtype=torch.float32)
    if labels is not None:
        labels = labels.to(x.device)
    # (1 + w) v_cond - w v_uncond: guidance.classifier_free's batched call, on velocities.
    net = classifier_free(model, guidance, null_label) if guidance > 0 else model
    velocity = make_velocity(net, labels, time_scale, clip_x0)
    with torch.no_grad():
        return FLOW_SAMPLERS[sampler](velocity, x, time_grid(steps, shift))
