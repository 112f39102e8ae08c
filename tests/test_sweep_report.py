"""`harness report` for sweeps, on MLflow runs written by hand to the sweep's data contract (no training,
no Optuna): the answer names the confirmed best with its interval, or says the search's best is unconfirmed."""

import io
import json
import re
import time

import pandas as pd
import pytest
import yaml
from analysis_fixtures import log_trained_model
from mlflow.entities import Metric, Param
from PIL import Image

from analysis.load import load_experiment
from analysis.sweep_answers import answer
from analysis.sweep_load import NothingToReport, load_sweep_data, report_kind
from analysis.sweep_report import build_sweep_document
from harness.cli import main
from harness.config import SamplerSetting, build_config, schema
from harness.orchestration.tracking import MlflowStore

SETTING = "ddim-3-eta0-w1"
STEPS = 4
SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "model.channels": {"type": "categorical", "choices": [8, 16]},
}
# trial -> (state, params, FID per search seed)
TRIALS = {
    0: ("COMPLETE", {"train.lr": 0.0002, "model.channels": 8}, [52.0, 50.0]),
    1: ("COMPLETE", {"train.lr": 0.003, "model.channels": 16}, [34.0, 36.0]),
    2: ("PRUNED", {"train.lr": 0.009, "model.channels": 8}, [90.0, 94.0]),  # last periodic values
    3: ("COMPLETE", {"train.lr": 0.001, "model.channels": 16}, [37.0, 39.0]),
    4: ("FAIL", {"train.lr": 0.0005, "model.channels": 16}, []),
}
CLEAR = {1: [30.0, 31.0, 32.0], 3: [40.0, 41.5, 42.0]}  # trial 1 wins in every seed
OVERLAP = {1: [30.0, 36.0, 33.0], 3: [31.0, 34.0, 35.0]}


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


REC = {0: 0.6, 1: 0.9, 3: 0.95}  # recognizability of the complete trials: 1 and 3 are Pareto-optimal with FID


def with_complete_trials(data, n: int):
    """``data`` with copies of its first complete trial renumbered until ``n`` trials are complete."""
    done = data.trials[data.trials["state"] == "COMPLETE"]
    extra = done.iloc[[0] * (n - len(done))].assign(trial=range(100, 100 + n - len(done)), best=False)
    data.trials = pd.concat([data.trials, extra], ignore_index=True)
    return data


def make_run(store, exp, name, tags, *, parent=None, params=None, metrics=(), status="FINISHED") -> str:
    """One run in three calls (create, one batch, end): the fixture stays fast on a loaded machine."""
    run_id = store.start_run(exp, name, tags=tags, parent=parent).run_id
    now = int(time.time() * 1000)
    store.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, step) for k, v, step in metrics],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
    store.client.set_terminated(run_id, status=status)
    return run_id


