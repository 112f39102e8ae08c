"""``harness bench``: what the harness costs and what its speed-ups buy, measured side by side.

Every figure is measured in one process on this machine, so the ratios compare like with like:
the harness's real training step (EMA, label dropout, loss buckets, MLflow tracking) against a bare
DDPM-tutorial loop of the same model and batch, each speed-up against fp32 eager, the achieved
GFLOP/s against this machine's own matmul peak, and sampling and evaluation costs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F

from .config import Config, build_config
from .device import autocast, cpu_identity, host_identity, native_bf16, resolve_device
from .diffusion.samplers import sample
from .diffusion.schedules import make_schedule
from .schema import ROLE
from .training.train import NoEvaluation, build_model, train

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
    from .tracker import MemoryTracker

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


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


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

    from .diffusion.losses import diffusion_loss

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
    from .evaluation.evaluate import default_cache_dir
    from .evaluation.features import domain_classifier
    from .evaluation.metrics import fidelity_metrics

    clf = domain_classifier(data, default_cache_dir() / "classifiers", device=device)
    fake = data.images[torch.randperm(data.images.shape[0], generator=torch.Generator().manual_seed(0))[:n]]
    kwargs = dict(
        cache_dir=default_cache_dir() / "fidelity", reference_key=f"{data.name}-{data.fingerprint}", device=device
    )
    fidelity_metrics(fake[:64], data.images, clf, **kwargs)  # fills the reference cache
    start = time.perf_counter()
    fidelity_metrics(fake, data.images, clf, **kwargs)
    return time.perf_counter() - start


BARE = "bare"
PEER = "peer"  # diffusers' UNet2DModel of the same size in the same loop (harness.peer), with --peer


def rotated(names: list, r: int) -> list:
    """Round ``r``'s measurement order: each variant takes each position once per len(names) rounds, so a
    slow stretch of background load is spread over all of them instead of landing on one."""
    k = r % len(names)
    return names[k:] + names[:k]


def round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s measurement order. The bare loop sits between the harness's fp32 step and the peer, whose
    ratios to it are the overhead and the peer comparison: measured back to back (sides swapping every round), a
    change of background load between them cannot pass for either (on a shared 2-core host, ratios of runs a
    few variants apart spread by +-8%). That group and the other variants rotate as in ``rotated``."""
    group = [n for n in ("fp32", BARE, PEER) if n in names]
    units = [group if r % 2 == 0 else group[::-1], *[[n] for n in names if n not in group]]
    return [n for unit in rotated(units, r) for n in unit]


SPREAD = 0.10  # rounds disagreeing by more than this (max - min over the median) earn more rounds


def spread(ratios: list[float]) -> float:
    return (max(ratios) - min(ratios)) / median(ratios)


