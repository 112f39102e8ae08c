"""The bodies of ``harness train``, ``harness validate`` and ``harness run`` (``cli.py`` holds the parser).

``harness run`` takes a spec file or ``-m`` overrides (``config.overrides``); both become one ``Spec`` and go
through ``spec.make_plan``, so a command line and the YAML ``--print-spec`` writes for it are the same plan.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from .config import ConfigError, load_config
from .config.schema import METRICS

REPO = Path(__file__).resolve().parents[1]
TRAIN_EXPERIMENT = "harness-train"  # where `harness train` logs unless --experiment says otherwise
MULTIRUN_SOURCE = "harness run -m"  # what error lines of a -m spec name as their source


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_train(args) -> int:
    """One configuration, trained and evaluated as a job of its own experiment (``harness.orchestration.jobs``):
    tracked like any run of ``harness run``, reused or resumed the same way; ``--no-track`` logs nothing."""
    from .device import resolve_device
    from .orchestration.memory import check as check_memory
    from .orchestration.mlflow_ui import run_url, ui_server
    from .orchestration.placement import autotune_cache, describe_record
    from .orchestration.single import train_tracked, train_untracked
    from .orchestration.tracking import MlflowStore
    from .tracker import StoreUnavailable
    from .training.autotune import resolve
    from .training.checkpoint import CheckpointError
    from .training.data import DataUnavailable
    from .training.train import NonFiniteLoss

    config = load_config(args.config, args.set)
    check_memory([(args.config or "--set", config)], resolve_device(config.train.device), 1)  # before the probe
    config, record = resolve(config, resolve_device(config.train.device), autotune_cache())
    if record is not None and record.get("seconds"):
        print(describe_record(record))
    run_dir = Path(args.run_dir) if args.run_dir else REPO / "runs" / config.train_hash()
    try:
        if args.no_track:
            print(f"config {config.train_hash()}  run dir {run_dir}")
            summary, evals, where = train_untracked(config, run_dir, force=args.force), None, None
        else:
            store = MlflowStore(args.tracking_uri)  # unreachable: one line, exit 2
            store.check()
            experiment = args.experiment or TRAIN_EXPERIMENT
            print(f"config {config.train_hash()}  run dir {run_dir}  tracking {store.uri}")
            out = train_tracked(config, run_dir, store, experiment, force=args.force)
            summary, evals = out.summary, out.evals
            where = f"tracked: run {out.run_id} in experiment {experiment!r} of {store.uri}\n  " + run_url(
                ui_server(store.uri), store.experiment_id(experiment), out.run_id
            )
            if out.status != "trained":
                where = f"nothing to train: a finished run of this config exists ({out.status}); " + where
    # A lost store: the checkpoint resumes the run later. A checkpoint of another config or architecture in the
    # run dir, or one that cannot be moved aside: the user's to resolve (--force, another --run-dir).
    except (DataUnavailable, StoreUnavailable, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_train(summary, evals)
    if where:
        print(where)
    if args.json and summary is not None:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def _print_train(summary: dict | None, evals) -> None:
    """What ``harness train`` prints: the training summary (when it trained) and each final evaluation."""
    from .result import EvalResult

    if summary is not None:
        t = summary["train"]
        print(
            f"trained {t['steps']} steps, {t['num_parameters']:,} parameters: final loss {t['final_loss']:.4f}, "
            f"{t['images_per_second']:.0f} images/s; domain classifier accuracy {summary['classifier_accuracy']:.4f}"
        )
    if evals is None:  # untracked: the summary holds them
        evals = [EvalResult.from_dict(e) for e in summary["evals"]]
    keys = [k for k, m in METRICS.items() if m.lower_is_better is not None] + ["nfe", "sample_seconds"]
    for e in evals:
        print(f"  {e.label}: " + "  ".join(f"{k} {_fmt(e.metrics[k])}" for k in keys if k in e.metrics))
        for metric, why in e.unavailable.items():
            print(f"    {metric} unavailable: {why}")
    if summary is not None:
        print(f"recognizable at step: {summary['recognizable_at_step']}")


def cmd_validate(args) -> int:
    from .config.spec import load_spec, make_plan
    from .sweeps.search import is_sweep_spec, validate_sweep

    for path in args.specs:
        if is_sweep_spec(path):
            validate_sweep(path)
            print(f"{path}: ok (sweep)")
            continue
        spec = load_spec(path)
        sizes = []
        for profile in [None, *spec.profiles]:
            plan = make_plan(spec, path, profile)
            sizes.append(f"{plan.profile} {len(plan.jobs)} jobs x {len(plan.settings)} settings")
        print(f"{path}: ok ({'; '.join(sizes)})")
    return 0


# -- harness run ------------------------------------------------------------------------------------------


def _run_spec(args):
    """(the Spec, its source, its YAML text or None): from the spec file, or from ``-m`` over the default config
    or over the spec file's base. ``--print-spec`` prints the YAML and returns None."""
    from .config.overrides import parse_seeds, spec_data, spec_yaml
    from .config.spec import load_spec, validate_spec, with_shared_profiles
    from .config.yamlio import load_text

    only_m = [f for f, v in (("--seeds", args.seeds), ("--name", args.name), ("--question", args.question)) if v]
    if args.multirun is None:
        if not args.spec:
            raise ConfigError("run: give a SPEC file, or -m key=a,b ... for an ablation without one")
        if only_m or args.print_spec:
            raise ConfigError(f"{(only_m or ['--print-spec'])[0]}: only with -m (a spec file states it)")
        return load_spec(args.spec), args.spec, None
    items, spec_path = [i for i in args.multirun if "=" in i], args.spec
    for extra in [i for i in args.multirun if "=" not in i]:
        if spec_path:  # `-m a=1,2 SPEC` reads SPEC into -m's list; a second one is a mistake
            raise ConfigError(f"-m {extra}: expected key=value or key=a,b")
        spec_path = extra
    if args.set:
        raise ConfigError(f"--set {args.set[0]}: with -m, write it among the -m overrides")
    base = None
    if spec_path:
        load_spec(spec_path)  # its own mistakes first, named in its file
        from .config.run import read_yaml

        base, _ = with_shared_profiles(read_yaml(spec_path), spec_path)
    seeds = parse_seeds(args.seeds) if args.seeds else None
    data = spec_data(items, base=base, seeds=seeds, name=args.name, question=args.question)
    command = ["harness", "run", "-m", *items, *([spec_path] if spec_path else [])]
    for flag, value in (("--seeds", args.seeds), ("--name", args.name), ("--question", args.question)):
        command += [flag, value] if value else []
    profile = f" --profile {args.profile}" if args.profile else ""
    text = spec_yaml(data, f"{shlex.join(command)}{profile}; run it with: harness run FILE{profile}")
    spec = validate_spec(load_text(text), MULTIRUN_SOURCE, shared=False)  # as a file of this text would be
    if args.print_spec:
        sys.stdout.write(text)
        return None
    return spec, MULTIRUN_SOURCE, text


