"""Samplers: turn a trained denoiser into images.

Every sampler has the same signature, k-diffusion style:

    sampler(denoise, x, traj, opts, generator) -> x_0

``denoise(x_t, t, abar_t) -> Prediction(x0_hat, eps_hat)`` hides the network, its parameterization,
guidance and clipping; ``traj`` lists the timesteps to visit with abar at each and at the next one
(1.0 after the last, so every sampler's last step returns x0_hat). Adding a sampler is adding one
function to ``SAMPLERS``, with the options of a sampler setting it reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .guidance import classifier_free, classifier_guided
from .parameterizations import Prediction, get_parameterization
from .schedules import Schedule

Denoiser = Callable[[Tensor, int, float], Prediction]


# -- timestep spacing (exactly diffusers' ``timestep_spacing`` definitions) -------------------------


def _leading(T: int, steps: int) -> Tensor:
    return torch.arange(steps, dtype=torch.float64).mul(T // steps).round().flip(0)


def _trailing(T: int, steps: int) -> Tensor:
    return torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1


def _linspace(T: int, steps: int) -> Tensor:
    return torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)


SPACINGS: dict[str, Callable[[int, int], Tensor]] = {
    "leading": _leading,
    "trailing": _trailing,
    "linspace": _linspace,
}


def timesteps(T: int, steps: int, spacing: str = "trailing") -> Tensor:
    """The descending timesteps (long, (steps,)) visited when sampling with ``steps`` < T."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(sorted(SPACINGS))}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    return SPACINGS[spacing](T, steps).long()


@dataclass(frozen=True)
class Trajectory:
    t: list[int]  # t_S > ... > t_1
    abar: list[float]  # abar at each t
    abar_next: list[float]  # abar at the following t; 1.0 after the last (x_0 itself)

    @classmethod
    def from_schedule(cls, schedule: Schedule, t: Tensor) -> Trajectory:
        abar = schedule.alphas_cumprod[t].tolist()
        return cls(t.tolist(), abar, abar[1:] + [1.0])

    def __len__(self) -> int:
        return len(self.t)

    def __iter__(self):
        n = len(self.t)
        return iter(zip(range(n), self.t, self.abar, self.abar_next))

    def is_last(self, i: int) -> bool:
        return i == len(self.t) - 1


@dataclass(frozen=True)
class SamplerOptions:
    eta: float = 0.0  # DDIM stochasticity (Song et al. 2021, eq. 16)
    variance: str = "fixed_small"  # DDPM reverse variance: posterior (small) or beta_t (large)


@dataclass(frozen=True)
class Sampler:
    """A sampler function and the options of a sampler setting (``SamplerSetting``'s fields) it reads.

    The one place that says which option belongs to which sampler: a setting that moves an option its
    sampler does not read away from the default is an error (config/setting.py), not a silently ignored
    value that would make two names for one evaluation.
    """

    fn: Callable[..., Tensor]
    reads: frozenset[str]

    def __call__(self, *args, **kw) -> Tensor:
        return self.fn(*args, **kw)


def only_for(option: str, sampler: str, samplers: dict[str, Sampler]) -> str:
    """The error for ``option`` given to ``sampler``, which does not read it: which of ``samplers`` do."""
    readers = [name for name, s in samplers.items() if option in s.reads]
    return f"{option} applies to the {' and '.join(readers)} sampler only, not {sampler!r}"


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's device, then moved: the same seed gives the same noise on CPU and CUDA.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# -- samplers --------------------------------------------------------------------------------------


def ddpm(denoise: Denoiser, x: Tensor, traj: Trajectory, opts: SamplerOptions, generator) -> Tensor:
    """Ancestral sampling from q(x_{t'} | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7), any step subset."""
    for i, t, abar, abar_next in traj:
        pred = denoise(x, t, abar)
        alpha = abar / abar_next  # alpha_t over the skipped span; beta_t = 1 - alpha_t
        beta = 1.0 - alpha
        # Posterior mean mu~_t = c0 x0_hat + c_t x_t (eq. 7); at abar_next = 1 it is x0_hat exactly.
        c0 = math.sqrt(abar_next) * beta / (1.0 - abar)
        ct = math.sqrt(alpha) * (1.0 - abar_next) / (1.0 - abar)
        x = c0 * pred.x0 + ct * x
        if not traj.is_last(i):
            var = beta * (1.0 - abar_next) / (1.0 - abar) if opts.variance == "fixed_small" else beta
            x = x + math.sqrt(var) * _randn(x, generator)
    return x


