"""The resolved configuration of one training run and its evaluations.

One frozen, typed object; every default lives here. ``train_hash`` identifies the trained model: the
``eval`` section and purely operational fields (paths, logging and checkpoint cadence, device) are not
part of it, so evaluating a trained model with a new sampler never retrains it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..diffusion.flow import FLOW_TIMES
from ..diffusion.losses import WEIGHTINGS
from ..diffusion.parameterizations import PARAMETERIZATIONS
from ..diffusion.processes import PROCESS_SAMPLERS
from ..diffusion.schedules import SCHEDULES
from ..models.autoencoder import check_shape as check_autoencoder_shape
from ..models.registry import BACKBONES, SHARED_FIELDS
from .dotted import flatten, parse_overrides, related, set_dotted, unflatten
from .fields import Choice, ConfigError, Float, Int, Section, Seed
from .schema import METRICS, MIN_EVAL_SAMPLES
from .setting import SamplerSetting
from .yamlio import YamlError, load_text, read_bytes

# The side of each data set's square images, which the model's shape is checked against before
# anything runs; the names are training.data.DATASETS (tests/test_config.py checks that they agree).
IMAGE_SIZES = {"mnist-5k": 28, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}
IMAGE_CHANNELS = {"mnist-5k": 1, "mnist": 1, "fashion-mnist": 1, "cifar10": 3}  # what autotune's probe builds
NUM_CLASSES = {"mnist-5k": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}
# The images of each data set's training split: an epoch is ceil(N / batch_size) steps, resolved here, before
# the data is loaded, so the config (and its hash) holds the step count; training checks N against the data.
DATASET_SIZES = {"mnist-5k": 5_000, "mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000}
MAX_EVAL_SAMPLES = 50_000  # the usual FID sample count; more only costs time
# Upper bounds where a larger value can only be a mistake (a typo, a unit slip) and would otherwise fail deep in
# the first allocation; what fits a given machine is orchestration/memory.py's estimate, checked before a run.
MAX_TIMESTEPS = 100_000  # 25 x the largest published discrete T (iDDPM's 4000)
MAX_BATCH = 2**16  # images per batch: 32 x the largest published diffusion batch (2048)
MAX_WIDTH = 2**14  # channels or token width: 10 x DiT-XL's 1152, 40 x ADM's 256
MAX_DEPTH = 2**10  # transformer blocks, residual blocks per level
MAX_LOG_EVERY = 100_000  # the training loop buffers log_every losses on the device between logs
DEVICE_TYPES = ("cpu", "cuda", "mps")  # train.device: auto, a type, or type:index (device.py checks it exists)
# Fields that change where or how often things happen, never what is learned.
OPERATIONAL = {"data": {"root", "download"}, "train": {"checkpoint_every", "log_every", "device"}}
AUTOTUNED = ("precision", "memory_format")  # train fields that ``auto`` leaves to a measurement (training/autotune.py)
FLOW_UNUSED = ("schedule", "min_snr_gamma")  # diffusion fields that process flow does not read
# Under flow the network predicts the velocity eps - x_0 (v, the velocity of the process's own path), unweighted.
FLOW_FIXES = {"parameterization": "v", "loss_weighting": "uniform", "zero_terminal_snr": False}
SPACES = ("pixel", "latent")  # data.space: what the diffusion model learns (training/autoencoder.py)


class DataConfig(Section):
    dataset: Choice(IMAGE_SIZES, "data set") = "mnist-5k"
    root: str = "~/.cache/harness/data"
    download: bool = False
    # pixel | latent: the diffusion model learns the frozen autoencoder's scaled latents
    space: Choice(SPACES, "data space") = "pixel"


class AutoencoderConfig(Section):
    """The KL-regularized autoencoder of ``data.space: latent`` (models/autoencoder.py); unread for pixels."""

    latent_channels: Int = Field(4, ge=1)  # c of the latents (c, H/f, W/f)
    downsample: Int = Field(4, ge=1)  # f, a power of two dividing the image side: 28 -> 7 at f = 4
    kl_weight: Float = Field(1e-4, ge=0)  # loss = mean squared error + kl_weight * KL, both per element
    steps: Int = Field(400, ge=1)  # AdamW steps, once per data set and section (then cached)
    channels: Int = Field(16, ge=1, le=MAX_WIDTH)  # the width of every encoder and decoder convolution
    batch_size: Int = Field(64, ge=1, le=MAX_BATCH)
    lr: Float = Field(2e-3, gt=0)  # the peak of a one-cycle schedule

    def latent_shape(self, image_size: int) -> tuple[int, int]:
        """(channels, side) of the latents of (C, image_size, image_size) images."""
        return self.latent_channels, image_size // self.downsample


class ModelConfig(Section):
    backbone: Choice(BACKBONES, "backbone") = "unet"  # models.registry.BACKBONES
    channels: Int = Field(24, ge=8, le=MAX_WIDTH)  # unet: the first level's width
    channel_mult: tuple[Int, ...] = (1, 2, 2)  # unet
    num_res_blocks: Int = Field(1, ge=1, le=MAX_DEPTH)  # unet
    attention_resolutions: tuple[Int, ...] = (7,)  # unet
    patch_size: Int = Field(2, ge=1)  # dit
    depth: Int = Field(4, ge=1, le=MAX_DEPTH)  # dit: transformer blocks
    hidden: Int = Field(64, ge=4, le=MAX_WIDTH)  # dit: token width
    heads: Int = Field(4, ge=1)  # dit
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    conditional: bool = False

    def identity(self) -> dict[str, Any]:
        """The fields that shape the network, as they enter the config hash.

        A field the chosen backbone does not read (``hidden`` of a UNet, ``channels`` of a DiT) changes
        nothing that is learned, so it is left out: two arms that differ only there are one model, not two.
        """
        keep = {*BACKBONES[self.backbone].fields, *SHARED_FIELDS, "backbone"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keep}


class DiffusionConfig(Section):
    timesteps: Int = Field(1000, ge=2, le=MAX_TIMESTEPS)
    schedule: Choice(SCHEDULES, "schedule") = "cosine"
    zero_terminal_snr: bool = False
    parameterization: Choice(PARAMETERIZATIONS, "parameterization") = "eps"
    loss_weighting: Choice(WEIGHTINGS, "loss weighting") = "uniform"
    min_snr_gamma: Float = Field(5.0, gt=0)
    # ddpm | flow (diffusion/flow.py); flow reads neither schedule nor min_snr_gamma
    process: Choice(PROCESS_SAMPLERS, "process") = "ddpm"
    flow_time: Choice(FLOW_TIMES, "flow time") = "uniform"  # flow's training times: uniform | logit_normal

    @model_validator(mode="before")
    @classmethod
    def _flow_defaults(cls, data):
        """The fields flow fixes default to flow's values: ``process: flow`` alone is a complete choice."""
        if isinstance(data, dict) and data.get("process") == "flow":
            return {**FLOW_FIXES, **data}
        return data

    @model_validator(mode="after")
    def _combinations(self):
        for key, value in FLOW_FIXES.items() if self.process == "flow" else ():
            if getattr(self, key) != value:  # given explicitly, since _flow_defaults filled the rest
                raise ValueError(f"process flow needs {key}: {str(value).lower()} (the network predicts eps - x_0)")
        if self.zero_terminal_snr and self.parameterization == "eps":
            raise ValueError("zero_terminal_snr needs parameterization v or x0 (eps cannot recover x0 at abar_T = 0)")
        if self.process == "ddpm" and self.flow_time != "uniform":
            raise ValueError(f"flow_time {self.flow_time!r} applies to process flow only")
        return self