def make_sweep(
    store, tmp, name, *, confirms=None, importances=True, profile="default", study=None, objective="fid:minimize"
):
    """A finished study in experiment ``name``, written as the sweep writes it."""
    exp = store.experiment_id(name)
    study = study or name
    multi = "," in objective
    confirm_seeds = sorted({s for vals in (confirms or {}).values() for s in range(100, 100 + len(vals))})
    figures = ("param_importances_fid", "param_importances_recognizability") if multi else ("param_importances",)
    tags = {
        schema.ROLE: "sweep",
        schema.STUDY: study,
        schema.QUESTION: "Which learning rate and width give the lowest FID?",
        schema.PROFILE: profile,
        schema.STORAGE: str(tmp / "optuna.log"),
        schema.N_TRIALS: len(TRIALS),
        schema.SAMPLER: "tpe",
        schema.PRUNER: "median",
        schema.AGGREGATE: "mean",
        schema.SEEDS: json.dumps([0, 1]),
        schema.CONFIRM_SEEDS: json.dumps(confirm_seeds),
        schema.BEST_TRIAL_NUMBER: 1,
        **(
            {}
            if importances
            else {schema.FIGURE_UNAVAILABLE + f: "ValueError: too few complete trials" for f in figures}
        ),
    }
    parent = make_run(
        store,
        exp,
        study,
        tags,
        params={"objective": objective, "search_space": ", ".join(SPACE), "setting": SETTING},
        metrics=[("trials_complete", 3, 0), ("trials_pruned", 1, 0), ("trials_fail", 1, 0), ("best_fid", 35, 0)],
    )
    store.client.log_dict(parent, {"params": SPACE, "objective": [{"metric": "fid"}]}, "search.json")
    store.client.log_dict(parent, {"train": {"steps": STEPS, "batch_size": 8}}, "base_config.json")
    if importances:
        path = tmp / f"{name}-importances" / "param_importances.png"
        path.parent.mkdir()
        path.write_bytes(png())
        store.log_file(parent, path)
    for number, (state, params, fids) in TRIALS.items():
        tags = {
            schema.ROLE: "trial",
            schema.STUDY: study,
            schema.TRIAL: number,
            schema.TRIAL_STATE: state,
            schema.HASH: f"h{number}",
        }
        tags[schema.BEST_TRIAL] = str(number in ((1, 3) if multi else (1,))).lower()
        if state == "PRUNED":
            tags[schema.STOPPED] = "fid 92 at step 2"
        metrics = []
        if state == "COMPLETE":
            metrics = [("fid", sum(fids) / len(fids), STEPS), (schema.spread_key("fid"), 1.414, STEPS)]
            metrics += [("n_seeds", len(fids), STEPS)] + ([("recognizability", REC[number], STEPS)] if multi else [])
        trial = store.start_run(exp, f"{study}-trial-{number}", tags=tags, parent=parent).run_id
        for seed, fid in enumerate(fids):
            seed_metrics = [(schema.eval_key(SETTING, "fid"), fid, 2 if state == "PRUNED" else STEPS)]
            if state == "COMPLETE":
                seed_metrics += [("fid", fid, STEPS), ("train/seconds", 10.0, STEPS)]
            make_run(
                store,
                exp,
                f"{study}-trial-{number}-seed-{seed}",
                {
                    schema.ROLE: "train",
                    schema.STUDY: study,
                    schema.TRIAL: number,
                    schema.SEED: seed,
                    schema.HASH: f"h{number}-{seed}",
                },
                parent=trial,
                metrics=seed_metrics,
            )
        now = int(time.time() * 1000)
        store.client.log_batch(
            trial,
            metrics=[Metric(k, float(v), now, step) for k, v, step in metrics],
            params=[Param(k, str(v)) for k, v in {**params, "trial": number}.items()],
        )
        store.client.set_terminated(trial, status="FAILED" if state == "FAIL" else "FINISHED")
    for rank, (number, fids) in enumerate((confirms or {}).items(), start=1):
        for i, fid in enumerate(fids):
            make_run(
                store,
                exp,
                f"{study}-confirm-{number}-{100 + i}",
                {
                    schema.ROLE: "train",
                    schema.STUDY: study,
                    schema.TRIAL: number,
                    schema.CONFIRM_RANK: rank,
                    schema.SEED: 100 + i,
                    schema.HASH: f"c{i}",
                },
                parent=parent,
                params=TRIALS[number][1],
                metrics=[
                    (schema.eval_key(SETTING, k), v, STEPS)
                    for k, v in {"fid": fid, "kid": fid / 10, "num_generated": 16, "num_reference": 5000}.items()
                ]
                + [("train/seconds", 12.0, STEPS)],
            )
    return parent


