"""Fixture tables for the report tests (no MLflow): an ``AblationData`` with known answers."""

import re

import numpy as np
import pandas as pd
from PIL import Image

from analysis.grids import GRID_COLUMNS
from analysis.load import (
    BUCKET_COLUMNS,
    CURVE_COLUMNS,
    EVAL_COLUMNS,
    LOSS_COLUMNS,
    RUN_COLUMNS,
    AblationData,
)
from harness.config import SamplerSetting

S = "ddim-50-eta0-w0"
LABEL = re.compile(r"(\w+)-(\d+)-eta([\d.]+)-w([\d.]+)(?:-cg([\d.]+))?")
STEPS = (500, 1000, 1500, 2000)
SIZE = (280_177, 0.0959)  # the quick profiles' UNet: parameters, GFLOPs per image


def fixture_data(
    tmp_path,
    final: dict,
    *,
    axis="diffusion.schedule",
    rec_at=None,
    conditional=False,
    question="Does cosine beat linear?",
    final_loss=None,
    pngs=True,
    sizes=None,
    steps_per_epoch=None,
) -> AblationData:
    """``final[(arm, setting)] = {"fid": [per seed], ...}``; ``rec_at[arm]``: step where recognizability hits 0.8;
    ``final_loss[arm]``: per seed (default 0.03 + 0.001 * seed in every arm); ``pngs``: write sample grids;
    ``sizes[arm]``: (parameters, GFLOPs per image) of its network (default SIZE in every arm);
    ``steps_per_epoch``: the runs' configs speak in epochs of that many steps (default: in steps)."""
    arms = list(dict.fromkeys(a for a, _ in final))
    settings = list(dict.fromkeys(s for _, s in final))
    n_seeds = len(next(iter(final.values()))["fid"])
    runs, evals, curves, loss, buckets, grids = [], [], [], [], [], []
    rng = np.random.default_rng(0)
    for arm in arms:
        tag = f"{axis}={arm}" if arm != "base" else "base"
        for seed in range(n_seeds):
            rid = f"{arm}-{seed}"
            runs.append(
                {
                    "run_id": rid,
                    "config_hash": f"h{rid}",
                    "arm": tag,
                    "arm_label": arm,
                    "seed": seed,
                    "status": "FINISHED",
                    "seconds": 600.0,
                    "steps": 2000,
                    "batch_size": 64,
                    "images_seen": 128000,
                    "steps_per_epoch": steps_per_epoch,
                    "num_samples": 500,
                    "dataset": "mnist-5k",
                    "process": arm if axis == "diffusion.process" else "ddpm",
                    "device": "cpu",
                    "conditional": conditional,
                    "recognizability_threshold": 0.9,
                    "recognizable_fraction": 0.8,
                    "classifier_accuracy": 0.988,
                    "final_loss": final_loss[arm][seed] if final_loss else 0.03 + 0.001 * seed,
                    "images_per_second": 200.0,
                    "num_parameters": (sizes or {}).get(arm, SIZE)[0],
                    "gflops_per_image": (sizes or {}).get(arm, SIZE)[1],
                    "has_history": True,
                    "checkpoint": str(tmp_path / rid / "checkpoint.pt"),
                    "commit": "abc123",
                    "code_version": "v1",
                    "parent_run_id": "parent",
                    axis: arm,
                }
            )
            for setting in [s for s in settings if (arm, s) in final]:  # absent: not evaluated on this arm
                m = {k: v[seed] for k, v in final[(arm, setting)].items()}
                sampler, steps, eta, w, cg = LABEL.match(setting).groups()
                evals.append(
                    {
                        "run_id": rid,
                        "eval_run_id": f"e{rid}{setting}",
                        "config_hash": f"h{rid}",
                        "arm": tag,
                        "arm_label": arm,
                        "seed": seed,
                        "setting": setting,
                        # every field of the one schema, as the loader writes them
                        **SamplerSetting(
                            sampler=sampler,
                            steps=int(steps),
                            eta=float(eta),
                            guidance=float(w),
                            classifier_scale=float(cg or 0),
                        ).model_dump(),
                        "commit": "abc123",
                        "code_version": "e1",
                        "step": 2000,
                        "seconds": 5.0,
                        "kid": 0.01,
                        "precision": 0.7,
                        "recall": 0.6,
                        "recognizability": 0.9,
                        "nfe": float(steps),
                        "sample_seconds": 1.0,
                        "num_generated": 500.0,
                        "num_reference": 5000.0,
                        "fid_inception_unavailable": "no weights offline",
                        axis: arm,
                        **m,
                    }
                )
                for step in STEPS:
                    rec = 0.9 if rec_at and rec_at.get(arm) is not None and step >= rec_at[arm] else 0.3
                    for metric, value in (("fid", 100.0 / step * 50), ("recognizability", rec)):
                        curves.append(
                            {
                                "run_id": rid,
                                "arm": tag,
                                "arm_label": arm,
                                "seed": seed,
                                "step": step,
                                "setting": setting,
                                "metric": metric,
                                "value": value,
                                axis: arm,
                            }
                        )
                    if not pngs:
                        continue
                    path = tmp_path / rid / "grids" / setting / f"step_{step:07d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (62, 122, 3), dtype=np.uint8)).save(path)
                    grids.append(
                        {
                            "run_id": rid,
                            "arm": tag,
                            "arm_label": arm,
                            "seed": seed,
                            "setting": setting,
                            "step": step,
                            "path": str(path),
                        }
                    )
            for step in range(5, 2001, 5):
                loss.append(
                    {
                        "run_id": rid,
                        "arm": tag,
                        "arm_label": arm,
                        "seed": seed,
                        "step": step,
                        "loss": 1.0 / np.sqrt(step) + 0.01 * rng.standard_normal(),
                    }
                )
            for step in range(100, 2001, 100):
                for b in range(10):
                    buckets.append(
                        {
                            "run_id": rid,
                            "arm": tag,
                            "arm_label": arm,
                            "seed": seed,
                            "step": step,
                            "bucket": b,
                            "loss": 0.5 / (b + 1),
                        }
                    )
    axes = [axis] if arms != ["base"] else []
    frame = lambda rows, cols: pd.DataFrame(rows, columns=cols + axes)  # noqa: E731
    return AblationData(
        experiment="fixture",
        question=question,
        profile="quick",
        axes=axes,
        arms=arms,
        settings=settings,
        runs=frame(runs, RUN_COLUMNS),
        evals=frame(evals, EVAL_COLUMNS),
        curves=frame(curves, CURVE_COLUMNS),
        loss=pd.DataFrame(loss, columns=LOSS_COLUMNS),
        buckets=pd.DataFrame(buckets, columns=BUCKET_COLUMNS),
        grids=pd.DataFrame(grids, columns=GRID_COLUMNS),
        parent_run_id="parent",
        parent_status="FINISHED",
        planned_settings={
            f"h{a}-{seed}": [s for s in settings if (a, s) in final] for a in arms for seed in range(n_seeds)
        },
    )


def log_trained_model(store, exp: str, config, *, seed: int, tags: dict | None = None, parent=None, evals=None) -> str:
    """One trained model as every caller logs it (``harness run``, ``harness train``, a sweep's seed or
    confirmation): a run of role train with ``config.flat()`` as params and the shared tags (``tags`` adds
    harness.arm, harness.study, harness.trial ...), and per ``evals[setting] = {metric: value}`` a child of
    role eval with the setting's fields as params. Returns the training run's id."""
    from harness.config.schema import ARM, HASH, ROLE, SEED, SPEC

    tags = {ROLE: "train", HASH: f"{config.train_hash()}-{seed}", SPEC: exp, ARM: "{}", SEED: seed, **(tags or {})}
    run = store.start_run(exp, f"seed-{seed}", tags, parent=parent)
    run.log_params({k: str(v) for k, v in config.flat().items()})
    run.log_metrics({"train/final_loss": 0.05})
    for setting, metrics in (evals or {}).items():
        ev = store.start_run(exp, "eval", {ROLE: "eval", HASH: tags[HASH]}, parent=run.run_id)
        ev.log_params(setting.model_dump())
        ev.log_metrics(metrics)
        ev.finish("FINISHED")
    run.finish("FINISHED")
    return run.run_id
