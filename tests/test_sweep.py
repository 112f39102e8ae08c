"""Sweeps: search sections, samplers and pruners, and Optuna studies run on tiny models.

Each sweep gets its own throwaway SQLite MLflow store; its journal file, checkpoints and locks sit
beside it. Trials train 4 steps of an 8-channel UNet and score 16 samples of 3 DDIM steps.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from fixtures import TINY

from harness.cli import main
from harness.config import ConfigError, TrainConfig
from harness.config.schema import FEATURE_FINGERPRINT, HASH, PARENT, ROLE, SEED
from harness.config.space import make_pruner
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore
from harness.sweeps.search import load_sweep, validate_sweep
from harness.sweeps.study import journal_path, open_storage, recover_dead_trials
from harness.sweeps.sweep import run_sweep

SWEEPS = sorted((Path(__file__).parents[1] / "experiments").glob("sweep-*.yaml"))
SEARCH = {
    "params": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "train.ema_decay": {"type": "float", "low": 0.9, "high": 0.99},
    },
    "objective": {"metric": "fid", "direction": "minimize"},
    "n_trials": 2,
    "sampler": "random",
    "pruner": "none",
    "seed": 0,
}


def _write(tmp_path, search=None, name="tiny-sweep", profile_set=None, **changes):
    spec = {
        "name": name,
        "question": "Which learning rate?",
        "base": {"data": {"dataset": "mnist-5k"}},
        "seeds": [0],
        "evaluate": {"sampler": ["ddim"], "steps": [3]},
        "profiles": {"smoke": {"set": {**TINY, **(profile_set or {})}}},
        "search": search or SEARCH,
    }
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Trials here are tiny: one torch thread each is faster than two, and far faster on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _trial_runs(uri, spec_name, study):
    store = MlflowStore(uri)
    return store, store.runs(store.experiment_id(spec_name), {ROLE: "trial", "harness.study": study})


def _study(uri, spec_name, study_name):
    storage = open_storage(None, store_root(uri), spec_name)
    return optuna.load_study(study_name=study_name, storage=storage)


# -- the search section ---------------------------------------------------------------------------------


def _with(**changes):
    return {**SEARCH, **changes}


def _param(key, dist):
    return _with(params={**SEARCH["params"], key: dist})


BAD = [
    (None, "search: a sweep spec needs a search section"),
    (
        _with(budget=3),
        "search.budget: unknown key; valid keys here: aggregate, confirm, n_trials, objective, params, pruner, sampler,",
    ),
    (_with(n_trials=0), "search.n_trials: Input should be greater than or equal to 1"),
    (_with(params={}), "search.params: Dictionary should have at least 1 item"),
    (
        _param("train.lr", {"type": "uniform", "low": 1, "high": 2}),
        "search.params.train.lr.type: unknown type 'uniform'; valid: float, int, categorical",
    ),
    (_param("train.lr", {"low": 1, "high": 2}), "search.params.train.lr.type: missing; valid: float, int, categorical"),
    (
        _param("train.lr", {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "logscale": True}),
        "search.params.train.lr.logscale: unknown key; valid keys for type float: type, low, high, log, step",
    ),
    (_param("train.lr", {"type": "float", "low": 1.0e-2, "high": 1.0e-4}), "search.params.train.lr: "),
    (_param("train.lr", {"type": "float", "low": 0.0, "high": 1.0e-2, "log": True}), "search.params.train.lr: "),
    (
        _param("model.chanels", {"type": "categorical", "choices": [8, 16]}),
        "search.params.model.chanels: the value 8 is invalid: model.chanels: unknown key; valid keys here:",
    ),
    (
        _param("train.ema_decay", {"type": "float", "low": 0.9, "high": 1.0}),
        "search.params.train.ema_decay: the value 1.0 is invalid: train.ema_decay: Input should be less than 1",
    ),
    (
        _param("model.channel_mult", {"type": "categorical", "choices": [[1, 2], [1, 2, 2]]}),
        "search.params.model.channel_mult.choices: choices are numbers, strings, booleans or null; [1, 2] is not",
    ),
    (
        _param("eval.num_samples", {"type": "int", "low": 8, "high": 16}),
        "search.params.eval.num_samples: eval.* keys set a field of the evaluation setting; valid: eval.classifier_scale, eval.eta",
    ),
    (
        _param("eval.guidance", {"type": "float", "low": 0.0, "high": 2.0}),
        "search.params.eval.guidance: the value 2.0 is invalid: eval.samplers.0.guidance: 2.0 needs model.conditional",
    ),
    (
        _with(objective={"metric": "fdi"}),
        "search.objective.0.metric: unknown metric 'fdi'; valid: class_accuracy, classifier_passes, fid,",
    ),
    (_with(objective={"metric": "fid", "direction": "down"}), "search.objective.0.direction: Input should be"),
    (_with(objective=[{"metric": "fid"}, {"metric": "fid"}]), "search.objective: each metric once"),
    (_with(objective={"metric": "class_accuracy"}), "search.objective: class_accuracy needs model.conditional: true"),
    (
        _with(sampler="annealing"),
        "search.sampler: unknown sampler 'annealing'; valid: bruteforce, cmaes, gp, random, tpe",
    ),
    (_with(pruner="patient"), "search.pruner: unknown pruner 'patient'; valid: hyperband, median, none, threshold"),
    (
        _with(pruner={"name": "median", "patience": 3}),
        "search.pruner: unknown option 'patience' for pruner median; valid: n_startup_trials, n_warmup_steps, interval",
    ),
    (_with(pruner={"name": "threshold"}), "search.pruner: Either lower or upper must be specified"),
    (
        _with(sampler="cmaes", objective=[{"metric": "fid"}, {"metric": "nfe"}]),
        "search.sampler: cmaes optimizes one objective; for several use bruteforce, gp, random, tpe",
    ),
    (_with(sampler="bruteforce"), ": bruteforce needs finite values: give the float a step, or use int or categorical"),
    (
        _with(sampler="bruteforce", n_trials=5, params={"model.channels": {"type": "categorical", "choices": [8, 16]}}),
        "search.n_trials: 5 is more than the 2 points bruteforce can visit",
    ),
]


@pytest.mark.parametrize("search,message", BAD, ids=range(len(BAD)))
def test_bad_search_sections_are_one_line_errors(tmp_path, search, message):
    path = _write(tmp_path)
    spec = yaml.safe_load(path.read_text())
    if search is None:
        del spec["search"]
    else:
        spec["search"] = search
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(path, "smoke")
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text


def test_other_bad_sweep_specs(tmp_path):
    with pytest.raises(ConfigError, match="axes: a sweep has no axes"):
        load_sweep(_write(tmp_path, axes={"grid": {"diffusion.schedule": ["linear"]}}), "smoke")
    with pytest.raises(ConfigError, match="pruner: median prunes on periodic evaluations; set train.eval_every"):
        load_sweep(_write(tmp_path, _with(pruner="median"), profile_set={"train.eval_every": 0}), "smoke")
    with pytest.raises(ConfigError, match="profiles: unknown profile 'huge'; valid: smoke"):
        load_sweep(_write(tmp_path), "huge")
    bad = _write(tmp_path, _with(sampler="annealing"))
    assert main(["sweep", str(bad), "--profile", "smoke"]) == 2


def test_a_literature_expectation_in_a_sweep_is_refused_in_one_line(tmp_path, capsys):
    source = {"authors": "A & B", "year": 2024, "title": "T", "where": "Section 3", "checked": "read from its text"}
    expect = {"kind": "direction", "metric": "fid", "better": {"steps": 3}, "than": {"steps": 3}}
    entry = {"source": source, "claim": "EMA and learning rate interact", "differences": "ImageNet vs MNIST"}
    context = _write(tmp_path, literature=[{**entry, "unchecked": "a sweep has no arms"}])
    assert [e.unchecked for e in load_sweep(context, "smoke").spec.literature] == ["a sweep has no arms"]
    bad = _write(tmp_path, literature=[{**entry, "expect": expect}])
    with pytest.raises(ConfigError, match=r"literature\.0\.expect: a sweep has no arms to test a claim on"):
        load_sweep(bad)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "literature.0.expect" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "storage,words",
    [
        ("bogus://x", ["Can't load plugin"]),
        ("sqlite:////nonexistent/folder/optuna.db", ["unable to open database file"]),
        ("postgresql://user:secret@127.0.0.1:9/db", ["postgresql://127.0.0.1:9/db", "accepting TCP/IP connections"]),
    ],
    ids=["unknown scheme", "missing folder", "no server"],
)
def test_an_unusable_optuna_storage_is_one_line_and_writes_nothing(tmp_path, capsys, storage, words):
    store = tmp_path / "store"
    argv = ["sweep", str(_write(tmp_path)), "--profile", "smoke", "--storage", storage]
    assert main([*argv, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: optuna storage") and err.count("\n") == 1 and all(w in err for w in words), err
    assert "secret" not in err and "Background on this error" not in err
    assert not store.exists()  # a typo in the storage URL writes nothing, not even the tracking store


def test_profiles_and_overrides_reach_the_search_and_the_config(tmp_path):
    path = _write(
        tmp_path, profiles={"smoke": {"set": TINY, "search": {"n_trials": 5, "params": {"train.lr": {"high": 1.0e-3}}}}}
    )
    sweep = load_sweep(path, "smoke", {"search.sampler": "tpe", "train.steps": 6})
    assert sweep.study_name == "tiny-sweep-smoke" and sweep.search.n_trials == 5 and sweep.search.sampler == "tpe"
    assert sweep.params["train.lr"].high == 1.0e-3 and sweep.params["train.lr"].log
    config = sweep.resolve({"train.lr": 5.0e-4, "train.ema_decay": 0.95})
    assert (config.train.lr, config.train.ema_decay, config.train.steps, config.train.seed) == (5.0e-4, 0.95, 6, 0)
    assert [s.steps for s in config.eval.samplers] == [3]  # the spec's first evaluation setting
    assert load_sweep(path, "smoke").fingerprint() != sweep.fingerprint()  # another budget, another study


def test_eval_keys_set_the_evaluation_setting_not_the_training_config(tmp_path):
    path = _write(tmp_path, _param("eval.steps", {"type": "int", "low": 2, "high": 5}))
    sweep = load_sweep(path, "smoke")
    a, b = sweep.resolve({"eval.steps": 2}), sweep.resolve({"eval.steps": 5})
    assert [s.steps for s in a.eval.samplers] == [2] and [s.steps for s in b.eval.samplers] == [5]
    assert a.train_hash() == b.train_hash()  # one trained model serves both


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweep_validates_in_every_profile(path):
    sweeps = validate_sweep(path)
    assert {"smoke", "quick", "full"} <= {s.profile for s in sweeps}
    smoke = next(s for s in sweeps if s.profile == "smoke")
    assert 2 <= smoke.search.n_trials <= 3 and smoke.base["train"]["steps"] <= 10


# -- samplers and pruners: one row each -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["median", "threshold", "none"])
def test_pruners_judge_the_first_evaluation(name):
    options = {"threshold": {"upper": 1.0}}.get(name, {})
    study = optuna.create_study(pruner=make_pruner(name, options, TrainConfig(steps=4, eval_every=2), 1))
    for value in [0.5] * 5 + [2.0]:  # five good trials, then one far worse at the first evaluation
        trial = study.ask()
        trial.report(value, 2)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 5 + ["PRUNED" if name != "none" else "COMPLETE"]


def test_hyperband_counts_the_steps_of_every_seed():
    # Seeds train one after the other, so a trial's resource runs to steps x seeds (Sweep.prune_step).
    pruner = make_pruner("hyperband", {}, TrainConfig(steps=400, eval_every=100), 3)
    assert (pruner._min_resource, pruner._max_resource) == (100, 1200)
    assert (
        make_pruner("hyperband", {"min_resource": 200}, TrainConfig(steps=400, eval_every=100), 3)._min_resource == 200
    )


def test_sampler_options_are_the_optuna_class_keywords_over_the_harness_defaults(tmp_path):
    sweep = load_sweep(_write(tmp_path, _with(sampler={"name": "tpe", "n_startup_trials": 4})), "smoke")
    sampler = sweep.sampler(0, 0)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 4
    assert sampler._constant_liar  # the harness default stays unless the spec says otherwise
    with pytest.raises(
        ConfigError, match=r"search.sampler: unknown option 'startup' for sampler tpe; valid: .*consider"
    ):
        load_sweep(_write(tmp_path, _with(sampler={"name": "tpe", "startup": 4})), "smoke")
    with pytest.raises(ConfigError, match="search.sampler: unknown option 'seed' for sampler random; valid: none"):
        load_sweep(_write(tmp_path, _with(sampler={"name": "random", "seed": 4})), "smoke")


# -- sweeps end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_smoke_sweep_tracks_one_parent_and_continues_where_it_stopped(tmp_path, path):
    uri, sweep = _uri(tmp_path), load_sweep(path, "smoke")
    first = run_sweep(path, profile="smoke", tracking_uri=uri, overrides={"train.device": "cpu"})
    n = first.n_trials
    assert first.ok and [t.state for t in first.trials] == ["COMPLETE"] * n, first.worker_errors
    assert journal_path(store_root(uri), sweep.spec.name).exists()
    store, runs = _trial_runs(uri, sweep.spec.name, first.study_name)
    assert len(runs) == n and {r.data.tags["mlflow.parentRunId"] for r in runs} == {first.parent_run_id}
    run = runs[0]
    assert {"trial", *sweep.params} == set(run.data.params)
    assert run.data.tags[HASH] != "-" and run.data.tags["harness.trial_state"] == "COMPLETE"
    (seed_run,) = store.runs(store.experiment_id(sweep.spec.name), {PARENT: run.info.run_id})
    assert seed_run.data.tags[ROLE] == "train" and seed_run.data.tags[SEED] == str(sweep.seeds[0])
    # Trials score FID with the classifier the store holds for this data, as ablations on it do.
    features = store.runs(store.experiment_id("harness-features"), {ROLE: "features"})
    assert len(features) == 1
    assert seed_run.data.tags[FEATURE_FINGERPRINT] == features[0].data.tags[FEATURE_FINGERPRINT]
    metric = first.objective[0][0]
    label = sweep.resolve({}).eval.samplers[0].label
    # one seed: its value is the trial's
    assert run.data.metrics[metric] == seed_run.data.metrics[f"eval/{label}/{metric}"]
    first_runs = {r.info.run_id for r in runs}

    again = run_sweep(
        path, profile="smoke", tracking_uri=uri, overrides={"train.device": "cpu", "search.n_trials": n + 1}
    )
    assert again.parent_run_id == first.parent_run_id  # one parent run per study
    assert [t.number for t in again.trials] == list(range(n + 1)) and again.finished == n + 1
    _, runs = _trial_runs(uri, sweep.spec.name, first.study_name)
    assert len(runs) == n + 1 and first_runs < {r.info.run_id for r in runs}  # nothing ran twice
    assert len({tuple(sorted(t.params.items())) for t in again.trials}) == n + 1  # no point sampled twice
    best = [r for r in runs if r.data.tags.get("harness.best_trial") == "true"]
    assert len(best) == 1 and int(best[0].data.tags["harness.trial"]) == again.best[0].number
    parent = store.client.get_run(again.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.role"] == "sweep"
    assert parent.data.tags["harness.config_hash"] == "-" and "git.commit" in parent.data.tags
    artifacts = {a.path for a in store.client.list_artifacts(again.parent_run_id)}
    assert {"optimization_history.png", "param_importances.png", "trials.csv"} <= artifacts

    done = run_sweep(
        path, profile="smoke", tracking_uri=uri, overrides={"train.device": "cpu", "search.n_trials": n + 1}
    )
    assert len(done.trials) == n + 1 and done.workers[0].trials == []  # finished: nothing more runs


def test_pruned_trials_are_recorded_as_pruned(tmp_path, capsys):
    # FID is always above 0: the threshold pruner stops every trial at its first evaluation (step 2 of 4).
    path = _write(tmp_path, _with(pruner={"name": "threshold", "upper": 0.0}))
    assert main(["sweep", str(path), "--profile", "smoke", "--tracking-uri", _uri(tmp_path)]) == 0
    assert "tiny-sweep-smoke: 2/2 finished (2 pruned)" in capsys.readouterr().out
    _, runs = _trial_runs(_uri(tmp_path), "tiny-sweep", "tiny-sweep-smoke")
    assert len(runs) == 2 and {r.data.tags["harness.trial_state"] for r in runs} == {"PRUNED"}
    assert all(r.info.status == "FINISHED" and "at step 2" in r.data.tags["harness.stopped"] for r in runs)
    study = _study(_uri(tmp_path), "tiny-sweep", "tiny-sweep-smoke")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert [list(t.intermediate_values) for t in study.trials] == [[2], [2]]


def test_a_diverging_trial_is_pruned_not_failed(tmp_path):
    # A non-finite loss is a result (this learning rate is too high), and TPE ranks pruned points last.
    path = _write(tmp_path, _with(n_trials=1, params={"train.lr": {"type": "categorical", "choices": [1.0e30]}}))
    result = run_sweep(path, profile="smoke", tracking_uri=_uri(tmp_path))
    assert [t.state for t in result.trials] == ["PRUNED"] and result.ok
    _, runs = _trial_runs(_uri(tmp_path), "tiny-sweep", "tiny-sweep-smoke")
    assert "non-finite loss at step" in runs[0].data.tags["harness.stopped"]


def test_multi_objective_sweep_shares_one_model_between_eval_settings(tmp_path):
    # Only the sampler's step count varies: one training, two evaluations; FID against NFE.
    search = _with(
        params={"eval.steps": {"type": "categorical", "choices": [2, 3]}},
        sampler="bruteforce",
        objective=[{"metric": "fid"}, {"metric": "nfe"}],
        pruner="median",
    )  # no pruning with 2 objectives
    result = run_sweep(_write(tmp_path, search), profile="smoke", tracking_uri=_uri(tmp_path))
    assert [t.state for t in result.trials] == ["COMPLETE", "COMPLETE"] and result.ok
    assert sorted((t.params["eval.steps"], t.values[1]) for t in result.trials) == [(2, 2.0), (3, 3.0)]
    assert len({t.config_hash for t in result.trials}) == 1
    assert len(list((store_root(_uri(tmp_path)) / "checkpoints" / "tiny-sweep").iterdir())) == 1
    assert result.best  # the Pareto front
    store = MlflowStore(_uri(tmp_path))
    artifacts = {a.path for a in store.client.list_artifacts(result.parent_run_id)}
    assert {"optimization_history_fid.png", "optimization_history_nfe.png", "pareto_front.png"} <= artifacts


@pytest.mark.slow
def test_two_workers_never_run_the_same_trial(tmp_path):
    path = _write(tmp_path, _with(n_trials=3))
    result = run_sweep(path, profile="smoke", workers=2, tracking_uri=_uri(tmp_path))
    assert result.ok and [t.state for t in result.trials] == ["COMPLETE"] * 3  # exactly n_trials, none extra
    ran = [w.trials for w in result.workers]
    assert len({w.name for w in result.workers}) == 2  # two processes
    assert sorted(ran[0] + ran[1]) == [0, 1, 2] and not set(ran[0]) & set(ran[1])
    _, runs = _trial_runs(_uri(tmp_path), "tiny-sweep", "tiny-sweep-smoke")
    assert sorted(int(r.data.tags["harness.trial"]) for r in runs) == [0, 1, 2]  # one MLflow run per trial
    for w in result.workers:  # each ran in its own process
        assert sorted(
            int(r.data.tags["harness.trial"]) for r in runs if r.data.tags["harness.worker"] == w.name
        ) == sorted(w.trials)


@pytest.mark.slow
def test_killed_worker_does_not_leave_the_study_stuck(tmp_path):
    slow = {"train.steps": 300, "train.eval_every": 0, "train.checkpoint_every": 20, "train.log_every": 5}
    path = _write(tmp_path, _with(n_trials=1), profile_set=slow)
    uri = _uri(tmp_path)
    code = (
        f"from harness.sweeps.sweep import run_sweep; run_sweep({str(path)!r}, profile='smoke', tracking_uri={uri!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    checkpoints, deadline, killed = store_root(uri) / "checkpoints", time.time() + 240, False
    while time.time() < deadline and proc.poll() is None:
        if list(checkpoints.glob("tiny-sweep/*/checkpoint.pt")):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, proc.stderr.read().decode()[-2000:]
    study = _study(uri, "tiny-sweep", "tiny-sweep-smoke")
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # what SIGKILL leaves

    result = run_sweep(path, profile="smoke", tracking_uri=uri)
    assert [t.state for t in result.trials] == ["FAIL", "COMPLETE"] and result.ok
    dead, retry = result.trials
    assert retry.params == dead.params and retry.config_hash == dead.config_hash  # resumed from its checkpoint
    _, runs = _trial_runs(uri, "tiny-sweep", "tiny-sweep-smoke")
    by_trial = {int(r.data.tags["harness.trial"]): r for r in runs}
    assert by_trial[0].info.status == "FAILED" and by_trial[0].data.tags["harness.trial_state"] == "FAIL"
    assert by_trial[1].data.tags["harness.retry_of"] == "0"


@pytest.mark.slow
def test_rdb_storage_retries_a_trial_whose_heartbeat_stopped(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    code = f"""
import time, optuna
from harness.sweeps.study import open_storage
storage = open_storage({url!r}, None, 'x', heartbeat_interval=1, grace_period=2)
study = optuna.create_study(storage=storage, study_name='s')
study.optimize(lambda t: t.suggest_float('lr', 0, 1) + time.sleep(600), n_trials=1)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    storage = open_storage(url, tmp_path, "x", heartbeat_interval=1, grace_period=2)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if optuna.load_study(study_name="s", storage=storage).trials:
                break
        except KeyError:
            pass
        time.sleep(0.2)
    time.sleep(1.5)  # a heartbeat or two
    proc.kill()
    proc.wait()
    time.sleep(3)  # longer than the grace period
    study = optuna.load_study(study_name="s", storage=storage)
    recover_dead_trials(study, storage, tmp_path)
    dead, retry = study.get_trials()
    assert (dead.state.name, retry.state.name) == ("FAIL", "WAITING") and retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == 0


