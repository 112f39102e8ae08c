"""Train one configuration: a flat loop that reads top to bottom (nanoGPT style).

Deterministic on CPU for a given ``train.seed``: all randomness comes from one generator whose state,
with the model, EMA, optimizer and step, is in every checkpoint, so a run killed after step k and
resumed equals an uninterrupted run. Evaluations come every ``train.eval_every`` steps or at the ends of
the epochs in ``train.eval_epochs`` (``Config.eval_epoch_steps``), and at the last step. A checkpoint is
written every ``train.checkpoint_every`` steps (0: a tenth of the run) and at every evaluation. A resumed
run logs only the steps its tracker does not have yet. The host synchronizes with the device only every
``train.log_every`` steps (losses are buffered on the device), at evaluations and at checkpoints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import stop
from ..config import DATASET_SIZES, IMAGE_CHANNELS, IMAGE_SIZES, NUM_CLASSES, Config, ConfigError
from ..config.schema import GFLOPS_PER_IMAGE, NUM_BUCKETS, NUM_PARAMETERS
from ..device import autocast, resolve_device, resolve_precision
from ..diffusion.processes import PROCESSES
from ..diffusion.schedules import make_schedule
from ..models.registry import BACKBONES, gflops_per_image
from ..progress import Progress
from ..result import EvalResult
from ..tracker import LoggedAfter, NullTracker, StoreUnavailable, Tracker
from . import checkpoint
from .autoencoder import LatentSpace
from .ema import EMA


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite loss at step {step}: {value}")
        self.step, self.value = step, value


@dataclass
class TrainResult:
    config_hash: str
    steps: int
    final_loss: float  # mean training loss over the last log interval
    images_per_second: float
    num_parameters: int
    checkpoint: str
    gflops_per_image: float = math.nan  # one forward pass, batch of 1 (models.registry.gflops_per_image)
    evals: list[EvalResult] = field(default_factory=list)  # every evaluation, with its step
    classifier_accuracy: float | None = None
    recognizable_at_step: int | None = None
    interval_rates: list[float] = field(default_factory=list)  # images/s per log interval (training.autotune)

    def final_evals(self) -> list[EvalResult]:
        return [e for e in self.evals if e.step == self.steps]

    def to_json(self) -> dict[str, Any]:
        """The shape ``harness train --json`` writes."""
        return {
            "config_hash": self.config_hash,
            "classifier_accuracy": self.classifier_accuracy,
            "train": {
                "final_loss": self.final_loss,
                "images_per_second": self.images_per_second,
                "steps": self.steps,
                "num_parameters": self.num_parameters,
                "gflops_per_image": self.gflops_per_image,
                "checkpoint": self.checkpoint,
            },
            "evals": [e.to_dict() for e in self.final_evals()],
            "recognizable_at_step": self.recognizable_at_step,
        }


class Evaluation(Protocol):
    """What the loop asks of an evaluator; ``evaluation.Evaluator`` is the real one.

    Passed in rather than built here, so that training never imports evaluation (which samples with the
    network the loop trains, and so sits one layer above it).
    """

    classifier_accuracy: float | None
    space: LatentSpace | None  # data.space latent: the frozen autoencoder that samples are decoded with

    def run(self, model: torch.nn.Module, *, step: int, tracker: Tracker) -> list[EvalResult]: ...


class NoEvaluation:
    """Evaluates nothing: for benchmarks of the loop and tests of training alone."""

    classifier_accuracy = None

    def __init__(self, space: LatentSpace | None = None):
        self.space = space

    def run(self, model, *, step, tracker):
        return []


def build_model(config: Config, channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    """The network of ``config.model.backbone`` (``models.registry.BACKBONES``) for images (channels, side, side),
    or for their latents under ``data.space: latent``."""
    m = config.model
    if config.data.space == "latent":
        channels, image_size = config.autoencoder.latent_shape(image_size)
    return BACKBONES[m.backbone].build(m, channels, image_size, num_classes if m.conditional else None)


def train(
    config: Config,
    tracker: Tracker | None = None,
    *,
    run_dir: str | Path,
    evaluator: Evaluation,
    data=None,
    stop_after: int | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train (or resume) ``config`` in ``run_dir``; evaluate every ``eval_every`` steps (or at the ends of
    the ``eval_epochs``) and at the end.

    ``evaluator`` scores the EMA model at each evaluation step (``evaluation.Evaluator``, or
    ``NoEvaluation``); ``data`` (an ``ImageData``) is loaded from the config when not given.
    ``stop_after`` ends the process-equivalent of a crash after that many steps (tests of resume).
    ``progress``: a bar (True), nothing (False), or by default a bar on a terminal and a line every tenth
    of the steps elsewhere (worker processes, logs), with images/s and ETA (``harness.progress``).
    When the tracker's store becomes unreachable (``StoreUnavailable``), the state is checkpointed with
    what the store did not take, to be logged on resume, and the error is raised.
    """
    tracker = tracker or NullTracker()
    check_resolved(config)
    tc, dc = config.train, config.diffusion
    device = resolve_device(tc.device)
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if data is None:
        from .data import load_dataset  # the edges: data sets pull in heavy imports

        data = load_dataset(config.data.dataset, config.data.root, config.data.download)
    n = DATASET_SIZES[config.data.dataset]
    if config.counts_epochs() and data.images.shape[0] != n:  # the steps of an epoch were counted for n images
        raise ConfigError(
            f"train.epochs: epochs of {config.data.dataset} were counted as {n:,} images, but the data set loaded "
            f"has {data.images.shape[0]:,}"
        )

    x_data = data  # what the network learns: the images, or their scaled latents (training/autoencoder.py)
    if config.data.space == "latent":
        if getattr(evaluator, "space", None) is None:
            raise ConfigError("data.space: latent needs an evaluator that holds the autoencoder (evaluator.space)")
        x_data = evaluator.space.latent_data(data)

    torch.manual_seed(tc.seed)  # initial weights (and dropout masks until a checkpoint restores them)
    model = build_model(config, data.channels, data.image_size, data.num_classes).to(device)
    memory_format = torch.channels_last if tc.memory_format == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    params = list(model.parameters())  # taken once: the per-step clip and EMA walk no module tree
    ema = EMA(model, tc.ema_decay)
    # Fused: one kernel per step for all parameters, on the CPU too (a third fewer optimizer passes over memory).
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, tc.warmup_steps)))
    gen = torch.Generator(device=device).manual_seed(tc.seed)
    # On the device once: the loss indexes abar_t and SNR_t there every step without a host copy.
    schedule = make_schedule(dc.schedule, dc.timesteps, zero_terminal_snr=dc.zero_terminal_snr).to(device)
    images = x_data.images.to(device, non_blocking=True)  # (N, C, H, W), the whole set on the device
    labels = data.labels.to(device, non_blocking=True)
    null_label = data.num_classes
    step, evals, last_loss, seconds, rates = 0, [], math.nan, 0.0, []
    checkpoint_every = tc.checkpoint_every or max(1, tc.steps // 10)  # 0: a kill loses at most a tenth
    epoch_ends = set(config.eval_epoch_steps())

    # Only this config's checkpoint, of this network: another's is refused before any of it is loaded.
    state = checkpoint.resume_state(run_dir, config.train_hash(), parameter_shapes(model), map_location=device)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["lr_schedule"])
        gen.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda":  # dropout masks on the GPU come from its own generator
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        step, last_loss, seconds = state["step"], state["last_loss"], state["seconds"]
        evals = [EvalResult.from_dict(e) for e in state["evals"]]
        # A killed run logged past its checkpoint: the steps up to there are in the tracker already.
        tracker = LoggedAfter(tracker, tracker.last_step("train/loss"))

    def save(unlogged: dict | None = None) -> None:
        checkpoint.save_atomic(
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_schedule": warmup.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0),
                "step": step,
                "evals": [e.to_dict() for e in evals],  # plain data: loaded with weights_only=True
                "last_loss": last_loss,
                "seconds": seconds,
                "config": config.canonical_json(),
                "config_hash": config.train_hash(),  # what resume_state compares: a run resumes only its own
                "unlogged": unlogged or {},
            },
            ckpt_path,
        )

    def run_eval() -> None:
        results = evaluator.run(ema.model, step=step, tracker=tracker)
        evals.extend(results)

    unlogged = (state or {}).get("unlogged")
    if unlogged:  # the store went away at the step of this checkpoint: log now what it missed then
        if unlogged["eval"]:
            run_eval()
        losses = unlogged["losses"]
        tracker.log_series("train/loss", losses, range(unlogged["start"] + 1, unlogged["start"] + 1 + len(losses)))

    net = torch.compile(model) if tc.compile else model
    amp_dtype = resolve_precision(tc.precision)
    T, B = schedule.T, tc.batch_size
    loss_fn = PROCESSES[dc.process].training_loss(dc, schedule)  # names resolved once, not per step
    loss_buf = torch.zeros(tc.log_every, device=device)  # per-step losses since the last log
    bucket_sum = torch.zeros(NUM_BUCKETS, device=device)
    bucket_n = torch.zeros(NUM_BUCKETS, device=device)
    buf_start, interval_start = step, time.perf_counter()
    bar = Progress(tc.steps, f"train {config.train_hash()}", initial=step, enabled=progress)
    model.train()
    while step < tc.steps:
        if stop.requested():  # the first Ctrl-C or SIGTERM: keep every step trained so far, log it on resume
            bar.close()
            seconds += time.perf_counter() - interval_start
            pending = {"start": buf_start, "losses": loss_buf[: step - buf_start].tolist(), "eval": False}
            save(unlogged=pending if step > buf_start else None)
            raise stop.Stopped(f"stopped at step {step} of {tc.steps} and checkpointed")
        idx = torch.randint(0, images.shape[0], (B,), device=device, generator=gen)
        x0 = images[idx].contiguous(memory_format=memory_format)  # (B, C, H, W)
        y = None
        if config.model.conditional:
            drop = torch.rand(B, device=device, generator=gen) < tc.label_dropout
            y = torch.where(drop, null_label, labels[idx])  # dropped labels train p(x) for guidance
        with autocast(device, amp_dtype):  # t: each example's time in [0, T), for the buckets below
            per_example, t = loss_fn(net, x0, y, gen)
        loss = per_example.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip, foreach=True)
        optimizer.step()
        warmup.step()
        ema.update(model)

        loss_buf[step - buf_start] = loss.detach()
        bucket = (t * NUM_BUCKETS) // T
        bucket_sum.index_add_(0, bucket, per_example.detach().float())
        bucket_n.index_add_(0, bucket, torch.ones_like(per_example, dtype=torch.float))
        step += 1
        bar.update(1)

        at_eval = step == tc.steps or (tc.eval_every and step % tc.eval_every == 0) or step in epoch_ends
        at_ckpt = at_eval or step % checkpoint_every == 0  # an evaluated model is worth keeping
        if step - buf_start == tc.log_every or at_ckpt:
            losses = loss_buf[: step - buf_start].tolist()  # the one host sync of the interval
            for i, value in enumerate(losses):
                if not math.isfinite(value):
                    bar.close()
                    raise NonFiniteLoss(buf_start + i + 1, value)
            now = time.perf_counter()
            seconds += now - interval_start
            ips = len(losses) * B / max(now - interval_start, 1e-9)
            rates.append(ips)
            last_loss = sum(losses) / len(losses)
            per_bucket = (bucket_sum / bucket_n.clamp(min=1)).tolist()
            interval = {
                "train/images_per_second": ips,
                "train/lr": warmup.get_last_lr()[0],
                **{f"train/loss_t{b}": v for b, v in enumerate(per_bucket) if bucket_n[b] > 0},
            }
            bar.set_stats(loss=f"{last_loss:.4f}", **{"images/s": f"{ips:.0f}"})
            bucket_sum.zero_(), bucket_n.zero_()
            evaluated = False
            try:  # evaluations before losses: a logged loss at step s means everything up to s is logged
                if at_eval:
                    run_eval()
                    evaluated = True
                tracker.log_series("train/loss", losses, range(buf_start + 1, step + 1))
                tracker.log_metrics(interval, step=step)
            except StoreUnavailable:
                bar.close()
                save(unlogged={"start": buf_start, "losses": losses, "eval": at_eval and not evaluated})
                raise
            buf_start = step
            if at_ckpt:
                save()
            interval_start = time.perf_counter()
        if stop_after is not None and step >= stop_after and step < tc.steps:
            bar.close()
            return None  # simulated crash: the checkpoint on disk is all that survives
    bar.close()

    result = TrainResult(
        config_hash=config.train_hash(),
        steps=step,
        final_loss=last_loss,
        images_per_second=step * B / seconds if seconds else math.nan,
        num_parameters=model.num_parameters,
        checkpoint=str(ckpt_path),
        gflops_per_image=gflops_per_image(
            lambda: build_model(config, data.channels, data.image_size, data.num_classes),
            (x_data.channels, x_data.image_size, x_data.image_size),
        ),
        evals=evals,
        classifier_accuracy=evaluator.classifier_accuracy,
        recognizable_at_step=recognizable_at_step(evals, config.eval.recognizable_fraction),
        interval_rates=rates,
    )
    tracker.log_metrics(
        {
            "train/final_loss": last_loss,
            "train/images_per_second_mean": result.images_per_second,
            "train/seconds": seconds,  # training alone, without evaluations and checkpoints
            NUM_PARAMETERS: result.num_parameters,
            GFLOPS_PER_IMAGE: result.gflops_per_image,
        }
    )
    return result


def parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in ``model``'s state dict: what a checkpoint's network must match."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def claim_run_dir(config: Config, run_dir: str | Path, *, force: bool = False) -> bool:
    """Before a job opens its run: leave in ``run_dir`` only a checkpoint that ``config`` resumes (one of another
    config or architecture: ``checkpoint.ForeignCheckpoint``, or moved aside with ``force``; unreadable ones:
    moved aside with a warning). True when checkpoint files were there and were moved aside (the run starts
    again at step 0).

    The network is built on the meta device: its shapes without its memory or its data set.
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint.pt"
    had = ckpt.exists() or checkpoint.previous(ckpt).exists()
    ds = config.data.dataset
    with torch.device("meta"):
        model = build_model(config, IMAGE_CHANNELS[ds], IMAGE_SIZES[ds], NUM_CLASSES[ds])
    state = checkpoint.resume_state(run_dir, config.train_hash(), parameter_shapes(model), force=force)
    return had and state is None


def check_resolved(config: Config) -> None:
    """A run trains with a measured precision and layout, never ``auto``: its hash must say which ran."""
    if config.train.unresolved():
        fields = ", ".join(f"train.{k}" for k in config.train.unresolved())
        raise ConfigError(f"{fields}: auto is resolved by training.autotune.resolve before a run is hashed or trained")


def recognizable_at_step(evals: list[EvalResult], fraction: float) -> int | None:
    """The first evaluation step of the first sampler setting from which recognizability stays at or above
    ``fraction`` to the end of training (a curve that reaches it and falls back has not become recognizable
    there; analysis/crossing.py reads the curves the same way)."""
    if not evals:
        return None
    first = evals[0].label
    reached = None
    for e in sorted((e for e in evals if e.label == first), key=lambda e: e.step):
        above = e.metrics.get("recognizability", 0.0) >= fraction
        reached = (reached if reached is not None else e.step) if above else None
    return reached
