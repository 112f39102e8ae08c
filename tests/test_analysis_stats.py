"""Statistics over seeds on fixture tables with known answers: a clear winner, a tie, one seed."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.answers import arms_answer
from analysis.stats import band, compare, compare_to_reference, estimate, holm, pareto_front
from analysis.words import NO_DIFFERENCE, comparison_sentence


def table(values: dict[str, list[float]], seeds: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """One row per (arm, seed), like the evals table at one setting."""
    rows = [
        {"arm_label": arm, "seed": (seeds or {}).get(arm, range(len(v)))[i], "fid": x}
        for arm, v in values.items()
        for i, x in enumerate(v)
    ]
    return pd.DataFrame(rows)


# a - b per seed: -5, -4.5, -3.8 -> mean -4.4333, sd 0.60277; t(0.975, 2) = 4.3027
CLEAR = {"cosine": [50.0, 52.0, 51.0], "linear": [55.0, 56.5, 54.8]}
TIE = {"cosine": [50.0, 52.0, 51.0], "linear": [51.0, 50.5, 52.2]}


def test_clear_winner_paired_t_golden_numbers():
    c = compare(table(CLEAR), "fid", "cosine", "linear", lower_is_better=True)
    assert c.test == "paired t" and c.diff.n == 3
    assert c.diff.mean == pytest.approx(-4.433333, abs=1e-6)
    assert (c.diff.low, c.diff.high) == pytest.approx((-5.930700, -2.935966), abs=1e-5)
    assert c.p == pytest.approx(0.0061056, abs=1e-6)  # scipy.stats.ttest_rel, t = -12.74 on 2 df
    assert c.significant and c.winner == "cosine" and c.margin == pytest.approx(4.433333, abs=1e-6)
    words = comparison_sentence(c, "FID")
    assert words.startswith("cosine beats linear by 4.43 FID (95% CI 2.94 to 5.93, 3 seeds, paired t-test p = 0.0061")
    assert arms_answer(table(CLEAR), ["linear", "cosine"]) == words


def test_winner_is_the_better_side_whatever_the_argument_order():
    c = compare(table(CLEAR), "fid", "linear", "cosine", lower_is_better=True)
    assert c.winner == "cosine" and comparison_sentence(c, "FID").startswith("cosine beats linear by 4.43 FID")
    higher = compare(
        table(CLEAR).rename(columns={"fid": "recall"}), "recall", "cosine", "linear", lower_is_better=False
    )
    assert higher.winner == "linear"


def test_tie_is_no_significant_difference_never_a_winner():
    c = compare(table(TIE), "fid", "cosine", "linear", lower_is_better=True)
    assert c.test == "paired t" and c.p == pytest.approx(0.81338, abs=1e-4)
    assert c.diff.low < 0 < c.diff.high
    assert not c.significant and c.winner is None and math.isnan(c.margin)
    assert comparison_sentence(c, "FID").startswith(NO_DIFFERENCE)
    assert "beats" not in arms_answer(table(TIE), ["linear", "cosine"])


def test_one_seed_gives_values_and_no_test():
    df = table({"cosine": [50.0], "linear": [55.0]})
    c = compare(df, "fid", "cosine", "linear", lower_is_better=True)
    assert c.test == "none" and math.isnan(c.p) and c.winner is None
    assert c.a_est.method == "single seed" and math.isnan(c.a_est.low)
    words = arms_answer(df, ["linear", "cosine"])
    assert words.startswith("not tested (1 seed per arm), only the values: FID cosine 50 (1 seed); linear 55 (1 seed)")
    assert "beats" not in words and NO_DIFFERENCE not in words


def test_different_seeds_use_welch():
    df = table(CLEAR, seeds={"cosine": [0, 1, 2], "linear": [3, 4, 5]})
    c = compare(df, "fid", "cosine", "linear", lower_is_better=True)
    assert c.test == "Welch t" and c.p == pytest.approx(0.0049906, abs=1e-6) and c.winner == "cosine"
    assert c.diff.low < -4.433 < c.diff.high < 0


def test_estimate_is_the_t_interval_at_any_number_of_seeds():
    e = estimate([1.0, 2.0, 3.0])
    assert (
        e.method == "t" and e.mean == 2.0 and (e.low, e.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    )
    x = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]  # scipy.stats.t.interval(0.95, 5, 12.5, sem) = 10.5367 .. 14.4633
    assert (estimate(x).low, estimate(x).high) == pytest.approx((10.536686, 14.463314), abs=1e-5)
    assert estimate([]).method == "none" and estimate([3.0]).method == "single seed"
    assert estimate([3.0, float("nan"), None]).n == 1  # NaN is no observation
    flat = estimate([2.0, 2.0, 2.0])
    assert flat.method == "zero variance" and not flat.has_interval  # no zero-width "certainty"


def closed_form_t(d_mean: float, se: float, dof: float) -> tuple[float, float, float]:
    """(p, low, high) of t = d_mean / se on ``dof`` degrees of freedom, by the textbook formulas: the oracle
    for analysis.stats, which calls scipy.stats' tests (only the t distribution is shared)."""
    q = sps.t.ppf(0.975, dof)
    return 2 * sps.t.sf(abs(d_mean) / se, dof), d_mean - q * se, d_mean + q * se