def _profile_line(spec, given: str | None, profile: str | None) -> str:
    """The run's first line: which profile, and whether the user chose it."""
    if given:
        return f"profile {given}"
    if profile:
        return f"profile {profile} (default; --profile smoke checks the pipeline in about a minute)"
    return "profile default (the spec's base configuration: it has no quick profile; --profile smoke checks it)"


def cmd_run(args) -> int:
    from .config.spec import default_profile, make_plan
    from .training.data import DataUnavailable

    loaded = _run_spec(args)
    if loaded is None:
        return 0
    spec, source, text = loaded
    profile = args.profile or default_profile(spec)
    plan = make_plan(spec, source, profile, _overrides(args.set))
    if args.dry_run:
        print(_profile_line(spec, args.profile, profile))
        return _print_plan(plan, args.tracking_uri, args.reuse, args.executor)
    from .orchestration.budget import check_memory
    from .orchestration.runner import preflight, refuse_local_stores, run_plan, sqlite_tracking_store
    from .orchestration.tracking import MlflowStore
    from .tracker import StoreUnavailable

    check_memory(plan, args.executor)  # before anything is loaded, probed or written
    try:
        refuse_local_stores(args.executor, sqlite_tracking_store(args.tracking_uri), args.allow_local_store)
        preflight(plan)
        store = MlflowStore(args.tracking_uri)
        store.check()
        print(
            f"{_profile_line(spec, args.profile, profile)}: {spec.name}, {len(plan.jobs)} training jobs x "
            f"{len(plan.settings)} evaluation settings; tracking {store.uri}"
        )
        if args.executor == "local":  # a Slurm plan is resolved, and so timed, on a node
            print(_estimate(plan, store, args.reuse))
        with tempfile.TemporaryDirectory() as tmp:  # a -m spec is logged to the parent run as its file
            spec_path = source if text is None else Path(tmp) / f"{spec.name}.yaml"
            if text is not None:
                spec_path.write_text(text)
            outcomes, parent = run_plan(
                plan,
                store,
                spec_path=str(spec_path),
                executor=args.executor,
                force=args.force,
                reuse=args.reuse,
                allow_local_store=args.allow_local_store,
            )
    except (DataUnavailable, StoreUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "evaluated", "skipped", "failed")}
    print("summary: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; parent run {parent}")
    for o in failed:
        print(f"  failed {o.config_hash} seed={o.seed}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


def _estimate(plan, store, reuse: str) -> str:
    """The estimated time of what is left, before anything trains (the probe's result is cached for the run)."""
    from .orchestration.budget import estimate_line
    from .orchestration.placement import resolve_plan
    from .orchestration.runner import describe

    resolved, records = resolve_plan(plan, say=lambda _: None)
    return estimate_line(resolved, describe(resolved, store, reuse), store, records)


def _print_plan(plan, uri, reuse: str, executor: str) -> int:
    from .orchestration.budget import check_memory, dry_run
    from .orchestration.placement import resolve_plan
    from .orchestration.runner import describe
    from .orchestration.tracking import existing_store
    from .tracker import StoreUnavailable

    try:
        store = existing_store(uri)
    except StoreUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    memory = check_memory(plan, executor)  # before the autotune probe allocates a batch
    plan, records = resolve_plan(plan, executor=executor)  # the hashes the run will use
    print("\n".join([*dry_run(plan, describe(plan, store, reuse), store, records), *memory]))
    return 0


def _overrides(items: list[str]) -> dict:
    from .config import parse_overrides

    return parse_overrides(items)
