"""Reports count training in epochs when the runs' configs do (fixture tables, no MLflow)."""

import math

import pytest
from analysis_fixtures import S, fixture_data

from analysis import figures
from analysis.load import epoch_length, run_config
from analysis.report import answer, build_document, guidance_section, progress_section
from harness.config import build_config

FIDS = {("linear", S): {"fid": [55.0, 56.5, 54.8]}, ("cosine", S): {"fid": [50.0, 52.0, 51.0]}}
REC_AT = {"linear": 1500, "cosine": 1000}  # steps; evaluations at steps 500, 1,000, 1,500 and 2,000


@pytest.fixture(scope="module")
def in_epochs(tmp_path_factory):
    """2,000 steps of 20 steps an epoch: evaluations at epochs 25, 50, 75 and 100."""
    return fixture_data(tmp_path_factory.mktemp("epochs"), FIDS, rec_at=REC_AT, steps_per_epoch=20)


def test_recognizability_is_answered_in_epochs(in_epochs):
    words = answer(in_epochs)
    assert (
        "digits become recognizable (recognizability reaches 0.8 with ddim-50-eta0-w0 and stays there) between "
        "epoch 25 and 50 (all 3 seeds) with cosine; between epoch 50 and 75 (all 3 seeds) with linear; cosine is "
        "sooner in every seed"
    ) in words.lower()
    assert "2,000 training steps (100 epochs of 20 steps) x 64 images = 128,000 images seen per run" in words
    assert "at step" not in words


def test_the_table_and_figures_count_epochs(in_epochs):
    section = progress_section(in_epochs)
    table = section.tables[0]
    assert table.header[-1] == "epoch at which recognizability reached the threshold and stayed"
    assert [row[2] for row in table.rows] == ["between 50 and 75"] * 3 + ["between 25 and 50"] * 3
    curves = in_epochs.curves.assign(step=in_epochs.to_unit(in_epochs.curves))
    fig = figures.metric_curves(curves, S, ("fid", "recognizability"), in_epochs.arms, unit="epoch")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training epoch" and max(ax.lines[0].get_xdata()) == 100
    grids = in_epochs.grids.assign(step=in_epochs.to_unit(in_epochs.grids))
    strip = figures.sample_strip(grids, S, in_epochs.arms, unit="epoch")
    assert [a.get_title() for a in strip.axes if a.get_title()] == ["epoch 25", "epoch 50", "epoch 75", "epoch 100"]
    loss = figures.loss_curves(
        in_epochs.loss.assign(step=in_epochs.to_unit(in_epochs.loss)), in_epochs.arms, unit="epoch"
    )
    assert loss.axes[0].get_xlabel() == "training epoch"
    captions = {p.name: p.caption for s in build_document(in_epochs).sections for p in s.pictures}
    assert "at evaluation epochs over training" in captions["samples_over_training"]
    assert captions["loss"].startswith("Training loss against epoch")


def test_runs_counted_in_steps_keep_steps(tmp_path):
    data = fixture_data(tmp_path, FIDS, rec_at=REC_AT, pngs=False)
    assert data.unit == "step"
    assert "between step 500 and 1,000 (all 3 seeds) with cosine" in answer(data)
    assert (
        progress_section(data).tables[0].header[-1] == "step at which recognizability reached the threshold and stayed"
    )


def test_seeds_are_listed_in_ascending_order_within_each_arm(tmp_path):
    data = fixture_data(tmp_path, FIDS, rec_at=REC_AT, pngs=False)
    data.runs = data.runs.iloc[::-1].reset_index(drop=True)  # the store lists runs newest first
    rows = progress_section(data).tables[0].rows
    assert [(r[0], r[1]) for r in rows] == [(a, s) for a in ("linear", "cosine") for s in (0, 1, 2)]


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"train.epochs": "10", "train.steps": "790", "train.batch_size": "64", "train.eval_epochs": "[]"}, 79.0),
        (
            {"train.epochs": "None", "train.steps": "1000", "train.eval_epochs": "[2, 5]", "data.dataset": "mnist-5k"}
            | {"train.batch_size": "64"},
            79.0,
        ),
        ({"train.epochs": "None", "train.steps": "1000", "train.eval_epochs": "[]"}, math.nan),
        ({"train.steps": "1500"}, math.nan),  # a run logged before epochs existed
    ],
)
def test_the_unit_comes_from_the_logged_config(params, expected):
    got = epoch_length(run_config(params))
    assert got == expected or (math.isnan(got) and math.isnan(expected))


def test_the_exercise_report_answers_both_questions(tmp_path):
    """One conditional arm, five guidance weights, periodic evaluations in epochs: the spec seed-exercise."""
    acc = {0: [0.6, 0.62, 0.61], 1: [0.8, 0.82, 0.81], 3: [0.9, 0.93, 0.91], 7.5: [0.95, 0.94, 0.96], 15: [0.96] * 3}
    fid = {0: [10.0, 10.5, 10.2], 1: [11.0, 11.2, 11.4], 3: [14.0, 14.5, 14.1], 7.5: [20.0, 21.0, 20.4], 15: [40.0] * 3}
    final = {("base", f"ddim-50-eta0-w{w:g}"): {"fid": fid[w], "class_accuracy": acc[w]} for w in acc}
    data = fixture_data(tmp_path, final, conditional=True, rec_at={"base": 1000}, steps_per_epoch=20, pngs=False)
    words = answer(data)
    assert words.split("** ", 1)[1].startswith(  # after the bold verdict
        "Digits become recognizable (recognizability reaches 0.8 with ddim-50-eta0-w0 and stays there) between "
        "epoch 25 and 50 (all 3 seeds) with base. Class accuracy is highest at w = 15"
    )
    assert "FID is lowest at w = 0" in words and "Pareto-optimal (FID against class accuracy): w = 0" in words
    assert guidance_section(data).tables[0].header[:3] == ["arm", "w", "seeds with class accuracy"]


def test_the_logged_params_carry_the_unit():
    """What a training run logs (``config.flat()``, each value as a string) is what the loader reads."""
    logged = lambda config: {k: str(v) for k, v in config.flat().items()}  # noqa: E731 - as MlflowTracker.log_params
    unit = lambda train: epoch_length(run_config(logged(build_config({"train": train}))))  # noqa: E731
    assert unit({"epochs": 3, "batch_size": 64}) == 79.0
    assert unit({"steps": 790, "batch_size": 64, "eval_epochs": [5]}) == 79.0
    assert math.isnan(unit({"steps": 790, "batch_size": 64}))