def test_paired_interval_agrees_with_its_test():
    """The interval is the paired t-test's own: it excludes 0 exactly when p < 0.05; p and interval
    match the closed-form paired and Welch t."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        a, b = rng.normal(0, 1, 4), rng.normal(0.8, 1, 4)
        c = compare(table({"a": list(a), "b": list(b)}), "fid", "a", "b", lower_is_better=True)
        assert (c.diff.low > 0 or c.diff.high < 0) == (c.p < 0.05)
        d = a - b
        p, low, high = closed_form_t(d.mean(), d.std(ddof=1) / 2, 3)
        assert (c.p, c.diff.low, c.diff.high) == pytest.approx((p, low, high), rel=1e-9)
        w = compare(
            table({"a": list(a), "b": list(b[:3])}, seeds={"b": [7, 8, 9]}), "fid", "a", "b", lower_is_better=True
        )
        va, vb = a.var(ddof=1) / 4, b[:3].var(ddof=1) / 3  # Welch-Satterthwaite degrees of freedom
        dof = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
        p, low, high = closed_form_t(a.mean() - b[:3].mean(), math.sqrt(va + vb), dof)
        assert w.test == "Welch t" and (w.p, w.diff.low, w.diff.high) == pytest.approx((p, low, high), rel=1e-9)
        assert (w.diff.low > 0 or w.diff.high < 0) == (w.p < 0.05)
    welch = compare(
        table(CLEAR, seeds={"cosine": [0, 1, 2], "linear": [3, 4, 5]}), "fid", "cosine", "linear", lower_is_better=True
    )
    assert (welch.diff.high < 0) == (welch.p < 0.05)


def test_holm_and_family_of_comparisons():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([float("nan"), 0.02])[0]) and holm([float("nan"), 0.02])[1] == 0.02
    df = table({**CLEAR, "sigmoid": [50.5, 51.5, 51.2]})
    comps = compare_to_reference(df, "fid", "cosine", ["linear", "sigmoid"], lower_is_better=True)
    assert [c.winner for c in comps] == ["cosine", None]
    words = arms_answer(df, ["linear", "cosine", "sigmoid"])
    assert words.startswith("cosine has the lowest mean FID") and "it beats linear by" in words
    assert f"against sigmoid there is {NO_DIFFERENCE}" in words


def test_band_pareto_and_first_crossing():
    df = pd.DataFrame({"arm": ["a"] * 4, "step": [1, 1, 2, 2], "loss": [1.0, 3.0, 2.0, 2.0]})
    b = band(df, "step", "loss", "arm").set_index("step")
    assert b.at[1, "mean"] == 2.0 and b.at[1, "high"] - 2.0 == pytest.approx(12.7062047, abs=1e-5)
    assert b.at[2, "low"] == b.at[2, "high"] == 2.0
    pts = pd.DataFrame({"nfe": [10, 20, 20, 100, 1000], "fid": [50, 40, 45, 41, 30]})
    assert pareto_front(pts, minimize=("nfe", "fid")).index.tolist() == [0, 1, 4]
    guid = pd.DataFrame({"fid": [10, 12, 15, 16], "acc": [0.5, 0.8, 0.9, 0.85]})
    assert pareto_front(guid, minimize=("fid",), maximize=("acc",)).index.tolist() == [0, 1, 2]
    assert np.isfinite(b["mean"]).all()


def test_a_metrics_interval_stays_within_its_range():
    """Two seeds give a wide t-interval: a FID's is cut at 0 and an accuracy's at 1, the mean untouched."""
    from analysis.stats import metric_estimate

    fid = metric_estimate([5.0, 60.0], "fid")
    assert fid.low == 0.0 and fid.high > 60 and fid.mean == 32.5
    acc = metric_estimate([0.95, 1.0], "class_accuracy")
    assert acc.high == 1.0 and acc.low < 0.95 and acc.mean == 0.975
