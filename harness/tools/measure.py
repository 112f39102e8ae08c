"""What ``harness bench`` times, one measurement per function: the bare tutorial loop and the harness's own
step on the same model, the extras of a harness step one by one, FLOPs, the matmul peak, sampling and
evaluation costs. ``bench.py`` runs them in rounds and takes the ratios.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Config, build_config
from ..device import autocast, resolve_device
from ..diffusion.samplers import sample
from ..diffusion.schedules import make_schedule
from ..training.ema import EMA
from ..training.train import NUM_BUCKETS, NoEvaluation, build_model, train

MODEL = {"channels": 24, "channel_mult": [1, 2, 2], "attention_resolutions": [7], "conditional": True}


@dataclass
class Timing:
    images_per_second: float
    seconds_per_step: float


def _config(batch: int, steps: int, device: str, **train) -> Config:
    return build_config(
        {
            "model": MODEL,
            "train": {
                "steps": steps,
                "batch_size": batch,
                "device": device,
                "log_every": 10,
                "checkpoint_every": 10**6,
                **train,
            },
        }
    )


def bare_loop(data, config: Config, steps: int, warmup: int = 3) -> Timing:
    """The loop DDPM tutorials write: sample t, q_sample, MSE against eps, step. fp32, eager."""
    device = resolve_device(config.train.device)
    torch.manual_seed(0)
    model = build_model(config, data.channels, data.image_size, data.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    abar = make_schedule(config.diffusion.schedule).alphas_cumprod.float().to(device)
    images, labels, B = data.images.to(device), data.labels.to(device), config.train.batch_size
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(0, images.shape[0], (B,), device=device)
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, abar.shape[0], (B,), device=device)
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    dt = (time.perf_counter() - start) / steps
    return Timing(B / dt, dt)


def harness_loop(data, config: Config, tracker, run_dir: Path) -> Timing:
    """The real ``train()``, timed by its own images/s per log interval with the first interval (warm-up) dropped."""
    from ..tracker import MemoryTracker

    recorder = _Tee(tracker, MemoryTracker())
    train(config, recorder, run_dir=run_dir, data=data, evaluator=NoEvaluation(), progress=False)
    rates = [v for _, v in recorder.memory.metrics["train/images_per_second"]][1:]
    # Equal-length intervals: their harmonic mean is images over wall time, as the bare loop measures it.
    ips = len(rates) / sum(1 / r for r in rates)
    return Timing(ips, config.train.batch_size / ips)


class _Tee:
    """Logs to the real tracker and keeps a copy to read the rates back."""

    def __init__(self, tracker, memory):
        self.tracker, self.memory = tracker, memory

    def __getattr__(self, name):
        def both(*args, **kwargs):
            getattr(self.tracker, name)(*args, **kwargs)
            return getattr(self.memory, name)(*args, **kwargs)

        return both


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n matmul in ``dtype``: this machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def step_flops(data, config: Config) -> float:
    """FLOPs of one training step (forward and backward) from torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..diffusion.losses import diffusion_loss

    model = build_model(config, data.channels, data.image_size, data.num_classes)
    B = config.train.batch_size
    x0, t = data.images[:B], torch.randint(0, 1000, (B,))
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(model, x0, t, torch.randn_like(x0), make_schedule("cosine"), y=data.labels[:B]).mean().backward()
    return counter.get_total_flops()


def sampling_rates(data, config: Config, n: int, device: torch.device, dtype) -> dict[str, float]:
    """Samples/s of DDPM-1000, DDIM-50, DPM-Solver++(2M)-20, and DDIM-50 with guidance (w = 2)."""
    model = build_model(config, data.channels, data.image_size, data.num_classes).to(device).eval()
    sched = make_schedule(config.diffusion.schedule)
    labels = torch.arange(n) % data.num_classes

    def net(x, t, y):
        with autocast(device, dtype):
            return model(x, t, y).float()

    def rate(sampler: str, steps: int, guidance: float = 0.0) -> float:
        start = time.perf_counter()
        sample(
            net,
            (n, data.channels, data.image_size, data.image_size),
            sched,
            sampler=sampler,
            steps=steps,
            labels=labels,
            null_label=data.num_classes,
            guidance=guidance,
            device=device,
            generator=torch.Generator().manual_seed(0),
        )
        _sync(device)
        return n / (time.perf_counter() - start)

    # The short samplers run before and after the long DDPM-1000 run, so its ratio to DDIM-50 (and guided
    # to unguided, measured back to back) compares like with like if the load changes meanwhile.
    short = {"ddim50": ("ddim", 50, 0.0), "ddim50_guided": ("ddim", 50, 2.0), "dpmpp20": ("dpmpp_2m", 20, 0.0)}
    before = {k: rate(*v) for k, v in short.items()}
    ddpm = rate("ddpm", 1000)
    after = {k: rate(*v) for k, v in short.items()}
    return {"ddpm1000": ddpm, **{k: (before[k] + after[k]) / 2 for k in short}}


