"""Adversarial tables for every answer rule: nothing the plan asked for disappears, nothing untested
reads as a tie, nothing incomparable is ranked."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from analysis_fixtures import S, fixture_data

from analysis import figures
from analysis.answers import (
    arms_answer,
    guidance_answer,
    settings_answer,
    settings_front,
)
from analysis.load import failure_reason
from analysis.report import (
    answer,
    build_document,
    comparison_section,
    final_metrics_section,
    guidance_section,
    settings_section,
    setup_section,
    training_section,
)
from analysis.words import LOWER_IS_BETTER, NO_DIFFERENCE
from harness.config.schema import METRICS, RUN_METRICS

NAN = float("nan")
GOOD = {"fid": [55.0, 56.5, 54.8]}
BETTER = {"fid": [50.0, 52.0, 51.0]}


def data(tmp_path, final, **kw):
    return fixture_data(tmp_path, final, pngs=False, **kw)


def test_directions_come_from_the_schema():
    assert LOWER_IS_BETTER["fid"] and LOWER_IS_BETTER["kid"] and LOWER_IS_BETTER["final_loss"]
    assert not LOWER_IS_BETTER["recall"] and not LOWER_IS_BETTER["recognized_class_accuracy"]
    assert set(LOWER_IS_BETTER) == {m for m, x in {**METRICS, **RUN_METRICS}.items() if x.lower_is_better is not None}


def test_an_arm_with_no_fid_in_any_seed_is_named(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER, ("sigmoid", S): {"fid": [NAN, NAN, NAN]}})
    words = answer(d)
    assert "cosine beats linear by 4.43 FID" in words and "sigmoid: no fid recorded" in words
    rows = comparison_section(d).tables[0].rows
    assert ["FID", "sigmoid", "", "none", "", "", "no fid recorded"] in rows
    final = final_metrics_section(d).tables[0]
    fid = final.header.index("FID")
    assert [r[fid] for r in final.rows if r[1] == "sigmoid"] == ["not recorded"]


def test_one_usable_seed_is_counted_as_one_and_never_wins(tmp_path):
    # cosine has 3 rows but only 1 finite FID, and that one is the best: it must not be named the winner.
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): {"fid": [40.0, NAN, NAN]}})
    words = answer(d)
    assert "not tested (fewer than 2 seeds with a FID in all but one arm)" in words
    assert "cosine 40 (1 seed); linear 55.4 (3 seeds)" in words
    assert "beats" not in words and NO_DIFFERENCE not in words
    three = data(
        tmp_path / "3", {("linear", S): GOOD, ("cosine", S): BETTER, ("sigmoid", S): {"fid": [40.0, NAN, NAN]}}
    )
    words = arms_answer(three.evals, three.arms)
    assert words.startswith("cosine has the lowest mean FID of the arms with 2 or more seeds")
    assert "it beats linear by" in words and "sigmoid 40, not tested (1 seed)" in words


def test_an_untested_comparison_is_never_no_significant_difference(tmp_path):
    d = data(tmp_path, {("linear", S): {"fid": [55.0]}, ("cosine", S): {"fid": [54.0]}})
    words = answer(d)
    assert "not tested (1 seed per arm)" in words and NO_DIFFERENCE not in words
    verdicts = [r[-1] for r in comparison_section(d).tables[0].rows]
    assert verdicts == ["not tested: 1 seed"] * len(verdicts) and verdicts


def test_constant_differences_say_the_uncertainty_cannot_be_estimated(tmp_path):
    d = data(tmp_path, {("linear", S): {"fid": [52.0, 54.0, 53.0]}, ("cosine", S): {"fid": [50.0, 52.0, 51.0]}})
    words = answer(d)
    assert (
        "identical in every seed (difference linear - cosine = 2 FID in each of 3 seeds, up to rounding), so its "
        "uncertainty cannot be estimated"
    ) in words
    assert "p = 0" not in words and "beats" not in words
    assert "zero variance" not in " ".join(r[-1] for r in comparison_section(d).tables[0].rows if r[0] == "precision")


SETTINGS = {
    "ddpm-1000-eta0-w0": {"fid": [10.0, 11.0, 10.5]},
    "ddim-50-eta0-w0": {"fid": [NAN, NAN, NAN]},
    "ddim-10-eta0-w0": {"fid": [20.0, 22.0, 21.0]},
}


def test_a_setting_without_fid_is_named_not_counted_as_no_loss(tmp_path):
    d = data(tmp_path, {("base", s): v for s, v in SETTINGS.items()}, question="Which sampler?")
    words = answer(d)
    assert "no FID recorded with ddim-50-eta0-w0 (50 NFE)" in words
    assert "no significant loss down to 50" not in words and "ddim eta=0: worse at 10 NFE by 10.5 FID" in words
    assert list(settings_front(d.evals)["setting"]) == ["ddim-10-eta0-w0", "ddpm-1000-eta0-w0"]
    rows = settings_section(d).tables[0].rows
    assert ["ddim-50-eta0-w0", "base", "50", "1", "no FID recorded", 0] in rows  # "1": sampling seconds
    none = settings_answer(d.evals[d.evals["setting"] == "ddim-50-eta0-w0"], ["ddim-50-eta0-w0", "ddim-20-eta0-w0"])
    assert none == (
        "no setting has a FID; no evaluation recorded with ddim-20-eta0-w0; "
        "no FID recorded with ddim-50-eta0-w0 (50 NFE)"
    )


def test_a_guidance_weight_without_accuracy_stays_in_the_text_and_the_front(tmp_path):
    acc = {0: [0.60, 0.62, 0.61], 1: [0.80, 0.82, 0.81], 2: [NAN, NAN, NAN], 4: [0.91, 0.92, 0.93]}
    fid = {0: [10.0, 10.5, 10.2], 1: [11.0, 11.2, 11.4], 2: [14.0, 14.5, 14.1], 4: [20.0, 21.0, 20.4]}
    d = data(
        tmp_path,
        {("base", f"ddim-50-eta0-w{w}"): {"fid": fid[w], "class_accuracy": acc[w]} for w in acc},
        conditional=True,
        question="Which w?",
    )
    words = answer(d)
    assert "no class accuracy recorded at w = 2" in words
    assert (
        "Pareto-optimal (FID against class accuracy): w = 0, w = 1, w = 4; w = 2 cannot be placed or ruled out" in words
    )
    section = guidance_section(d)
    assert ["base", "2", 0, "not recorded"] == section.tables[0].rows[2][:4]
    assert any("No class accuracy is recorded at w = 2" in p for p in section.paragraphs)


def test_recognized_class_accuracy_is_reported_with_guidance(tmp_path):
    acc = {0: [0.60, 0.62, 0.61], 2: [0.90, 0.93, 0.91]}
    final = {
        ("base", f"ddim-50-eta0-w{w}"): {
            "fid": [10.0 + w, 10.5 + w, 10.2 + w],
            "class_accuracy": acc[w],
            "recognized_class_accuracy": [a + 0.05 for a in acc[w]],
        }
        for w in acc
    }
    d = data(tmp_path, final, conditional=True)
    assert "among recognizable samples only, class accuracy is 0.66 at w = 0, 0.963 at w = 2" in guidance_answer(
        d.evals
    )
    assert "recognized_class_accuracy" in guidance_section(d).tables[0].header


def test_fids_at_different_sample_counts_are_not_ranked(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals.loc[d.evals["arm_label"] == "cosine", "num_generated"] = 1000.0
    d.arms.append("sigmoid")  # planned, never trained: still named beside the refusal
    d.missing = [{"arm": "diffusion.schedule=sigmoid", "seed": 0, "reason": "failed: out of memory"}]
    words = answer(d)
    assert "are not comparable; sigmoid: failed: out of memory." in words
    assert (
        "FIDs are not ranked: they were computed on different bases (N = 500 samples against 5,000 mnist-5k "
        "images for linear ddim-50-eta0-w0; N = 1,000 samples" in words
    )
    assert "beats" not in words.split("Final training")[0]
    assert "FID from 500 generated against 5,000 real images; 1,000 generated" in words
    rows = comparison_section(d).tables[0].rows
    assert ["FID", "linear - cosine", "", "none", "", "", "refused: different N (500 vs 1,000)"] in rows


def test_losses_are_compared_only_within_one_objective(tmp_path):
    arms = ["eps / fp32", "eps / bf16", "v / fp32"]
    loss = {"eps / fp32": [0.030, 0.031, 0.0305], "eps / bf16": [0.040, 0.0412, 0.0404], "v / fp32": [0.2, 0.21, 0.2]}
    d = data(tmp_path, {(a, S): GOOD for a in arms}, axis="diffusion.parameterization", final_loss=loss)
    d.runs["diffusion.parameterization"] = d.runs["arm_label"].str.split(" / ").str[0]
    d.runs["train.precision"] = d.runs["arm_label"].str.split(" / ").str[1]
    d.axes = ["diffusion.parameterization", "train.precision"]
    words = answer(d)
    assert (
        "On final training loss among eps / fp32 and eps / bf16 (same objective), eps / fp32 beats eps / bf16" in words
    )
    assert "v / fp32 beats" not in words and "beats v / fp32" not in words
    assert (
        "Final training losses of arms with different training objectives (eps / fp32 and eps / bf16 vs v / fp32) "
        "are on different scales and are not compared"
    ) in words
    assert any("different scales" in p for p in training_section(d).paragraphs)


def test_a_failed_arm_is_named_with_its_reason_in_the_first_sentence(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.arms.append("sigmoid")
    d.missing = [
        {
            "config_hash": f"hs{i}",
            "arm": "diffusion.schedule=sigmoid",
            "seed": i,
            "reason": "failed: non-finite loss at step 3",
        }
        for i in range(3)
    ]
    d.evals = d.evals[~((d.evals["arm_label"] == "linear") & (d.evals["seed"] == 2))]
    words = answer(d).split("** ", 1)[1]  # after the bold verdict
    assert words.startswith(
        "This plan has failures: 3 of 9 planned training runs did not finish (sigmoid seed 0: "
        "failed: non-finite loss at step 3;"
    )
    assert "1 planned evaluation(s) are missing (linear seed 2 with ddim-50-eta0-w0)" in words.split(". ")[0]
    assert (
        "sigmoid: failed: non-finite loss at step 3"
        in words.split("This plan has failures")[1].split("Budget")[0].split("On FID")[1]
    )
    assert any("sigmoid seed 0 (failed: non-finite loss at step 3)" in p for p in setup_section(d).paragraphs)
    assert ["FID", "sigmoid", "", "none", "", "", "failed: non-finite loss at step 3"] in comparison_section(d).tables[
        0
    ].rows
    d.runs, d.evals = d.runs.iloc[:0], d.evals.iloc[:0]  # every job failed: the reasons are the whole answer
    d.missing = [{"arm": "base", "seed": 0, "reason": "failed: out of memory"}]
    assert (
        answer(d)
        .split("** ", 1)[1]
        .startswith(
            "This plan has failures: 1 of 1 planned training runs did not finish (base seed 0: failed: out of memory)"
        )
    )
    assert setup_section(d).paragraphs == ["No finished training run. base seed 0: failed: out of memory."]


def test_without_a_plan_an_unevaluated_setting_is_no_failure(tmp_path):
    d = data(
        tmp_path,
        {
            ("linear", S): GOOD,
            ("cosine", S): BETTER,
            ("linear", "ddim-10-eta0-w0"): GOOD,
            ("cosine", "ddim-10-eta0-w0"): BETTER,
        },
    )
    d.evals = d.evals[~((d.evals["arm_label"] == "linear") & (d.evals["setting"] == "ddim-10-eta0-w0"))]
    assert answer(d).split("** ", 1)[1].startswith("This plan has failures: 3 planned evaluation(s) are missing")
    d.planned = False  # loaded with latest_plan=False: settings are whatever any run was evaluated with
    assert "This plan has failures" not in answer(d)


def test_failure_reason_reads_the_error_tag():
    def run(status, **tags):
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))

    assert (
        failure_reason(run("FAILED", **{"harness.error": "non-finite loss at step 3"}))
        == "failed: non-finite loss at step 3"
    )
    assert failure_reason(run("KILLED")) == "killed (no error recorded)"
    assert failure_reason(None) == "not trained: no training run recorded"
    assert failure_reason(run("RUNNING")).startswith("still running")


def test_mixed_code_versions_are_named_and_flagged(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.runs.loc[d.runs["arm_label"] == "cosine", ["code_version", "commit"]] = ["v2", "def456"]
    d.evals.loc[d.evals["arm_label"] == "cosine", ["code_version", "commit"]] = ["e2", "def456"]
    doc = build_document(d)
    assert (
        "These results mix 2 versions of the training code: v1 (linear seeds 0, 1, 2), v2 (cosine seeds 0, 1, 2) "
        "and 2 versions of the evaluation code: e1 (linear seeds 0, 1, 2), e2 (cosine seeds 0, 1, 2); git commits "
        "abc123, def456. Comparisons between runs made by different code"
    ) in doc.answer
    assert "training code v1, v2; evaluation code e1, e2; git commit abc123, def456" in doc.footer
    # One training code, one evaluation code (always two different hashes): nothing is mixed.
    same = data(tmp_path / "same", {("linear", S): GOOD, ("cosine", S): BETTER})
    assert "versions of the" not in answer(same)
    # Re-evaluated by new evaluation code on one arm only: flagged, the training code is not named.
    only = data(tmp_path / "only", {("linear", S): GOOD, ("cosine", S): BETTER})
    only.evals.loc[only.evals["arm_label"] == "cosine", "code_version"] = "e2"
    text = answer(only)
    assert "mix 2 versions of the evaluation code: e1 (linear seeds 0, 1, 2), e2 (cosine seeds 0, 1, 2)" in text
    assert "training code" not in text and "Comparisons between runs made by different code" in text


def test_heun_is_explained_with_its_counted_nfe(tmp_path):
    d = data(
        tmp_path,
        {
            ("base", "heun-18-eta0-w0"): {"fid": [12.0, 12.5, 12.2]},
            ("base", "ddim-50-eta0-w0"): {"fid": [12.1, 12.4, 12.3]},
        },
    )
    d.evals.loc[d.evals["sampler"] == "heun", "nfe"] = 27.0
    words = answer(d)
    assert "only below sigma_max = 80: steps from noise levels above it, and the last step, are Euler steps" in words
    assert "not Karras' full Heun" in words and "(heun-18-eta0-w0: 27 NFE)" in words
    no = answer(data(tmp_path / "no", {("base", S): BETTER, ("base", "ddim-10-eta0-w0"): GOOD}))
    assert "heun" not in no, no


def test_kid_unit_is_stated_and_compute_agrees_with_sample_seconds(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals["sample_seconds"] = 30.0
    table = final_metrics_section(d).tables[0]
    assert table.rows[0][table.header.index("KID")] == "0.01 (all seeds equal)"  # kid 0.01 in the fixture: unscaled
    setup = " ".join(setup_section(d).paragraphs)
    assert "Sampling the final evaluations took 3 min (the sum of their own sample_seconds" in setup
    assert (
        not any("10^" in h for h in table.header)
        and "so its unit is theirs and it is shown unscaled" in setup
        and "confident on some noise" not in setup
    )
    assert "reject class of synthetic non-digits" in setup and "data manifold" not in setup


def test_first_evaluation_note_no_longer_blames_noise(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER}, rec_at={"linear": 500, "cosine": 1000})
    words = answer(d)
    assert "at or before step 500, the first evaluation (all 3 seeds) with linear" in words and "noise" not in words


def test_samples_by_setting_shows_every_setting_wrapped(tmp_path):
    settings = [f"ddim-{n}-eta0-w0" for n in (5, 10, 15, 20, 25, 30, 35, 40, 50)]
    d = fixture_data(tmp_path, {(a, s): {"fid": [1.0]} for a in ("linear", "cosine") for s in settings})
    fig = figures.final_samples(d.grids, d.settings, d.arms)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 2 * len(settings)  # no silent cut
    assert {ax.get_title() for ax in shown if ax.get_title()} == set(settings)
    per_row = figures.SETTINGS_PER_ROW
    assert len(fig.axes) == 2 * math.ceil(len(settings) / per_row) * per_row


def test_estimates_use_finite_values_only(tmp_path):
    d = data(tmp_path, {("linear", S): {"fid": [55.0, NAN, 54.0]}, ("cosine", S): {"fid": [50.0, 52.0, 51.0]}})
    words = answer(d)  # linear: 2 usable seeds, different from cosine's 3: Welch on what is there
    assert "Welch t-test" in words and np.isfinite(d.evals["fid"]).sum() == 5
    with pytest.raises(KeyError):
        LOWER_IS_BETTER["nfe"]


def test_fids_in_different_feature_spaces_are_not_ranked(tmp_path):
    # Same N and reference set, but one arm was scored with another machine's own domain classifier.
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals["feature_fingerprint"] = "aaaa1111"
    d.evals.loc[d.evals["arm_label"] == "cosine", "feature_fingerprint"] = "bbbb2222"
    words = answer(d)
    assert "beats" not in words.split("Final training")[0]
    assert "against 5,000 mnist-5k images in the features of classifier bbbb2222 for cosine" in words
    assert "a different domain classifier is a different feature space" in words


def test_one_feature_space_is_not_mentioned(tmp_path):
    d = data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals["feature_fingerprint"] = "aaaa1111"
    words = answer(d)
    assert "cosine beats linear" in words and "features of classifier" not in words
