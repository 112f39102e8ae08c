"""The metric histories of training runs as tidy tables: the periodic evaluations' curves, the training loss,
and the loss by timestep bucket (one MLflow history request per run and key)."""

from __future__ import annotations

import pandas as pd

from harness.config.schema import CURVE_METRICS, NUM_BUCKETS, bucket_key, eval_key
from harness.orchestration.tracking import MlflowStore

CURVE_COLUMNS = ["run_id", "arm", "arm_label", "seed", "step", "setting", "metric", "value"]
LOSS_COLUMNS = ["run_id", "arm", "arm_label", "seed", "step", "loss"]
BUCKET_COLUMNS = ["run_id", "arm", "arm_label", "seed", "step", "bucket", "loss"]


def histories(store: MlflowStore, train_runs: list, runs: pd.DataFrame, settings: list[str]):
    """(curves, loss, buckets) from the metric histories of the training runs."""
    curves, loss, buckets = [], [], []
    by_run = runs.set_index("run_id")
    for r in train_runs:
        rid = r.info.run_id
        ident = {
            "run_id": rid,
            "arm": by_run.at[rid, "arm"],
            "arm_label": by_run.at[rid, "arm_label"],
            "seed": by_run.at[rid, "seed"],
        }
        keys = set(r.data.metrics)
        for label in settings:
            for metric in CURVE_METRICS:
                key = eval_key(label, metric)
                if key in keys:
                    curves += [
                        {**ident, "step": m.step, "setting": label, "metric": metric, "value": m.value}
                        for m in store.client.get_metric_history(rid, key)
                    ]
        if "train/loss" in keys:
            loss += [
                {**ident, "step": m.step, "loss": m.value} for m in store.client.get_metric_history(rid, "train/loss")
            ]
        for b in range(NUM_BUCKETS):
            if bucket_key(b) in keys:
                buckets += [
                    {**ident, "step": m.step, "bucket": b, "loss": m.value}
                    for m in store.client.get_metric_history(rid, bucket_key(b))
                ]
    curves = pd.DataFrame(curves, columns=CURVE_COLUMNS).sort_values(["run_id", "setting", "metric", "step"])
    loss = pd.DataFrame(loss, columns=LOSS_COLUMNS).sort_values(["run_id", "step"])
    buckets = pd.DataFrame(buckets, columns=BUCKET_COLUMNS).sort_values(["run_id", "bucket", "step"])
    return (curves.reset_index(drop=True), loss.reset_index(drop=True), buckets.reset_index(drop=True))