def fid_eval_seconds(data, n: int, device: torch.device) -> float:
    """Seconds for FID, KID, precision and recall of ``n`` samples, the reference statistics cached."""
    from ..evaluation.evaluate import default_cache_dir
    from ..evaluation.features import domain_classifier
    from ..evaluation.metrics import fidelity_metrics

    clf = domain_classifier(data, default_cache_dir() / "classifiers", device=device)
    fake = data.images[torch.randperm(data.images.shape[0], generator=torch.Generator().manual_seed(0))[:n]]
    kwargs = dict(
        cache_dir=default_cache_dir() / "fidelity", reference_key=f"{data.name}-{data.fingerprint}", device=device
    )
    fidelity_metrics(fake[:64], data.images, clf, **kwargs)  # fills the reference cache
    start = time.perf_counter()
    fidelity_metrics(fake, data.images, clf, **kwargs)
    return time.perf_counter() - start


def step_extras_ms(data, config: Config, tracker, reps: int = 30) -> dict[str, float]:
    """Milliseconds per step of each thing a harness step does beyond the bare loop, each timed alone on the
    bench's model: where an overhead would go (the ratio alone cannot say). ``adamw_foreach`` is the bare
    loop's optimizer step, ``adamw_fused`` the harness's; ``mlflow_per_interval`` is one log interval's two
    calls (the losses of ``log_every`` steps, then the interval's metrics) to ``tracker``, paid once per interval.
    """
    device = resolve_device(config.train.device)
    torch.manual_seed(0)
    model = build_model(config, data.channels, data.image_size, data.num_classes).to(device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    ema = EMA(model, config.train.ema_decay)
    fused = torch.optim.AdamW(params, lr=1e-6, fused=True)
    foreach = torch.optim.AdamW(params, lr=1e-6, foreach=True)
    B, gen = config.train.batch_size, torch.Generator(device=device).manual_seed(0)
    labels, per_example = data.labels.to(device), torch.rand(B, device=device)
    t = torch.randint(0, 1000, (B,), device=device)
    sums, counts = torch.zeros(NUM_BUCKETS, device=device), torch.zeros(NUM_BUCKETS, device=device)

    def dropout():
        idx = torch.randint(0, labels.shape[0], (B,), device=device, generator=gen)
        return torch.where(torch.rand(B, device=device, generator=gen) < 0.1, data.num_classes, labels[idx])

    def buckets():
        b = (t * NUM_BUCKETS) // 1000
        sums.index_add_(0, b, per_example), counts.index_add_(0, b, torch.ones_like(per_example))

    def log_interval(step=[0]):  # noqa: B006 - a counter: MLflow keeps every step, so each call logs new ones
        n, step[0] = config.train.log_every, step[0] + config.train.log_every
        tracker.log_series("train/loss", [0.1] * n, range(step[0] - n + 1, step[0] + 1))
        tracker.log_metrics({f"train/loss_t{i}": 0.1 for i in range(NUM_BUCKETS)} | {"train/lr": 1e-3}, step=step[0])

    def timed(f, n=reps) -> float:
        f()
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            f()
        _sync(device)
        return (time.perf_counter() - start) / n * 1000

    return {
        "grad_clip": timed(lambda: torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip, foreach=True)),
        "ema_update": timed(lambda: ema.update(model)),
        "zero_grad": timed(lambda: [setattr(p, "grad", torch.zeros_like(p)) for p in params]),
        "label_dropout": timed(dropout),
        "loss_buckets": timed(buckets),
        "adamw_fused": timed(fused.step),
        "adamw_foreach": timed(foreach.step),
        "mlflow_per_interval": timed(log_interval, n=5),
    }