class TrainConfig(Section):
    steps: Int = Field(1500, ge=1)
    epochs: Int | None = Field(None, ge=1)  # instead of steps: Config resolves it into steps (steps_per_epoch)
    batch_size: Int = Field(128, ge=1, le=MAX_BATCH)
    lr: Float = Field(1e-3, gt=0)
    weight_decay: Float = Field(0.0, ge=0)
    warmup_steps: Int = Field(100, ge=0)
    grad_clip: Float = Field(1.0, ge=0)  # 0 disables clipping
    ema_decay: Float = Field(0.995, ge=0, lt=1)
    label_dropout: Float = Field(0.1, ge=0, le=1)
    # auto: the faster on this device and model, measured by a timed probe (training/autotune.py) and resolved
    # before the config is hashed or trained, so a run's hash always names the precision and layout it ran with.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    compile: bool = False
    eval_every: Int = Field(0, ge=0)  # 0: evaluate at the end only
    eval_epochs: tuple[Int, ...] = ()  # instead of eval_every: evaluate (and checkpoint) at the end of these epochs
    checkpoint_every: Int = Field(0, ge=0)  # 0: every tenth of the run (train.train), so a kill loses at most 10%
    log_every: Int = Field(25, ge=1, le=MAX_LOG_EVERY)
    seed: Seed = 0
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        """A name torch reads as a device of ``DEVICE_TYPES``; whether this machine has it is device.py's check,
        made where the run happens (a Slurm node may have the GPU that the login node lacks)."""
        if v == "auto":
            return v
        try:
            d = torch.device(v)
        except (RuntimeError, TypeError):
            d = None
        if d is None or d.type not in DEVICE_TYPES or str(d) != v.strip():
            valid = ", ".join(["auto", *DEVICE_TYPES, "cuda:N"])
            raise ValueError(f"unknown device {v!r}; valid: {valid}")
        return v

    def unresolved(self) -> list[str]:
        """The fields still ``auto``: training/autotune.py measures them on the device before anything is hashed."""
        return [k for k in AUTOTUNED if getattr(self, k) == "auto"]