def ddim(denoise: Denoiser, x: Tensor, traj: Trajectory, opts: SamplerOptions, generator) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with sigma_t(eta) of eq. 16; eta = 1 is ancestral DDPM."""
    for _, t, abar, abar_next in traj:
        pred = denoise(x, t, abar)
        sigma = opts.eta * math.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
        x = math.sqrt(abar_next) * pred.x0 + math.sqrt(max(1 - abar_next - sigma**2, 0.0)) * pred.eps
        if sigma > 0:
            x = x + sigma * _randn(x, generator)
    return x


def _half_log_snr(abar: float) -> float:
    # lambda_t = log(alpha_t / sigma_t); -inf at abar = 0, +inf at abar = 1.
    if abar <= 0.0:
        return -math.inf
    if abar >= 1.0:
        return math.inf
    return 0.5 * math.log(abar / (1 - abar))


def dpmpp_2m(denoise: Denoiser, x: Tensor, traj: Trajectory, opts: SamplerOptions, generator) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second order in data prediction."""
    x0_prev, h_prev = None, None
    for i, t, abar, abar_next in traj:
        pred = denoise(x, t, abar)
        if traj.is_last(i):  # to sigma = 0 the first-order update is x0_hat itself
            return pred.x0
        h = _half_log_snr(abar_next) - _half_log_snr(abar)
        if x0_prev is None or math.isinf(h_prev):
            d = pred.x0  # first step: DPM-Solver++(1), i.e. DDIM
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * pred.x0 - (1 / (2 * r)) * x0_prev
        # x_{t_i} = (sigma_i / sigma_{i-1}) x - alpha_i (e^{-h} - 1) D_i
        x = math.sqrt((1 - abar_next) / (1 - abar)) * x + math.sqrt(abar_next) * (-math.expm1(-h)) * d
        x0_prev, h_prev = pred.x0, h
    return x


HEUN_SIGMA_MAX = 80.0  # Karras et al. 2022, Table 1


def heun(denoise: Denoiser, x: Tensor, traj: Trajectory, opts: SamplerOptions, generator) -> Tensor:
    """Heun's 2nd-order solver of the probability-flow ODE (Karras et al. 2022, Algorithm 1, S_churn=0).

    In Karras' variables x~ = x_t / sqrt(abar), sigma = sqrt((1 - abar) / abar) the ODE is
    dx~/dsigma = eps_hat. Out of abar_T near 0, sigma is enormous (cosine: 2e4; zero terminal SNR:
    inf) and the trapezoid over [sigma_next, sigma] multiplies the small change of eps_hat by sigma,
    while eps_hat is nearly constant up there: steps from above EDM's sigma_max = 80 are Euler steps
    (= DDIM), as is the last step to sigma = 0 (Algorithm 1, line 8).
    """
    for i, t, abar, abar_next in traj:
        pred = denoise(x, t, abar)
        x_euler = math.sqrt(abar_next) * pred.x0 + math.sqrt(1 - abar_next) * pred.eps
        if traj.is_last(i) or abar * (1 + HEUN_SIGMA_MAX**2) <= 1.0:  # sigma >= sigma_max
            x = x_euler
            continue
        t_next = traj.t[i + 1]
        pred_next = denoise(x_euler, t_next, abar_next)
        sigma, sigma_next = math.sqrt((1 - abar) / abar), math.sqrt((1 - abar_next) / abar_next)
        # x~_next = x~ + (sigma_next - sigma) (eps_hat + eps_hat') / 2, then back to x_t's scale. Written
        # around x0_hat = x~ - sigma eps_hat so the enormous sigma of the first step does not cancel.
        eps_mean = 0.5 * (pred.eps + pred_next.eps)
        x_tilde = pred.x0 + sigma * (pred.eps - eps_mean) + sigma_next * eps_mean
        x = math.sqrt(abar_next) * x_tilde
    return x