SWEEPS = {  # built on first use, so each test pays only for the sweeps it reads
    "clear": {"confirms": CLEAR},
    "overlap": {"confirms": OVERLAP, "importances": False},
    "unconfirmed": {},
    "one-seed": {"confirms": {1: [30.0], 3: [41.0]}},
    "two-objectives": {"importances": False, "objective": "fid:minimize, recognizability:maximize"},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweeps")
    store = MlflowStore(f"sqlite:///{tmp / 'mlflow.db'}")
    store.tmp, store.built = tmp, set()
    return store


@pytest.fixture
def sweep(store):
    def load(name: str):
        if name not in store.built:
            make_sweep(store, store.tmp, name, **SWEEPS[name])
            store.built.add(name)
        return load_sweep_data(store, name)

    return load


def test_the_confirmed_winner_beats_the_runner_up_with_its_interval(sweep):
    text = answer(sweep("clear"))
    assert "the confirmed best configuration is trial 1 (train.lr=0.003, model.channels=16)" in text
    assert "FID 31 (95% CI 28.5 to 33.5) over 3 fresh confirmation seeds" in text
    assert "trial 1 beats trial 3 by 10.2 FID" in text and "paired t-test" in text
    assert "in the search: 35 (mean of 2 seeds, std 1.41), rank 1 of 3 complete trials" in text
    assert "5 trials of 5 planned (3 complete, 1 pruned, 1 failed)" in text


def test_a_confirmed_trial_without_its_trial_run_keeps_its_configuration(sweep):
    data = sweep("clear")
    data.trials = data.trials[data.trials["trial"] != 1]
    text = answer(data)
    assert "the confirmed best configuration is trial 1 (train.lr=0.003, model.channels=16), FID 31" in text
    assert "in the search: no value recorded, not among the 2 complete trials" in text
    assert build_sweep_document(data).sections[0].tables[0].rows[0][3:] == [
        "no value recorded",
        "31 [28.5, 33.5] (3 seeds)",
        "n/a",
    ]


def test_overlapping_confirmations_are_no_significant_difference(sweep):
    text = answer(sweep("overlap"))
    assert "the confirmations single out no best configuration" in text and "confirmed best" not in text
    assert "the lowest is trial 1 (train.lr=0.003, model.channels=16), FID 33" in text
    assert "no significant difference at this budget between trial 1" in text
    assert "beats" not in text


def test_one_confirmation_seed_cannot_be_tested(sweep):
    text = answer(sweep("one-seed"))
    assert "single out no best configuration" in text and "the lowest is trial 1" in text
    assert "confirmed best" not in text
    assert "cannot be tested (1 seed)" in text and "beats" not in text


def test_without_confirmation_the_best_trial_is_the_winners_curse(sweep):
    text = answer(sweep("unconfirmed"))
    assert "the search's best trial is trial 1 (train.lr=0.003, model.channels=16), FID 35 (mean of 2 seeds" in text
    assert "best of 3 noisy trial values" in text and "winner's curse" in text and "unconfirmed" in text


def test_a_two_objective_study_names_its_pareto_optimal_trials(sweep):
    data = sweep("two-objectives")
    assert [(o.metric, o.direction) for o in data.objectives] == [("fid", "minimize"), ("recognizability", "maximize")]
    text = answer(data)
    assert "ranks by the first, FID (minimize)" in text
    assert (
        "2 trials are Pareto-optimal in the search: trial 1 (train.lr=0.003, model.channels=16: FID 35, "
        "recognizability 0.9); trial 3 (train.lr=0.001, model.channels=16: FID 38, recognizability 0.95). "
        "These are the best of 3 noisy trial values, so they are optimistic"
    ) in text
    assert "winner's curse" in text and "they are unconfirmed" in text
    doc = build_sweep_document(data)
    history = next(s for s in doc.sections if s.title == "Optimization history")
    assert history.pictures  # one panel per objective
    many = build_sweep_document(with_complete_trials(data, 10))
    reasons = next(s for s in many.sections if s.title == "Parameter importances").paragraphs
    assert sum("too few complete trials" in p for p in reasons) == 2


def test_the_document_shows_confirmation_history_slices_importances_and_budget(sweep):
    doc = build_sweep_document(sweep("clear"))
    titles = [s.title for s in doc.sections]
    assert titles == [
        "Best configuration and confirmation",
        "Optimization history",
        "Parameter slices",
        "Parameter importances",
        "Every trial",
        "Setup and budget",
    ]
    confirm = doc.sections[0].tables[0]
    assert confirm.rows[0][:2] == ["1", "1"] and confirm.rows[0][4] == "31 [28.5, 33.5] (3 seeds)"
    assert confirm.rows[0][5] == "-4"  # confirmed 31 - search 35
    importances = doc.sections[3]
    assert not importances.pictures
    assert importances.paragraphs[0].startswith("Not shown: 3 complete trials, fewer than the 10 this report asks")
    every = doc.sections[4].tables[0].rows
    assert every[2][1] == "pruned" and every[2][3] == "last periodic 92" and every[2][4] == "fid 92 at step 2"
    assert every[1][1] == "complete (best)"
    budget = " ".join(doc.sections[5].paragraphs)
    # 3 complete trials x 2 seeds x 4 steps + pruned 2 seeds x 2 steps + 6 confirmations x 4 steps
    assert "14 trainings (8 in the search, 6 confirmation); 52 training steps of 8 images each" in budget
    assert "seeds (0, 1); confirmation seeds: 100, 101, 102" in budget
    assert "N = 16 generated samples against 5,000 reference images" in budget


def test_importances_are_shown_from_10_complete_trials_with_their_count(sweep):
    section = build_sweep_document(with_complete_trials(sweep("clear"), 10)).sections[3]
    assert section.pictures and section.pictures[0].png == png()
    assert "over the 10 complete trials" in section.paragraphs[0]
    section = build_sweep_document(with_complete_trials(sweep("clear"), 9)).sections[3]
    assert not section.pictures and "Not shown: 9 complete trials" in section.paragraphs[0]


def test_an_unavailable_importance_figure_says_why(sweep):
    section = build_sweep_document(with_complete_trials(sweep("overlap"), 10)).sections[3]
    assert not section.pictures
    assert "too few complete trials" in section.paragraphs[-1]


def _sweep_spec(tmp_path, name, **changes):
    spec = {
        "name": name,
        "question": "Which learning rate and width give the lowest FID?",
        "base": {
            "data": {"dataset": "mnist-5k"},
            "model": {"conditional": True},
            "train": {"steps": STEPS, "eval_every": 2},
        },
        "seeds": [0, 1],
        "evaluate": {"sampler": ["ddim"], "steps": [3], "guidance": [1.0]},
        "search": {"params": SPACE, "objective": {"metric": "fid"}, "n_trials": 5},
        "profiles": {"smoke": {"search": {"n_trials": 2}}},
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _report(argv, capsys):
    code = main(["report", *argv])
    return code, capsys.readouterr()


def test_report_spec_writes_both_files_and_logs_them_to_the_parent(store, tmp_path, capsys):
    parent = make_sweep(store, store.tmp, "sweep-spec", confirms=CLEAR)
    out = tmp_path / "out"
    code, cap = _report(
        [str(_sweep_spec(tmp_path, "sweep-spec")), "--tracking-uri", store.uri, "--out", str(out)], capsys
    )
    assert code == 0, cap.err
    md, html = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert md.startswith("# sweep-spec: sweep report (study sweep-spec)")
    assert "**Which learning rate and width give the lowest FID?** Study sweep-spec" in md
    assert "(optimization_history.png)" in md and "(param_importances.png)" not in md  # 3 complete trials
    assert "data:image/png;base64," in html and "trial 1 beats trial 3" in html
    assert "Against the literature" not in md  # the spec has no literature section
    logged = {f.path for f in store.client.list_artifacts(parent, "report")}
    assert {"report/index.html", "report/report.md", "report/parameter_slices.png"} <= logged
    assert f"logged to run {parent}" in cap.out


def test_a_sweep_report_shows_its_specs_literature_as_context_with_why(store, tmp_path, capsys):
    make_sweep(store, store.tmp, "sweep-papers", confirms=CLEAR)
    source = {"authors": "Karras et al.", "year": 2024, "title": "T", "where": "Section 3", "checked": "its text"}
    why = "a sweep has no arms to compare, so this is context for the slices"
    entry = {"source": source, "claim": "EMA length and learning rate interact", "differences": "ImageNet latents"}
    spec = _sweep_spec(tmp_path, "sweep-papers", literature=[{**entry, "unchecked": why}])
    out = tmp_path / "out"
    code, cap = _report([str(spec), "--tracking-uri", store.uri, "--out", str(out)], capsys)
    assert code == 0, cap.err
    md = (out / "report.md").read_text()
    section = md.split("## Against the literature", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| Karras et al. (2024), Section 3"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "EMA length and learning rate interact" and cells[4] == "not checked"
    assert cells[5] == f"why not: {why}" and cells[6] == "ImageNet latents"
    assert md.index("## Every trial") < md.index("## Against the literature")


def test_report_spec_profile_picks_the_profiles_study(store, tmp_path, capsys):
    make_sweep(store, store.tmp, "profiled", study="profiled-smoke", profile="smoke")
    spec = str(_sweep_spec(tmp_path, "profiled"))
    out = tmp_path / "out"
    code, cap = _report([spec, "--tracking-uri", store.uri, "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert cap.err.strip().count("\n") == 0
    assert "no sweep of study 'profiled'; its studies: profiled-smoke (choose one with --profile)" in cap.err
    code, cap = _report([spec, "--profile", "smoke", "--tracking-uri", store.uri, "--out", str(out)], capsys)
    assert code == 0, cap.err
    assert "study profiled-smoke" in (out / "report.md").read_text()


def test_report_experiment_detects_the_sweep(store, sweep, tmp_path, capsys):
    sweep("unconfirmed")
    out = tmp_path / "out"
    code, cap = _report(["--experiment", "unconfirmed", "--tracking-uri", store.uri, "--out", str(out)], capsys)
    assert code == 0, cap.err
    md = (out / "report.md").read_text()
    assert "winner's curse" in md and (out / "index.html").exists()


@pytest.mark.parametrize("experiment", ["empty", "missing"])
def test_nothing_to_report_is_one_line_and_exit_2(store, tmp_path, capsys, experiment):
    if experiment != "missing":
        store.experiment_id(experiment)
    out = tmp_path / "out"
    code, cap = _report(["--experiment", experiment, "--tracking-uri", store.uri, "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert re.fullmatch(r"error: [^\n]+\n", cap.err), cap.err
    assert repr(experiment) in cap.err


def test_a_study_that_is_not_there_is_nothing_to_report(store, sweep):
    sweep("clear")
    with pytest.raises(NothingToReport, match="its studies: clear"):
        load_sweep_data(store, "clear", study="other")


def test_a_best_value_at_the_edge_of_its_range_is_named(sweep):
    data = sweep("clear")
    assert "outside the searched range" not in answer(data)  # lr 0.003: inside a 1e-4..1e-2 log range
    data.trials.loc[data.trials["trial"] == 1, "train.lr"] = "0.0095"  # 99% of the way on the log scale
    assert (
        "The best configuration has train.lr = 0.0095 at the upper end of its range (0.0001 to 0.01): "
        "the optimum may lie outside the searched range" in answer(data)
    )
    unconfirmed = sweep("unconfirmed")
    unconfirmed.trials.loc[unconfirmed.trials["trial"] == 1, "train.lr"] = "0.000105"
    assert "train.lr = 0.000105 at the lower end of its range" in answer(unconfirmed)


def test_one_loader_reads_the_models_of_harness_train_harness_run_and_a_sweep(store):
    """Every trained model is a run of role train with config.flat() as params (the one tag layout): an
    experiment of harness train runs alone is an ablation without a plan; a sweep's models are its study's."""
    config = build_config({"train": {"steps": STEPS, "batch_size": 8}, "diffusion": {"schedule": "cosine"}})
    setting = SamplerSetting(sampler="ddim", steps=3, guidance=1.0)
    trained = store.experiment_id("trained-only")  # what `harness train --experiment` leaves: no parent run
    for seed in (0, 1):
        log_trained_model(store, trained, config, seed=seed, evals={setting: {"fid": 40.0 + seed, "nfe": 3.0}})
    assert report_kind(store, "trained-only") == report_kind(store, "trained-only", "ablation") == "ablation"
    data = load_experiment(store, "trained-only")
    assert data.parent_run_id is None and not data.planned and data.settings == [setting.label]
    assert list(data.runs["seed"]) == [1, 0] and set(data.runs["steps"]) == {STEPS}
    assert set(data.runs["process"]) == {"ddpm"} and set(data.runs["dataset"]) == {config.data.dataset}
    assert sorted(data.evals["fid"]) == [40.0, 41.0]

    ablation = store.experiment_id("ablation-layout")
    parent = store.start_run(ablation, "parent", {schema.ROLE: "ablation"})
    arm = json.dumps({"diffusion.schedule": "cosine"})
    log_trained_model(
        store, ablation, config, seed=0, tags={schema.ARM: arm}, parent=parent.run_id, evals={setting: {}}
    )
    parent.finish("FINISHED")
    assert report_kind(store, "ablation-layout") == "ablation"
    assert load_experiment(store, "ablation-layout").arms == ["cosine"]

    make_sweep(store, store.tmp, "sweep-layout")  # its trials' seeds and confirmations are training runs too
    before = len(load_experiment(store, "sweep-layout", study="sweep-layout").runs)
    for trial, seed in ((1, 0), (1, 1)):
        sweep_tags = {schema.STUDY: "sweep-layout", schema.TRIAL: trial}
        log_trained_model(store, store.experiment_id("sweep-layout"), config, seed=seed, tags=sweep_tags)
    assert report_kind(store, "sweep-layout") == "sweep"
    assert load_experiment(store, "sweep-layout").runs.empty  # no model of no study
    assert len(load_experiment(store, "sweep-layout", study="sweep-layout").runs) == before + 2
