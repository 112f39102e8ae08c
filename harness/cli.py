"""The ``harness`` command. Bad input is one line on stderr and exit status 2; nothing is written."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .commands import TRAIN_EXPERIMENT, cmd_run, cmd_train, cmd_validate
from .config import ConfigError
from .config.spec import DEFAULT_PROFILE
from .glossary import glossary_text
from .orchestration.provenance import REUSE_POLICIES

REPO = Path(__file__).resolve().parents[1]


def _overrides(items: list[str]) -> dict:
    from .config import parse_overrides

    return parse_overrides(items)


def cmd_report(args) -> int:
    """An ablation report, or a sweep report when the spec has a search section or the experiment's newest
    parent run is a sweep's. Nothing to report on: one line, exit 2, nothing written."""
    from .orchestration.tracking import MlflowStore
    from .tracker import StoreUnavailable

    if args.table:
        if args.spec or args.experiment:
            raise ConfigError("report: give --table FILE or a SPEC / --experiment, not both (--spec SPEC: a question)")
        from analysis.results import table_report_command

        table_report_command(args.table, args.out, args.question_spec, REPO / "reports")
        return 0
    if not args.spec and not args.experiment:
        raise ConfigError("report: give a SPEC file, --experiment NAME or --table FILE")
    name, study, question, sweep, literature = args.experiment, None, None, False, []
    if args.spec:
        from .sweeps.search import is_sweep_spec, load_sweep

        if is_sweep_spec(args.spec):
            loaded = load_sweep(args.spec, args.profile)
            name, study, question, sweep = loaded.spec.name, loaded.study_name, loaded.spec.question, True
            literature = loaded.spec.literature
        else:
            from .config.spec import load_spec

            name = load_spec(args.spec).name
    try:
        store = MlflowStore(args.tracking_uri)
        store.check()
    except StoreUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from analysis.sweep_load import report_kind

    out = Path(args.out) if args.out else REPO / "reports" / name
    _close_dead_launches(store, name)
    try:
        kind = report_kind(store, name, "sweep" if sweep else "ablation" if args.spec else None)
        if kind == "sweep":
            from analysis.sweep_report import log_sweep_report, write_sweep_report

            paths, data = write_sweep_report(
                store,
                name,
                out,
                study=study,
                profile=None if sweep else args.profile,
                question=question,
                literature=literature,
            )
            run_id = log_sweep_report(store, data, paths)
        else:
            from analysis.report import log_report, write_report

            paths = write_report(store, name, out, spec_path=args.spec, profile=args.profile)
            run_id = log_report(store, name, paths)
    except LookupError as err:  # NothingToReport, or no harness run of --profile
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {paths.html}\n        {paths.md}\n(also logged to run {run_id})")
    return 0


def _close_dead_launches(store, name: str) -> None:
    """A launch killed outright (SIGKILL, a lost node) leaves its parent run RUNNING; the report is often the
    next command, so it closes such parents (their launch lock is free) before reading them."""
    from .orchestration.runner import close_orphaned_parents
    from .orchestration.store import store_root

    experiment = store.client.get_experiment_by_name(name)
    if experiment is not None:
        close_orphaned_parents(store, experiment.experiment_id, store_root(store.uri))


def cmd_export(args) -> int:
    from analysis.results import export_command

    return export_command(args.spec, args.experiment, args.profile, args.out, args.tracking_uri)


