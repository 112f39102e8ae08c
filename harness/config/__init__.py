"""What a run *is*: the typed fields, YAML reading, dotted overrides, the run config and its sampler settings,
the names of tags and metrics (``schema``), the ablation spec (``spec``) and the search space (``space``).

``harness.config`` itself re-exports the run config (``run.py``) and the helpers most callers need; the
spec and the space are imported from their modules, because they build on the config.
"""

from .dotted import merge, parse_overrides, set_dotted
from .fields import ConfigError, one_of
from .run import (
    DATASET_SIZES,
    IMAGE_CHANNELS,
    IMAGE_SIZES,
    MAX_EVAL_SAMPLES,
    NUM_CLASSES,
    AutoencoderConfig,
    Config,
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    TrainConfig,
    build_config,
    format_validation_error,
    load_config,
    read_yaml,
    steps_per_epoch,
)
from .setting import SamplerSetting

__all__ = [
    "DATASET_SIZES",
    "IMAGE_CHANNELS",
    "IMAGE_SIZES",
    "MAX_EVAL_SAMPLES",
    "NUM_CLASSES",
    "AutoencoderConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "SamplerSetting",
    "TrainConfig",
    "build_config",
    "format_validation_error",
    "load_config",
    "merge",
    "one_of",
    "parse_overrides",
    "read_yaml",
    "set_dotted",
    "steps_per_epoch",
]
