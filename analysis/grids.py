"""Sample grids of an experiment: the PNGs on this machine, else downloaded from the training runs.

A run trained or evaluated on another machine has no grids here; its training run holds them as logged
images, and this machine's run directory becomes their cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.evaluation.evaluate import grid_key
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore

GRID_COLUMNS = ["run_id", "arm", "arm_label", "seed", "setting", "step", "path"]

STEP_PNG = re.compile(r"step_(\d+)\.png$")
# How MLflow names a logged image (``log_image(grid, key, step)``): "/" in the key becomes "~" ("#" before
# MLflow 3), fields are joined by "+" ("%" before), and a "+compressed.webp" thumbnail sits beside each PNG.
LOGGED_GRID = re.compile(
    rf"^images/{re.escape(grid_key('').rstrip('/'))}[~#](?P<label>.+?)[+%]step[+%](?P<step>\d+)"
    r"[+%]timestamp[+%](?P<ts>\d+)[+%][0-9a-f-]+\.png$"
)


def grids_table(store: MlflowStore, experiment: str, runs: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """Sample grids, one row per (run, setting, step): the PNGs the evaluator saved beside the checkpoint,
    ``<run dir>/grids/<setting>/step_NNNNNNN.png``. Where this machine has none for a setting (the run was
    trained or evaluated elsewhere), the grids logged to the training run are downloaded into this
    machine's run directory, which is a cache of the store: the next report finds them there."""
    rows = []
    for run in runs.itertuples():
        local = store_root(store.uri) / "checkpoints" / experiment / run.config_hash / "grids"
        dirs = [Path(run.checkpoint).parent / "grids", local] if run.checkpoint else [local]
        logged = None
        for label in settings:
            pngs = next((found for d in dirs if (found := sorted((d / label).glob("step_*.png")))), [])
            if not pngs:
                logged = _logged_grids(store, run.run_id) if logged is None else logged
                pngs = [
                    store.download(run.run_id, artifact, local / label / f"step_{step:07d}.png")
                    for step, artifact in sorted(logged.get(label, {}).items())
                ]
            for png in pngs:
                if png is not None and (m := STEP_PNG.search(png.name)):
                    rows.append(
                        {
                            "run_id": run.run_id,
                            "arm": run.arm,
                            "arm_label": run.arm_label,
                            "seed": run.seed,
                            "setting": label,
                            "step": int(m.group(1)),
                            "path": str(png),
                        }
                    )
    return pd.DataFrame(rows, columns=GRID_COLUMNS)


def _logged_grids(store: MlflowStore, run_id: str) -> dict[str, dict[int, str]]:
    """{setting label: {step: artifact path}} of the grids logged to a training run; the newest per step."""
    found: dict[str, dict[int, tuple[int, str]]] = {}
    for path in store.artifacts(run_id, "images"):
        if m := LOGGED_GRID.match(path):
            steps = found.setdefault(m["label"], {})
            ts, step = int(m["ts"]), int(m["step"])
            if step not in steps or ts > steps[step][0]:
                steps[step] = (ts, path)
    return {label: {step: p for step, (_, p) in steps.items()} for label, steps in found.items()}