def run_bench(*, quick: bool = False, device: str = "auto", peer: bool = False) -> dict[str, Any]:
    from .orchestration.tracking import MlflowStore
    from .training import autotune
    from .training.data import load_dataset

    dev = resolve_device(device)
    data = load_dataset("mnist-5k")
    batch, steps, rounds = 128, (20 if quick else 40), (3 if quick else 5)
    max_rounds = 2 * rounds
    out: dict[str, Any] = {
        "device": str(dev),
        "host": host_identity(dev),
        "cpu": cpu_identity()[0],
        "cpu_flags": cpu_identity()[1],
        "batch_size": batch,
        "timed_steps": steps,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    variants = {
        autotune.name(c): {"precision": c[0], "memory_format": c[1]}
        for c in [(p, m) for p in autotune.PRECISIONS for m in autotune.LAYOUTS]
    }
    if not quick:
        variants["bf16+compile"] = {"precision": "bf16", "memory_format": "contiguous", "compile": True}
    elif not native_bf16(dev):
        # Without native bf16 (no AVX512-BF16/AMX, or an old GPU) torch emulates it several times slower than
        # fp32: the quick bench spends its minutes on what can win here; the full bench still measures it.
        out["skipped"] = {
            k: "no native bf16 on this device (emulated, slower than fp32); run the full bench to measure it"
            for k in variants
            if "bf16" in k
        }
        variants = {k: v for k, v in variants.items() if k not in out["skipped"]}
    base = _config(batch, steps + 10, str(dev), precision="fp32", memory_format="contiguous")
    ours = build_model(base, data.channels, data.image_size, data.num_classes).num_parameters
    if peer:  # before any measurement: without diffusers this is one line and exit 2, not a half-run bench
        from .peer import peer_config

        width, layers = peer_config(data.channels, data.image_size, data.num_classes, ours)
        out["peer"] = {"model": "diffusers UNet2DModel", "width": width, "layers_per_block": layers}
    # What `auto` becomes here: the training probe itself, uncached, on this bench's model and batch (its
    # timings are the probe's few steps; the speed-up it buys is measured below, in the same rounds as the rest).
    _progress("autotune probe (what precision and memory_format auto resolve to)")
    auto_config = _config(batch, steps, str(dev), precision="auto", memory_format="auto")
    _, record = autotune.resolve(auto_config, dev, None)
    out["auto_config"], out["auto_probe_seconds"] = record["choice"], record["seconds"]
    # Every round measures the bare loop and each variant back to back, and every ratio is taken within a
    # round: on a shared machine the load changes over minutes, and a ratio of two measurements taken
    # minutes apart measures the load, not the harness. The reported figures are medians over rounds.
    timings: dict[str, list[Timing]] = {name: [] for name in [BARE, *variants, *([PEER] if peer else [])]}
    with tempfile.TemporaryDirectory() as tmp:
        store = MlflowStore(f"sqlite:///{tmp}/mlflow.db")
        exp = store.experiment_id("bench")
        r = 0
        while r < rounds or (r < max_rounds and _unsettled(timings, rounds)):
            tag = f"round {r + 1}/{rounds}" if r < rounds else f"round {r + 1} (extra: rounds differ by > {SPREAD:.0%})"
            for name in round_order(list(timings), r):
                if name == BARE:
                    timings[name].append(bare_loop(data, base, steps))
                    _progress(f"{tag}: bare loop {timings[name][-1].images_per_second:.0f} img/s")
                    continue
                if name == PEER:
                    timings[name].append(_peer_timing(data, batch, steps, dev, ours))
                    _progress(f"{tag}: peer {timings[name][-1].images_per_second:.0f} img/s")
                    continue
                if f"{name}_error" in out:
                    continue
                config = _config(batch, steps + 10, str(dev), **variants[name])
                tracker = store.start_run(exp, f"bench-{name}-{r}", tags={ROLE: "bench"})
                try:
                    timings[name].append(harness_loop(data, config, tracker, Path(tmp) / f"{name}-{r}"))
                    _progress(f"{tag}: harness {name} {timings[name][-1].images_per_second:.0f} img/s")
                except Exception as err:  # noqa: BLE001 - e.g. torch.compile without a compiler
                    out[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
                tracker.finish()
            r += 1
    out["rounds"] = rounds = r
    harness = {k: v for k, v in timings.items() if k not in (BARE, PEER) and len(v) == rounds}
    ratios = {
        k: [h.images_per_second / b.images_per_second for h, b in zip(v, timings[BARE])] for k, v in harness.items()
    }
    ips = {k: median([t.images_per_second for t in v]) for k, v in timings.items() if len(v) == rounds}
    out["bare_images_per_second"] = ips[BARE]
    out["train_images_per_second"] = ips["fp32"]
    out["overhead_ratio"] = median(ratios["fp32"])
    out["overhead_ratio_range"] = [min(ratios["fp32"]), max(ratios["fp32"])]
    out["variants"] = {k: ips[k] for k in harness}
    out["speedups"] = {k: median(v) for k, v in ratios.items()}
    out["speedup_ranges"] = {k: [min(v), max(v)] for k, v in ratios.items()}
    best = max(out["speedups"], key=out["speedups"].get)
    out["best_config"], out["best_speedup"] = best, out["speedups"][best]
    out["auto_speedup"] = out["speedups"][out["auto_config"]]
    out["auto_speedup_range"] = out["speedup_ranges"][out["auto_config"]]
    out["auto_vs_best"] = out["auto_speedup"] / out["best_speedup"]  # 1.0: auto picked the fastest variant
    seconds = {k: batch / v for k, v in out["variants"].items()}

    flops = step_flops(data, base)
    out["gflop_per_image"] = flops / batch / 1e9
    peaks = {"fp32": matmul_peak(dev, torch.float32), "bf16": matmul_peak(dev, torch.bfloat16)}
    out["matmul_peak_gflops"] = peaks
    best_dtype = "bf16" if "bf16" in best else "fp32"
    achieved = flops / seconds[best] / 1e9
    out["achieved_gflops"] = achieved
    out["flop_utilization"] = achieved / peaks[best_dtype]
    out["fp32_flop_utilization"] = flops / seconds["fp32"] / 1e9 / peaks["fp32"]
    if peer:
        out["peer"].update(peer_comparison(data, flops, ours, timings[BARE], timings[PEER]))

    amp = torch.bfloat16 if out["auto_config"].startswith("bf16") else None  # sampling follows auto's choice
    _progress("sampling rates (DDPM-1000 takes longest)")
    rates = sampling_rates(data, base, 32 if quick else 128, dev, amp)
    out["samples_per_second"] = rates
    out["ddim50_vs_ddpm1000_speedup"] = rates["ddim50"] / rates["ddpm1000"]
    out["guidance_cost_ratio"] = rates["ddim50"] / rates["ddim50_guided"]
    _progress("FID/KID/precision/recall timing")
    out["fid_eval_seconds"] = fid_eval_seconds(data, 500 if quick else 2000, dev)
    out["fid_eval_samples"] = 500 if quick else 2000
    return out


def _peer_timing(data, batch: int, steps: int, device: torch.device, parameters: int) -> Timing:
    from .peer import peer_loop

    seconds, _ = peer_loop(data, batch, steps, device, parameters)
    return Timing(batch / seconds, seconds)


def peer_comparison(data, flops: float, parameters: int, bare: list[Timing], peer: list[Timing]) -> dict[str, Any]:
    """Achieved GFLOP/s of our UNet and of the peer, each in the tutorial loop, and ours / peer per round
    (above 1: ours does more arithmetic per second). FLOPs are torch's flop counter's for both."""
    from .peer import peer_model, peer_step_flops

    batch = round(bare[0].images_per_second * bare[0].seconds_per_step)
    peer_flops = peer_step_flops(data, batch, parameters)
    ours = [flops / t.seconds_per_step / 1e9 for t in bare]
    theirs = [peer_flops / t.seconds_per_step / 1e9 for t in peer]
    ratios = [o / p for o, p in zip(ours, theirs)]
    peer_parameters = sum(
        p.numel() for p in peer_model(data.channels, data.image_size, data.num_classes, parameters).parameters()
    )
    return {
        "parameters": {"ours": parameters, "peer": peer_parameters},
        "gflop_per_image": {"ours": flops / batch / 1e9, "peer": peer_flops / batch / 1e9},
        "images_per_second": {
            "ours": median(t.images_per_second for t in bare),
            "peer": median(t.images_per_second for t in peer),
        },
        "gflops": {"ours": median(ours), "peer": median(theirs)},
        "ratio": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def _unsettled(timings: dict[str, list[Timing]], rounds: int) -> bool:
    """Whether any variant's speed-up over the bare loop still spreads by more than ``SPREAD`` over the rounds."""
    bare = [t.images_per_second for t in timings[BARE]]
    for name, ts in timings.items():
        if name != BARE and len(ts) == len(bare) >= rounds:
            if spread([t.images_per_second / b for t, b in zip(ts, bare)]) > SPREAD:
                return True
    return False


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("device", f"{r['device']}: {r['host']}"),
        ("rounds (figures are medians)", str(r["rounds"])),
        ("bare loop, fp32 eager", f"{r['bare_images_per_second']:.0f} img/s"),
    ]
    rows += [
        (
            f"harness, {k}",
            f"{v:.0f} img/s ({r['speedups'][k]:.2f}x bare, rounds "
            f"{r['speedup_ranges'][k][0]:.2f}-{r['speedup_ranges'][k][1]:.2f})",
        )
        for k, v in r["variants"].items()
    ]
    rows += [(f"harness, {k[: -len('_error')]}", f"failed: {v}") for k, v in r.items() if k.endswith("_error")]
    rows += [(f"harness, {k}", f"skipped: {why}") for k, why in r.get("skipped", {}).items()]
    rows += [
        ("overhead ratio (harness fp32 / bare)", f"{r['overhead_ratio']:.3f}"),
        ("best configuration", f"{r['best_config']}: {r['best_speedup']:.2f}x bare"),
        (
            "auto resolves to (probe)",
            f"{r['auto_config']}: {r['auto_speedup']:.2f}x bare ({100 * r['auto_vs_best']:.0f}% of the best)",
        ),
        ("training step", f"{r['gflop_per_image']:.3f} GFLOP per image"),
        (
            "matmul peak fp32 / bf16",
            f"{r['matmul_peak_gflops']['fp32']:.0f} / {r['matmul_peak_gflops']['bf16']:.0f} GFLOP/s",
        ),
        (
            "achieved (best) / utilization",
            f"{r['achieved_gflops']:.0f} GFLOP/s, {100 * r['flop_utilization']:.0f}% of peak",
        ),
        ("fp32 utilization", f"{100 * r['fp32_flop_utilization']:.0f}% of fp32 peak"),
    ]
    rows += [(f"sampling {k}", f"{v:.1f} samples/s") for k, v in r["samples_per_second"].items()]
    rows += [
        ("DDIM-50 vs DDPM-1000", f"{r['ddim50_vs_ddpm1000_speedup']:.1f}x faster"),
        ("guidance cost (guided / unguided)", f"{r['guidance_cost_ratio']:.2f}x"),
        (f"FID+KID+PR of {r['fid_eval_samples']} samples", f"{r['fid_eval_seconds']:.1f} s"),
    ]
    if "peer" in r and "ratio" in r["peer"]:
        p = r["peer"]
        rows += [
            (
                "peer: diffusers UNet2DModel, tutorial loop",
                f"{p['parameters']['peer']:,} vs our {p['parameters']['ours']:,} parameters, "
                f"{p['images_per_second']['peer']:.0f} vs {p['images_per_second']['ours']:.0f} img/s",
            ),
            (
                "achieved GFLOP/s ours / peer",
                f"{p['gflops']['ours']:.0f} / {p['gflops']['peer']:.0f} = {p['ratio']:.2f}x "
                f"(rounds {p['ratio_range'][0]:.2f}-{p['ratio_range'][1]:.2f})",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(quick: bool, json_path: str | None, device: str, peer: bool = False) -> int:
    from .peer import PeerUnavailable

    try:
        result = run_bench(quick=quick, device=device, peer=peer)
    except PeerUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return 0