@pytest.mark.slow
def test_rdb_storage_and_the_slurm_executor(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path, "tiny-sweep")
    assert isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval > 0
    assert isinstance(storage.heartbeat_stale_trial_callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    path = _write(tmp_path, _with(n_trials=1, pruner={"name": "threshold", "upper": 0.0}))
    result = run_sweep(
        path,
        profile="smoke",
        tracking_uri=_uri(tmp_path),
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        executor="slurm",
        cluster="debug",
        allow_local_store=True,  # the "cluster" is this process
    )
    assert [t.state for t in result.trials] == ["PRUNED"] and result.storage.endswith("optuna.db")


@pytest.mark.slow  # two sweeps end to end
def test_a_stopped_sweep_marks_its_runs_killed_and_the_rerun_resumes_the_trial(tmp_path, monkeypatch):
    """The first Ctrl-C (here: the stop request it sets, from the third check on, so the first trial's training
    stops at step 2): no trial starts, the trial's run and the parent are KILLED, its parameters are enqueued
    again; the rerun trains that copy from its checkpoint and finishes the study."""
    from harness import stop

    path, uri = _write(tmp_path), _uri(tmp_path)
    checks = iter(range(10**6))
    monkeypatch.setattr(stop, "requested", lambda: next(checks) >= 3)
    with pytest.raises(stop.Interrupted, match="interrupted: .* KILLED; run the same command again"):
        run_sweep(path, profile="smoke", tracking_uri=uri)
    monkeypatch.undo()
    store, runs = _trial_runs(uri, "tiny-sweep", "tiny-sweep-smoke")
    assert [r.info.status for r in runs] == ["KILLED"] and "stopped" in runs[0].data.tags["harness.stopped"]
    sweep_parent = store.runs(store.experiment_id("tiny-sweep"), {ROLE: "sweep"})[0]
    assert sweep_parent.info.status == "KILLED"
    study = _study(uri, "tiny-sweep", "tiny-sweep-smoke")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].params == study.trials[0].params

    done = run_sweep(path, profile="smoke", tracking_uri=uri)
    assert done.ok and [t.state for t in done.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert done.trials[1].params == study.trials[0].params
    train = store.runs(store.experiment_id("tiny-sweep"), {ROLE: "train"})
    for r in train:
        own = [m.step for m in store.client.get_metric_history(r.info.run_id, "train/loss")]
        assert len(own) == len(set(own)), own  # resumed, never trained twice
