"""Seeds per trial and confirmed winners: a trial's value is the aggregate over its seeds (each a model of
its own), pruning watches the running aggregate, and the best trials are re-trained with fresh seeds."""

import statistics

import pytest
from test_sweep import SEARCH, _study, _uri, _with, _write, one_thread  # noqa: F401 - one torch thread here too

from harness.config import ConfigError
from harness.config.schema import (
    ARM,
    CHECKPOINT,
    CODE_VERSION,
    COMMIT,
    CONFIRM_RANK,
    DEVICE,
    HASH,
    PARENT,
    ROLE,
    SEED,
    SPEC,
    STUDY,
    TRIAL,
    spread_key,
)
from harness.orchestration.tracking import MlflowStore
from harness.sweeps.search import load_sweep
from harness.sweeps.sweep import run_sweep


def _runs(uri, role, **tags):
    store = MlflowStore(uri)
    return store.runs(store.experiment_id("tiny-sweep"), {ROLE: role, STUDY: "tiny-sweep-smoke", **tags})


def _trained(uri, confirmations: bool):
    """The study's training runs (run_job's, as an ablation's): a trial's seeds, or the confirmations (ranked)."""
    return [r for r in _runs(uri, "train") if (CONFIRM_RANK in r.data.tags) == confirmations]


def _final(run, metric: str) -> float:
    """The final evaluation of a sweep's one setting, as the training run logs it (``eval/<label>/<metric>``)."""
    (value,) = [v for k, v in run.data.metrics.items() if k.startswith("eval/") and k.endswith(f"/{metric}")]
    return value


def test_a_two_seed_trial_trains_two_models_and_scores_their_mean(tmp_path):
    path = _write(tmp_path, _with(n_trials=1), seeds=[0, 1])
    result = run_sweep(path, profile="smoke", tracking_uri=_uri(tmp_path))
    assert result.ok and [t.state for t in result.trials] == ["COMPLETE"]
    (trial,) = _runs(_uri(tmp_path), "trial")
    seeds = _trained(_uri(tmp_path), confirmations=False)
    assert sorted(r.data.tags[SEED] for r in seeds) == ["0", "1"]
    # The same run as an ablation's training run of that config: every config field a param, the same tags.
    config = load_sweep(path, "smoke").resolve({}, seed=0)
    from harness.config.schema import CONSTANT_METRICS, parse_eval_key

    constants = {k for k in seeds[0].data.params if (parsed := parse_eval_key(k)) and parsed[1] in CONSTANT_METRICS}
    assert set(seeds[0].data.params) - constants == set(config.flat())  # constants of a setting: params too
    assert {ROLE, HASH, SPEC, COMMIT, CODE_VERSION, ARM, SEED, CHECKPOINT, DEVICE} <= set(seeds[0].data.tags)
    assert {r.data.tags[PARENT] for r in seeds} == {trial.info.run_id}
    assert len({r.data.tags[HASH] for r in seeds}) == 2  # two trained models, not one evaluated twice
    fids = [_final(r, "fid") for r in seeds]
    assert fids[0] != fids[1]
    assert result.trials[0].values[0] == pytest.approx(statistics.fmean(fids))
    assert trial.data.metrics["fid"] == pytest.approx(statistics.fmean(fids))
    assert trial.data.metrics[spread_key("fid")] == pytest.approx(statistics.stdev(fids))
    assert trial.data.metrics["n_seeds"] == 2


def test_pruning_watches_the_running_aggregate_over_seeds(tmp_path):
    # median: nothing is pruned before 5 trials, so every report of this one trial is kept.
    path = _write(tmp_path, _with(n_trials=1, pruner="median", aggregate="median"), seeds=[0, 1])
    run_sweep(path, profile="smoke", tracking_uri=_uri(tmp_path))
    (trial,) = _study(_uri(tmp_path), "tiny-sweep", "tiny-sweep-smoke").trials
    store = MlflowStore(_uri(tmp_path))
    label = load_sweep(path, "smoke").resolve({}).eval.samplers[0].label
    at = {}  # seed -> step -> FID of that seed's model at that evaluation
    for r in _trained(_uri(tmp_path), confirmations=False):
        history = store.client.get_metric_history(r.info.run_id, f"eval/{label}/fid")
        at[int(r.data.tags[SEED])] = {m.step: m.value for m in history}
    # Seed 1's step k is reported at 4 + k, as the median (here: the mean) of both seeds at step k.
    assert trial.intermediate_values == pytest.approx(
        {2: at[0][2], 4: at[0][4], 6: (at[0][2] + at[1][2]) / 2, 8: (at[0][4] + at[1][4]) / 2}
    )


def test_the_best_trials_are_confirmed_with_fresh_seeds_once(tmp_path, capsys):
    search = _with(n_trials=3, confirm={"top": 2, "seeds": [10, 11]})
    path = _write(tmp_path, search)
    result = run_sweep(path, profile="smoke", tracking_uri=_uri(tmp_path))
    assert result.ok, result.worker_errors
    ranked = sorted((t for t in result.trials if t.state == "COMPLETE"), key=lambda t: t.values[0])
    assert [(c.rank, c.trial, c.seed) for c in result.confirmed] == [
        (1, ranked[0].number, 10),
        (1, ranked[0].number, 11),
        (2, ranked[1].number, 10),
        (2, ranked[1].number, 11),
    ]
    runs = _trained(_uri(tmp_path), confirmations=True)
    assert len(runs) == 4 and {r.data.tags[PARENT] for r in runs} == {result.parent_run_id}
    for r in runs:  # the trial's point, trained anew with the fresh seed
        trial = result.trials[int(r.data.tags[TRIAL])]
        assert {k: r.data.params[k] for k in trial.params} == {k: str(v) for k, v in trial.params.items()}
        assert r.data.tags[SEED] in ("10", "11") and r.data.tags[CONFIRM_RANK] in ("1", "2")
        assert _final(r, "fid") > 0 and r.data.tags[HASH] != trial.config_hash
    assert f"confirm trial   {ranked[0].number} seed 10  fid=" in capsys.readouterr().out

    again = run_sweep(path, profile="smoke", tracking_uri=_uri(tmp_path))
    assert [w.confirmed for w in again.workers if w.confirmed]  # looked at, but nothing trained again
    assert len(_trained(_uri(tmp_path), confirmations=True)) == 4


@pytest.mark.parametrize(
    "confirm,seeds,message",
    [
        ({"top": 1, "seeds": [0]}, [0], "search.confirm.seeds: 0 also train the search's trials"),
        ({"top": 3, "seeds": [5]}, [0], "search.confirm.top: 3 is more than search.n_trials (2)"),
        ({"top": 1, "seeds": [5, 5]}, [0], "search.confirm.seeds: each seed once; got [5, 5]"),
        ({"top": 1}, [0], "search.confirm.seeds: Field required"),
    ],
)
def test_bad_confirmation_is_a_one_line_error(tmp_path, confirm, seeds, message):
    path = _write(tmp_path, {**SEARCH, "confirm": confirm}, seeds=seeds)
    with pytest.raises(ConfigError) as err:
        load_sweep(path, "smoke")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_confirmation_needs_one_objective(tmp_path):
    search = _with(objective=[{"metric": "fid"}, {"metric": "nfe"}], confirm={"top": 1, "seeds": [5]})
    with pytest.raises(ConfigError, match="search.confirm: confirmation ranks trials on one objective"):
        load_sweep(_write(tmp_path, search), "smoke")