class EvalConfig(Section):
    num_samples: Int = Field(1000, le=MAX_EVAL_SAMPLES)  # at least MIN_EVAL_SAMPLES (_enough_samples)
    batch_size: Int = Field(128, ge=1, le=MAX_BATCH)
    samplers: tuple[SamplerSetting, ...] = (SamplerSetting(),)
    clip_x0: bool = True
    seed: Seed = 1234  # fixed noise and labels, the same at every evaluation
    recognizability_threshold: Float = Field(0.9, gt=0, le=1)  # top-class probability
    recognizable_fraction: Float = Field(0.8, gt=0, le=1)  # "recognizable" once this many samples are
    grid_size: Int = Field(64, ge=1)
    inception_weights: str | None = None  # a local InceptionV3 weights file for fid_inception
    # Optimizer steps of the noise-aware classifier p(y | x_t, t) that classifier guidance (a setting's
    # classifier_scale > 0) trains once per data set and schedule (evaluation/noisy_classifier.py).
    classifier_steps: Int = Field(600, ge=1)

    @field_validator("num_samples")
    @classmethod
    def _enough_samples(cls, n: int) -> int:
        """Each evaluation computes every metric of schema.METRICS: refused here rather than after training."""
        if n < MIN_EVAL_SAMPLES:
            needy = [m.text for m in METRICS.values() if m.min_samples == MIN_EVAL_SAMPLES]
            raise ValueError(f"{n} is too few: {' and '.join(needy)} need at least {MIN_EVAL_SAMPLES} samples")
        return n


