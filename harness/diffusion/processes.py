"""The diffusion processes, one class each, named in ``PROCESSES`` (``diffusion.process`` picks one).

A process decides two things: a training example (its time, its noisy input, its target, so its loss) and
how a trained network is sampled. The training loop and the evaluator call these two methods and nothing
else, so a new process (EDM's sigma-parameterized one, say) is one class here and one entry in
``PROCESSES``; its ``samplers`` (name -> ``Sampler``, the function and the options it reads) are what a
sampler setting is validated against.

Both share one signature across processes. ``training_loss(diffusion, schedule)`` resolves the section's
names once per run (the parameterization, the weighting, the time distribution) and returns the step's loss,
``loss(net, x0, y, generator) -> (per-example loss (B,), each example's time as an integer in [0, T))`` (the
report's loss by timestep buckets); ``sample(model, schedule, diffusion, setting, *, x_T, **kw)`` returns x_0
from x_T. ``diffusion`` is the config's ``diffusion`` section and ``setting`` a ``SamplerSetting``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .flow import FLOW_SAMPLERS, FLOW_TIMES, flow_loss, sample_flow
from .losses import WEIGHTINGS, diffusion_loss
from .parameterizations import get_parameterization
from .samplers import SAMPLERS, Sampler, only_for, sample

# (net, x0 (B, C, H, W), y (B,) or None, generator) -> (per-example loss (B,), time in [0, T) (B,) long)
LossFn = Callable[..., tuple[Tensor, Tensor]]


class DDPM:
    """Ho et al. 2020's discrete process: t uniform in {0, ..., T - 1}, q(x_t | x_0) of the noise schedule."""

    samplers: dict[str, Sampler] = SAMPLERS

    def training_loss(self, diffusion, schedule) -> LossFn:
        param, weighting = get_parameterization(diffusion.parameterization), WEIGHTINGS[diffusion.loss_weighting]
        gamma = diffusion.min_snr_gamma

        def loss(net, x0: Tensor, y: Tensor | None, generator) -> tuple[Tensor, Tensor]:
            t = torch.randint(0, schedule.T, (x0.shape[0],), device=x0.device, generator=generator)
            noise = torch.randn(x0.shape, device=x0.device, generator=generator)
            return diffusion_loss(net, x0, t, noise, schedule, param, weighting, y, gamma=gamma), t

        return loss

    def sample(self, model, schedule, diffusion, setting, *, x_T: Tensor, **kw) -> Tensor:
        return sample(
            model,
            x_T.shape,
            schedule,
            sampler=setting.sampler,
            steps=setting.steps,
            guidance=setting.guidance,
            parameterization=diffusion.parameterization,
            eta=setting.eta,
            spacing=setting.spacing,
            variance=setting.variance,
            classifier_scale=setting.classifier_scale,
            x_T=x_T,
            **kw,
        )


class Flow:
    """Flow matching on the linear interpolant (flow.py); t in [0, 1] drawn by ``diffusion.flow_time``."""

    samplers: dict[str, Sampler] = FLOW_SAMPLERS

    def training_loss(self, diffusion, schedule) -> LossFn:
        T, draw = schedule.T, FLOW_TIMES[diffusion.flow_time]

        def loss(net, x0: Tensor, y: Tensor | None, generator) -> tuple[Tensor, Tensor]:
            t = draw(x0.shape[0], generator, x0.device)
            noise = torch.randn(x0.shape, device=x0.device, generator=generator)
            # The network sees t (T - 1), the range of DDPM's integer timesteps its embedding was sized for.
            per_example = flow_loss(net, x0, t, noise, y, time_scale=T - 1)
            return per_example, (t * T).long().clamp(max=T - 1)

        return loss

    def sample(self, model, schedule, diffusion, setting, *, x_T: Tensor, **kw) -> Tensor:
        kw.pop("classifier", None)  # never given: classifier_scale applies to ddpm only (SamplerSetting.misfit)
        return sample_flow(
            model,
            x_T.shape,
            sampler=setting.sampler,
            steps=setting.steps,
            guidance=setting.guidance,
            time_scale=diffusion.timesteps - 1,
            shift=setting.time_shift,
            x_T=x_T,
            **kw,
        )


PROCESSES: dict[str, DDPM | Flow] = {"ddpm": DDPM(), "flow": Flow()}
PROCESS_SAMPLERS: dict[str, dict[str, Sampler]] = {name: p.samplers for name, p in PROCESSES.items()}


def misfit(process: str, sampler: str, options: dict[str, Any]) -> tuple[str, str] | None:
    """Why a sampler setting cannot sample a model of ``process``, as (field, reason); None when it can.

    ``options`` are the setting's options away from their defaults; each must be one the sampler reads.
    """
    valid = PROCESS_SAMPLERS[process]
    if sampler not in valid:
        return "sampler", f"{sampler!r} does not sample process {process}; valid for {process}: {', '.join(valid)}"
    for option, value in options.items():
        if option in valid[sampler].reads:
            continue
        if any(option in s.reads for s in valid.values()):
            return option, only_for(option, sampler, valid)
        owners = [p for p, samplers in PROCESS_SAMPLERS.items() if any(option in s.reads for s in samplers.values())]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return option, f"{shown} applies to process {' and '.join(owners)} only"
    return None
