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
from pathlib import Path
from statistics import median
from typing import Any

import torch

from ..config.schema import ROLE
from ..device import cpu_identity, host_identity, native_bf16, resolve_device
from ..orchestration.placement import autotune_cache, describe_record
from ..training.train import build_model
from .measure import (
    Timing,
    _config,
    bare_loop,
    fid_eval_seconds,
    harness_loop,
    matmul_peak,
    sampling_rates,
    step_extras_ms,
    step_flops,
)


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


BARE = "bare"
PEER = "peer"  # diffusers' UNet2DModel of the same size in the same loop (harness.tools.peer), with --peer


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


AUTO_TOLERANCE = 0.05  # auto's choice slower than the best variant of the same rounds by more: the bench fails
SPREAD = 0.10  # rounds disagreeing by more than this (max - min over the median) earn more rounds


def spread(ratios: list[float]) -> float:
    return (max(ratios) - min(ratios)) / median(ratios)


def run_bench(*, quick: bool = False, device: str = "auto", peer: bool = False) -> dict[str, Any]:
    from ..orchestration.tracking import MlflowStore
    from ..training import autotune
    from ..training.data import load_dataset

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
        from .peer import diffusers_module, peer_config

        diffusers_module()  # peer_config is cached: it may not import diffusers again
        width, layers = peer_config(data.channels, data.image_size, data.num_classes, ours)
        out["peer"] = {"model": "diffusers UNet2DModel", "width": width, "layers_per_block": layers}
    # What `auto` becomes here: the training probe itself, uncached, on this bench's model and batch (its
    # timings are the probe's few steps; the speed-up it buys is measured below, in the same rounds as the rest).
    _progress("autotune probe (what precision and memory_format auto resolve to)")
    auto_config = _config(batch, steps, str(dev), precision="auto", memory_format="auto")
    _, record = autotune.resolve(auto_config, dev, None)
    out["auto_config"], out["auto_probe_seconds"] = record["choice"], record["seconds"]
    out["auto_probe"] = describe_record(record)
    _progress(out["auto_probe"])
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
        # Where an overhead would go, piece by piece, on the same model (and into the same kind of store).
        tracker = store.start_run(exp, "bench-extras", tags={ROLE: "bench"})
        out["step_extras_ms"] = step_extras_ms(data, base, tracker)
        tracker.finish()
    out["rounds"] = rounds = r
    harness = {k: v for k, v in timings.items() if k not in (BARE, PEER) and len(v) == rounds}
    ratios = {
        k: [h.images_per_second / b.images_per_second for h, b in zip(v, timings[BARE])] for k, v in harness.items()
    }
    ips = {k: median([t.images_per_second for t in v]) for k, v in timings.items() if len(v) == rounds}
    out["bare_images_per_second"] = ips[BARE]
    out["bare_step_ms"] = 1000 * batch / ips[BARE]
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
    out["auto_fail"] = int(out["auto_vs_best"] < 1 - AUTO_TOLERANCE)
    if out["auto_fail"]:
        _progress(auto_failure(out))
    # These rounds time every variant more carefully than the probe: the cache entry for this model becomes them.
    per_round = {k: [batch / t.images_per_second for t in timings[k]] for k in harness}
    refreshed = autotune.refresh(auto_config, dev, autotune_cache(), per_round)
    if refreshed is not None:
        out["autotune_refreshed"] = describe_record(refreshed) + (
            "" if refreshed["settled"] else " (rounds disagree: the cache entry was left as it was)"
        )
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


def auto_failure(r: dict[str, Any]) -> str:
    return (
        f"FAIL: auto resolved to {r['auto_config']} at {100 * r['auto_vs_best']:.0f}% of the best variant "
        f"({r['best_config']}) in the same rounds, below {100 * (1 - AUTO_TOLERANCE):.0f}% (auto_fail = 1)"
    )


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
        (
            "harness extras per step",
            ", ".join(f"{k} {v:.2f} ms" for k, v in r["step_extras_ms"].items() if not k.startswith("mlflow"))
            + f" (bare step {r['bare_step_ms']:.0f} ms)",
        ),
        ("MLflow per log interval", f"{r['step_extras_ms']['mlflow_per_interval']:.1f} ms (once per log_every steps)"),
        ("best configuration", f"{r['best_config']}: {r['best_speedup']:.2f}x bare"),
        (
            "auto resolves to (probe)",
            f"{r['auto_config']}: {r['auto_speedup']:.2f}x bare ({100 * r['auto_vs_best']:.0f}% of the best)"
            + (", FAIL" if r["auto_fail"] else ""),
        ),
        ("the probe", r["auto_probe"]),
        *[("autotune cache, from these rounds", r[k]) for k in ["autotune_refreshed"] if k in r],
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
    if result["auto_fail"]:
        print(f"error: {auto_failure(result)}", file=sys.stderr)
        return 1
    return 0