def cmd_sweep(args) -> int:
    """0 when the study holds n_trials finished trials, 1 otherwise, 2 for bad input."""
    from .sweeps.sweep import run_sweep
    from .tracker import StoreUnavailable
    from .training.data import DataUnavailable

    try:
        overrides = _overrides(args.set)  # a key given twice is an error
        result = run_sweep(
            args.spec,
            profile=args.profile,
            workers=args.workers,
            storage=args.storage,
            executor=args.executor,
            tracking_uri=args.tracking_uri,
            overrides=overrides,
            allow_local_store=args.allow_local_store,
        )
    except (ConfigError, DataUnavailable, StoreUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = result.counts
    print(
        f"{result.study_name}: {result.finished}/{result.n_trials} finished ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items()))
        + f"); parent run {result.parent_run_id}"
    )
    for t in result.best:
        values = "  ".join(f"{m}={v:.4g}" for (m, _), v in zip(result.objective, t.values or []))
        print(f"  best trial {t.number}: {values}  {t.params}  (config {t.config_hash}, run {t.run_id})")
    search_value = {t.number: (t.values or [math.nan])[0] for t in result.trials}
    metric = result.objective[0][0]
    for rank in sorted({c.rank for c in result.confirmed}):
        mine = [c for c in result.confirmed if c.rank == rank]
        seeds = ", ".join(f"{c.values[0]:.4g} (seed {c.seed})" for c in mine)
        mean = sum(c.values[0] for c in mine) / len(mine)
        print(
            f"  confirmed #{rank} trial {mine[0].trial}: {metric} {mean:.4g} mean of {len(mine)} fresh seed(s): "
            f"{seeds}; in the search {search_value.get(mine[0].trial, math.nan):.4g}"
        )
    if result.confirmed:
        print(f"  the answer, with confidence intervals: harness report {args.spec}")
    for err in result.worker_errors:
        print(f"  worker error: {err}", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_bench(args) -> int:
    from .tools.bench import main as bench_main

    return bench_main(args.quick, args.json, args.device, args.peer)


def cmd_score(args) -> int:
    from .evaluation.score import main as score_main

    return score_main(args.images, args.dataset, args.json)


ALLOW_LOCAL_STORE = (
    "with --executor slurm: accept a SQLite tracking store and a journal-file or SQLite Optuna storage, because "
    "this file system is not shared between nodes (on NFS their locks do not hold and concurrent jobs corrupt them)"
)


EPILOG = f"""words (docs/glossary.md):
{glossary_text()}

examples:
  harness run experiments/ablation-schedules.yaml --profile smoke
  harness run -m diffusion.schedule=linear,cosine --seeds 0,1 --profile smoke
  harness report experiments/ablation-schedules.yaml
"""

RUN_DESCRIPTION = """Run an ablation: every arm x seed trained once (a finished one is reused), each evaluated with
every setting, all tracked in MLflow. The first line printed names the profile and the estimated time.

  harness run SPEC [--profile P]                         a spec file
  harness run -m KEY=VALUES [KEY=VALUES ...] [SPEC]      the same without a file (over SPEC's base if given)
      diffusion.schedule=linear,cosine   a sweep: one axis      train.lr=1e-3         a fixed value
      train.steps=range(500,2001,500)    500, 1000, 1500, 2000  evaluate.steps=10,20  sampler settings
      eval.num_samples=200               brackets and quotes keep commas: model.channel_mult=[1,2] is one value
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Ablation studies of DDPM-family diffusion models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate one configuration")
    t.add_argument("config", nargs="?", help="YAML file with data/model/diffusion/train/eval sections")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field, e.g. train.steps=200"
    )
    t.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    t.add_argument("--run-dir", metavar="DIR", help="checkpoints and grids (default: runs/<config hash>)")
    t.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    t.add_argument("--experiment", metavar="NAME", help=f"MLflow experiment to log to (default: {TRAIN_EXPERIMENT})")
    t.add_argument("--no-track", action="store_true", help="log nothing to the tracking store")
    t.add_argument(
        "--force",
        action="store_true",
        help="retrain a finished run of this config; a checkpoint of another config in the run dir is moved aside",
    )
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check specs without running anything")
    v.add_argument("specs", nargs="+")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser(
        "run",
        help="run an ablation: a spec, or -m key=a,b ...; train every arm and seed, evaluate, track",
        description=RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("spec", nargs="?", help="a spec file (with -m: the spec whose base, profiles and axes -m extends)")
    r.add_argument(
        "-m",
        "--multirun",
        nargs="+",
        metavar="KEY=VALUES",
        help="an ablation without a file, in Hydra's override grammar: key=value fixes a field, key=a,b or "
        "key=range(1,4) sweeps it (one axis each), evaluate.steps=10,20 sweeps a sampler setting",
    )
    r.add_argument("--seeds", metavar="0,1,2", help="with -m: the seeds of every arm (default: 0)")
    r.add_argument(
        "--name",
        help="with -m: the experiment name in MLflow (default: derived from the overrides that change what is "
        "trained, e.g. cli-diffusion.schedule-linear-cosine; seeds and evaluate.* extend the same experiment)",
    )
    r.add_argument("--question", help="with -m: the question the report answers (default: derived from the sweeps)")
    r.add_argument("--print-spec", action="store_true", help="with -m: write the equivalent spec YAML and run nothing")
    r.add_argument(
        "--profile",
        help=f"a profile of the spec (smoke, quick, full, ...); default: the spec's {DEFAULT_PROFILE} profile where "
        "it has one, else its base configuration",
    )
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base field")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    r.add_argument("--executor", choices=["local", "slurm"], default="local")
    r.add_argument("--allow-local-store", action="store_true", help=ALLOW_LOCAL_STORE)
    r.add_argument(
        "--force",
        action="store_true",
        help="retrain jobs that already finished; a checkpoint of another config in a run dir is moved aside",
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan and what is already done, run nothing")
    r.add_argument(
        "--reuse",
        choices=REUSE_POLICIES,
        default="same-code",
        help="same-code (default): finished runs made by other harness code are retrained and re-evaluated; "
        "any: reuse them",
    )
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="write the report that answers a spec's question from MLflow")
    rep.add_argument("spec", nargs="?", help="the spec file (its name is the experiment)")
    rep.add_argument("--experiment", help="an experiment name instead of a spec file")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    rep.add_argument("--out", metavar="DIR", help="output directory (default: reports/<experiment>)")
    rep.add_argument(
        "--profile",
        help="the newest harness run of this profile; a sweep's: its study (default with a sweep SPEC: the spec's "
        "default profile; otherwise the newest run or study)",
    )
    rep.add_argument("--table", metavar="FILE", help="a results table (.csv or .parquet) instead of MLflow")
    rep.add_argument("--spec", dest="question_spec", metavar="SPEC", help="with --table: the spec with the question")
    rep.set_defaults(func=cmd_report)

    ex = sub.add_parser("export", help="write an experiment's results table (CSV or Parquet) for pandas")
    ex.add_argument("spec", nargs="?", help="the spec file (its name is the experiment)")
    ex.add_argument("--experiment", help="an experiment name instead of a spec file")
    ex.add_argument("--profile", help="the newest harness run of this profile (default: the newest of any)")
    ex.add_argument("--out", required=True, metavar="FILE", help="results.csv or results.parquet")
    ex.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    ex.set_defaults(func=cmd_export)

    sw = sub.add_parser("sweep", help="an Optuna sweep over a spec's search section, trials tracked in MLflow")
    sw.add_argument("spec", help="a sweep spec: an ablation spec with a search section")
    sw.add_argument("--profile", help="a profile of the spec (smoke, quick, full, ...)")
    sw.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes sharing the study")
    sw.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: an RDB URL (postgresql+psycopg://...) for "
        "workers on several machines, or a journal file path (default: <store>/optuna/<spec>.log)",
    )
    sw.add_argument("--executor", choices=["local", "slurm"], default="local")
    sw.add_argument("--allow-local-store", action="store_true", help=ALLOW_LOCAL_STORE)
    sw.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/mlflow.db)")
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base field (train.steps=200) or a search field (search.n_trials=40)",
    )

    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="measure training, sampling and evaluation speed on this machine")
    b.add_argument(
        "--quick", action="store_true", help="fewer rounds, steps and samples (about 15 minutes on 2 CPU cores)"
    )
    b.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    b.add_argument("--device", default="auto")
    b.add_argument(
        "--peer",
        action="store_true",
        help="also time diffusers' UNet2DModel of the same size (pip install -e '.[peer]')",
    )
    b.set_defaults(func=cmd_bench)

    sc = sub.add_parser("score", help="score an image set (.npy, .npz, .pt or a folder of PNGs) against a data set")
    sc.add_argument("images", help="(N, H, W) or (N, C, H, W) images, uint8 in [0, 255] or float in [0, 1]")
    sc.add_argument("--dataset", default="mnist-5k", help="the reference data set (default: mnist-5k)")
    sc.add_argument("--json", metavar="PATH", help="write the scores as JSON")
    sc.set_defaults(func=cmd_score)
    return p


def main(argv: list[str] | None = None) -> int:
    from .orchestration.environ import check_environment

    args = build_parser().parse_args(argv)
    try:
        check_environment()  # a mistyped HARNESS_* name or a wrong value: one line before anything runs
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a launch says what finished (stop.Interrupted); else the generic line
        print(str(err) or "interrupted; the last checkpoint is kept and the run resumes from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
