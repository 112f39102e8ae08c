"""A research harness for ablation studies of DDPM-family diffusion models.

The diffusion core is re-exported here; scripts and notebooks import these names.
"""

from .guidance import classifier_free
from .losses import WEIGHTINGS, diffusion_loss
from .parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from .samplers import SAMPLERS, SPACINGS, sample, timesteps
from .schedules import SCHEDULES, Schedule, make_schedule
from .unet import UNet

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
    "sample",
    "timesteps",
]