class Config(Section):
    data: DataConfig = DataConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    # Errors of these checks start with the field's dotted path, which format_validation_error reads.
    @model_validator(mode="before")
    @classmethod
    def _epochs_to_steps(cls, data):
        """``train.epochs`` becomes ``train.steps`` here, where the data set and batch size are known. A resolved
        config (a checkpoint's, a worker's) holds both: accepted when they agree. Fields report bad values."""
        if not isinstance(data, dict):
            return data
        try:  # the two sections alone, for their values; an invalid one is reported by the validation to come
            tc, dc = TrainConfig.model_validate(data.get("train", {})), DataConfig.model_validate(data.get("data", {}))
        except ValidationError:
            return data
        if tc.epochs is None:
            return data
        steps = tc.epochs * steps_per_epoch(dc.dataset, tc.batch_size)
        if "steps" in tc.model_fields_set and tc.steps != steps:
            raise ValueError(
                f"train.epochs: give train.steps or train.epochs, not both ({tc.epochs} epochs of {dc.dataset} at "
                f"batch {tc.batch_size} are {steps:,} steps, not {tc.steps:,})"
            )
        return {**data, "train": {**tc.model_dump(include=tc.model_fields_set), "steps": steps}}

    @model_validator(mode="after")
    def _eval_epochs(self):
        tc, e = self.train, self.train.eval_epochs
        if e and tc.eval_every:
            raise ValueError("train.eval_epochs: give train.eval_every or train.eval_epochs, not both")
        if any(b <= a for a, b in zip(e, e[1:])) or (e and e[0] < 1):
            raise ValueError(f"train.eval_epochs: {list(e)} must be positive and strictly ascending")
        spe = self.steps_per_epoch()
        if e and e[-1] * spe > tc.steps:
            raise ValueError(
                f"train.eval_epochs: epoch {e[-1]} ends at step {e[-1] * spe:,}, after the run's "
                f"{tc.steps:,} steps ({tc.steps / spe:.4g} epochs of {spe:,} steps)"
            )
        return self

    @model_validator(mode="after")
    def _cross_checks(self):
        m, size = self.model, IMAGE_SIZES[self.data.dataset]
        if self.data.space == "latent":  # the network's input is the latent, (c, size / f, size / f)
            try:
                check_autoencoder_shape(size, self.autoencoder.downsample)
            except ValueError as err:
                raise ValueError(f"autoencoder.{err}") from None
            size = self.autoencoder.latent_shape(size)[1]
        try:
            BACKBONES[m.backbone].check(m, size)
        except ValueError as err:
            raise ValueError(f"model.{err}" + (" (of the latents)" if self.data.space == "latent" else "")) from None
        for i, s in enumerate(self.eval.samplers):
            if why := s.misfit(self.diffusion.process, self.model.conditional):
                raise ValueError(f"eval.samplers.{i}.{why[0]}: {why[1]}")
            if s.classifier_scale and self.data.space == "latent":  # its classifier reads pixels, not latents
                raise ValueError(f"eval.samplers.{i}.classifier_scale: applies to data.space pixel only")
            if s.steps > self.diffusion.timesteps and self.diffusion.process == "ddpm":  # flow's t is continuous
                raise ValueError(
                    f"eval.samplers.{i}.steps: {s.steps} is above diffusion.timesteps = {self.diffusion.timesteps}"
                )
        return self

    # -- identity -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def train_hash(self) -> str:
        """12 hex digits identifying the trained model (not its evaluation).

        A field the model never reads is left out (a flow model's schedule, a pixel model's autoencoder), so
        arms that differ only there are one model, not two.
        """
        d = self.to_dict()
        del d["eval"]
        d["model"] = self.model.identity()
        for key in FLOW_UNUSED if self.diffusion.process == "flow" else ("flow_time",):
            d["diffusion"].pop(key)
        if self.data.space == "pixel":
            del d["autoencoder"]
        for section, keys in OPERATIONAL.items():
            for key in keys:
                d[section].pop(key)
        del d["train"]["epochs"]  # resolved into steps, which the hash holds: `epochs: 10` is its steps' model
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]

    def network_input(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network denoises: the images, or their latents under ``data.space: latent``."""
        channels, side = IMAGE_CHANNELS[self.data.dataset], IMAGE_SIZES[self.data.dataset]
        if self.data.space == "latent":
            channels, side = self.autoencoder.latent_shape(side)
        return channels, side, side

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.data.dataset, self.train.batch_size)

    def eval_epoch_steps(self) -> tuple[int, ...]:
        """The steps at which the epochs of ``train.eval_epochs`` end."""
        return tuple(e * self.steps_per_epoch() for e in self.train.eval_epochs)

    def counts_epochs(self) -> bool:
        """Whether the config speaks in epochs (reports then label the training axis in epochs)."""
        return self.train.epochs is not None or bool(self.train.eval_epochs)

    def flat(self) -> dict[str, Any]:
        """Every field under its dotted key (``diffusion.schedule``), lists as JSON strings."""
        return flatten(self.to_dict())

    @classmethod
    def from_params(cls, params: dict[str, str], source: str) -> Config:
        """The inverse of ``flat`` on logged MLflow params (strings): a field not logged takes its default."""
        return build_config(unflatten(params, set(cls().flat())), source)


def steps_per_epoch(dataset: str, batch_size: int) -> int:
    """ceil(N / batch_size): the last, partial batch is a step, as in ``len(DataLoader(drop_last=False))``, a
    tutorial's epoch (the loop draws full batches with replacement: an epoch is a count of steps, not a pass)."""
    return math.ceil(DATASET_SIZES[dataset] / batch_size)


# -- building configs from files and overrides ------------------------------------------------------


def _valid_keys(loc: tuple, model: type[BaseModel] | None = None) -> list[str]:
    """The field names allowed at ``loc``; list indices and dict keys on the way are stepped over."""
    model, in_container = model or Config, False
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            if in_container:  # ``eval.samplers.0`` or ``profiles.quick``
                in_container = False
                continue
            return []
        inner = [a for a in (field.annotation, *_nested_args(field.annotation)) if _is_model(a)]
        if not inner:
            return []
        in_container = inner[0] is not field.annotation
        model = inner[0]
    return sorted(model.model_fields)


def _nested_args(annotation) -> list:
    out = []
    for a in get_args(annotation):
        out += [a, *_nested_args(a)]
    return out


def _is_model(a) -> bool:
    return isinstance(a, type) and issubclass(a, BaseModel)


# Where a bad field came from, as (source, field) for the error line: an override or a spec section
# rather than the file as written. Given the field's dotted path; returns None to keep the default.
Origin = Callable[[str], tuple[str, str] | None]


def format_validation_error(
    err: ValidationError, source: str, root: type[BaseModel] | None = None, origin: Origin | None = None
) -> str:
    """The first error as one line: ``source: field: what is wrong (what is allowed)``."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    field = ".".join(str(p) for p in loc)
    msg = e["msg"].removeprefix("Value error, ")
    # A check across sections (no loc), or a section's own check naming its field: by convention its message
    # starts with the field's whole path.
    head, sep, rest = msg.partition(": ")
    if sep and (not field or head.startswith(f"{field}.")):
        if all(part.isidentifier() or part.isdigit() for part in head.split(".")):
            field, msg = head, rest
    if e["type"] == "extra_forbidden":
        msg = f"unknown key; valid keys here: {', '.join(_valid_keys(loc, root))}"
    source, field = (origin and origin(field)) or (source, field)
    return f"{source}: {field}: {msg}" if field else f"{source}: {msg}"


def build_config(data: dict, source: str = "<config>", origin: Origin | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, origin=origin)) from None


def override_origin(keys, fallback: Origin | None = None) -> Origin:
    """Name ``--set KEY`` for a field that an override touches; other fields go to ``fallback``."""

    def origin(field: str):
        key = next((k for k in keys if related(k, field)), None)
        if key is None:
            return fallback(field) if fallback else None
        return f"--set {key}", "" if key == field else field

    return origin


def read_yaml(path: str | Path) -> Any:
    """Load a YAML file within yamlio's limits; a missing, non-UTF-8 or malformed file is a one-line ConfigError."""
    path = Path(path)
    try:
        return load_text(read_bytes(path))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except YamlError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data: Any = {} if path is None else read_yaml(path)
    source = str(path) if path is not None else "--set"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        sections = ", ".join(Config.model_fields)
        raise ConfigError(f"{source}: expected a mapping of sections ({sections})")
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        try:
            data = set_dotted(data, key, value)
        except ConfigError as err:
            raise ConfigError(f"--set {key}: {err}") from None
    return build_config(data, source, override_origin(parsed))
