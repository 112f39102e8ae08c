"""The Pareto front of cost against FID: per arm (never a FID averaged over different models), with NFE
as batch rows and classifier passes as a separate cost (fixture tables, no MLflow)."""

import math

from analysis_fixtures import fixture_data

from analysis.answers import front_sentence, settings_front

FAST, SLOW = "ddim-10-eta0-w0", "ddim-50-eta0-w0"


def test_the_front_is_per_arm_and_never_averages_fid_across_arms(tmp_path):
    """Averaged over the two models, ddim-10 (FID 12.5) would dominate ddim-50 (20) and erase a's best setting."""
    final = {
        ("a", FAST): {"fid": [20.0, 20.0]},
        ("a", SLOW): {"fid": [10.0, 10.0]},
        ("b", FAST): {"fid": [5.0, 5.0]},
        ("b", SLOW): {"fid": [30.0, 30.0]},
    }
    data = fixture_data(tmp_path, final, pngs=False)
    front = settings_front(data.evals)
    assert front[["arm_label", "setting", "fid"]].values.tolist() == [
        ["a", FAST, 20.0],
        ["a", SLOW, 10.0],
        ["b", FAST, 5.0],
    ]
    assert 12.5 not in set(front["fid"])
    words = front_sentence(data.evals)
    assert words.startswith("Pareto front of each arm's settings (no setting of that arm is both cheaper and better")
    assert (
        f"a: {FAST} (10 NFE, FID 20); {SLOW} (50 NFE, FID 10) | b: {FAST} (10 NFE, FID 5). NFE counts network "
        "evaluations per sample as batch rows (a classifier-free-guided step counts 2)."
    ) in words
    assert "classifier passes" not in words


def test_a_guided_step_costs_its_batch_rows(tmp_path):
    """Classifier-free guidance at 10 steps runs 20 batch rows: it does not dominate unguided 20 steps at equal FID."""
    guided, plain = "ddim-10-eta0-w3", "ddim-20-eta0-w0"
    final = {("base", guided): {"fid": [10.0, 10.0], "nfe": [20.0, 20.0]}, ("base", plain): {"fid": [9.0, 9.0]}}
    front = settings_front(fixture_data(tmp_path, final, pngs=False).evals)
    assert front["setting"].tolist() == [plain]  # same 20 NFE, lower FID


def test_classifier_passes_are_a_separate_cost_and_may_be_missing(tmp_path):
    guided, plain, worse = "ddim-10-eta0-w0-cg3", "ddim-10-eta0-w0", "ddim-10-eta1-w0"
    final = {
        ("base", guided): {"fid": [10.0, 10.0]},
        ("base", plain): {"fid": [12.0, 12.0]},
        ("base", worse): {"fid": [15.0, 15.0]},
    }
    data = fixture_data(tmp_path, final, pngs=False)
    logged = data.evals.assign(classifier_passes=data.evals["classifier_scale"].gt(0) * 10.0)
    front = settings_front(logged)
    assert front[["setting", "classifier_passes"]].values.tolist() == [[guided, 10.0], [plain, 0.0]]
    assert f"{guided} (10 NFE, 10 classifier passes, FID 10); {plain} (10 NFE, 0 classifier passes, FID 12)" in (
        front_sentence(logged)
    )
    assert "classifier passes (forward and backward per sample) are a separate cost" in front_sentence(logged)
    # Older runs: no column. No classifier means 0 passes; a classifier-guided one's are unknown, so kept, marked.
    older = settings_front(data.evals.drop(columns="classifier_passes", errors="ignore"))
    assert older["setting"].tolist() == [guided, plain]
    assert math.isnan(older["classifier_passes"].iloc[0]) and older["classifier_passes"].iloc[1] == 0
    assert f"{guided} (10 NFE, classifier passes not logged, FID 10)" in front_sentence(data.evals)