# What ``sample`` reads for every sampler: the step count and spacing of the trajectory, and the guidance
# wrapped around the denoiser. SamplerOptions' fields are read by the samplers that say so.
_EVERY = frozenset({"steps", "spacing", "guidance", "classifier_scale"})
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ddpm, _EVERY | {"variance"}),
    "ddim": Sampler(ddim, _EVERY | {"eta"}),
    "dpmpp_2m": Sampler(dpmpp_2m, _EVERY),
    "heun": Sampler(heun, _EVERY),
}

VARIANCES = ("fixed_small", "fixed_large")


def make_denoiser(model, parameterization: str, labels: Tensor | None, clip_x0: bool) -> Denoiser:
    param = get_parameterization(parameterization)

    def denoise(x_t: Tensor, t: int, abar: float) -> Prediction:
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        abar_t = torch.tensor(abar, dtype=x_t.dtype, device=x_t.device)
        pred = param.to_x0_eps(model(x_t, t_batch, labels), x_t, abar_t)
        if clip_x0:  # re-derive eps_hat from the clipped x0_hat so the pair stays consistent with x_t
            x0 = pred.x0.clamp(-1.0, 1.0)
            pred = Prediction(x0, (x_t - abar_t.sqrt() * x0) / (1 - abar_t).sqrt())
        return pred

    return denoise


def sample(
    model,
    shape: tuple[int, ...],
    schedule: Schedule,
    *,
    sampler: str,
    steps: int,
    parameterization: str = "eps",
    eta: float = 0.0,
    spacing: str = "trailing",
    guidance: float = 0.0,
    labels: Tensor | None = None,
    null_label: int | None = None,
    classifier=None,
    classifier_scale: float = 0.0,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    variance: str = "fixed_small",
    device: torch.device | str | None = None,
) -> Tensor:
    """Generate a batch of shape ``shape`` (B, C, H, W) with ``model(x_t, t, y)``.

    ``classifier(x_t, t) -> logits`` with ``classifier_scale`` > 0 steers toward ``labels`` (classifier
    guidance); an unconditional model is handed the labels too and ignores them.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(sorted(SAMPLERS))}")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    opts = SamplerOptions(eta=eta, variance=variance)
    for f in fields(opts):
        if getattr(opts, f.name) != f.default and f.name not in SAMPLERS[sampler].reads:
            raise ValueError(only_for(f.name, sampler, SAMPLERS))
    if guidance < 0:
        raise ValueError(f"guidance weight must be >= 0, got {guidance}")
    if guidance > 0 and (labels is None or null_label is None):
        raise ValueError("guidance > 0 needs labels and a null_label (a class-conditional model)")
    if classifier_scale < 0:
        raise ValueError(f"classifier_scale must be >= 0, got {classifier_scale}")
    if classifier_scale > 0 and (classifier is None or labels is None):
        raise ValueError("classifier_scale > 0 needs a classifier and the labels to steer toward")
    t = timesteps(schedule.T, steps, spacing)
    traj = Trajectory.from_schedule(schedule, t)
    if traj.abar[0] <= 0.0 and parameterization == "eps":
        raise ValueError(
            "eps prediction cannot recover x0 at abar_T = 0 (zero terminal SNR); "
            "use the v or x0 parameterization (Lin et al. 2023)"
        )
    if device is None:
        device = x_T.device if x_T is not None else next(_params(model), torch.empty(0)).device
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
    x = x_T.to(device=device, dtype=torch.float32)
    if labels is not None:
        labels = labels.to(device)
    net = classifier_free(model, guidance, null_label) if guidance > 0 else model
    denoise = make_denoiser(net, parameterization, labels, clip_x0)
    if classifier_scale > 0:
        denoise = classifier_guided(denoise, classifier, classifier_scale, labels, clip_x0=clip_x0)
    with torch.no_grad():
        return SAMPLERS[sampler](denoise, x, traj, opts, generator)


def _params(model):
    return model.parameters() if isinstance(model, torch.nn.Module) else iter(())
