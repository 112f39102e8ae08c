"""A research harness for ablation studies of DDPM-family diffusion models.

The diffusion core is re-exported here; scripts and notebooks import these names. The package is laid
out by layers, each importing only from those before it (checked by import-linter, see pyproject.toml):
diffusion, models -> config -> device, tracker -> training -> evaluation -> orchestration -> sweeps -> cli.

``results`` (an experiment as the tidy results table: ``from harness import results``) lives in
``analysis.results``, on top of the harness; it is imported on first use, so ``import harness`` stays light.
"""

from .diffusion.guidance import classifier_free
from .diffusion.losses import WEIGHTINGS, diffusion_loss
from .diffusion.parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from .diffusion.samplers import SAMPLERS, SPACINGS, sample, timesteps
from .diffusion.schedules import SCHEDULES, Schedule, make_schedule
from .models.unet import UNet

__all__ = [
    "PARAMETERIZATIONS",
    "Prediction",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "Schedule",
    "UNet",
    "WEIGHTINGS",
    "classifier_free",
    "diffusion_loss",
    "get_parameterization",
    "make_schedule",
    "results",
    "sample",
    "timesteps",
]


def __getattr__(name: str):
    if name == "results":  # pandas and MLflow load only when asked for
        from analysis.results import results

        return results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
