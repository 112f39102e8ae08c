"""First crossings as censored data: each rule on curves whose answer is known by construction (fixture
tables, no MLflow). Evaluations of the fixture are at steps 500, 1,000, 1,500 and 2,000; threshold 0.8."""

import json

import numpy as np
import pytest
from analysis_fixtures import STEPS, S, fixture_data

from analysis.crossing import (
    Crossing,
    censored_median,
    crossing_entries,
    first_crossing,
    recognizable_answer,
    recognizable_steps,
)
from analysis.report import answer, progress_section

UP, DOWN = 0.9, 0.3
FID = [50.0, 51.0, 52.0, 53.0]


def at(step: int) -> list[float]:
    """A curve below the threshold before ``step`` and above from it on (None: never above)."""
    return [UP if step is not None and s >= step else DOWN for s in STEPS]


def with_curves(tmp_path, curves: dict[str, list[list[float]]], **kw):
    """Fixture data whose recognizability curve of (arm, seed) is ``curves[arm][seed]`` (one value per STEPS)."""
    n = len(next(iter(curves.values())))
    data = fixture_data(tmp_path, {(arm, S): {"fid": FID[:n]} for arm in curves}, pngs=False, **kw)
    rec = data.curves["metric"] == "recognizability"
    for arm, seeds in curves.items():
        for seed, values in enumerate(seeds):
            for step, v in zip(STEPS, values):
                where = rec & (data.curves["arm_label"] == arm) & (data.curves["seed"] == seed)
                data.curves.loc[where & (data.curves["step"] == step), "value"] = v
    return data


def words(data) -> str:
    text = answer(data)
    return text[text.index("Digits become recognizable") :]


# -- one run ------------------------------------------------------------------------------------------


def test_a_crossing_lies_between_the_last_evaluation_below_and_the_first_above():
    assert first_crossing(STEPS, at(1500), 0.8) == Crossing(1000.0, 1500.0, 2000.0, False)
    assert first_crossing(STEPS, at(500), 0.8) == Crossing(None, 500.0, 2000.0, False)  # at or before the first
    assert first_crossing(STEPS, at(None), 0.8) == Crossing(2000.0, None, 2000.0, False)  # censored at the budget
    assert first_crossing(STEPS, [0.3, 0.8, 0.8, 0.8], 0.8).hi == 1000.0  # reaching the threshold counts
    assert first_crossing([2000, 500, 1500, 1000], [UP, DOWN, UP, DOWN], 0.8).hi == 1500.0  # unsorted input
    assert first_crossing(STEPS, [np.nan] * 4, 0.8) is None  # no observation, not "below"
    assert first_crossing(STEPS, [DOWN, np.nan, UP, UP], 0.8) == Crossing(500.0, 1500.0, 2000.0, False)


def test_a_curve_that_crosses_and_falls_back_does_not_count_at_that_step():
    assert first_crossing(STEPS, [UP, DOWN, UP, UP], 0.8) == Crossing(1000.0, 1500.0, 2000.0, True)
    assert first_crossing(STEPS, [DOWN, UP, UP, DOWN], 0.8) == Crossing(2000.0, None, 2000.0, True)


def test_a_coarse_grid_gives_a_bound_not_a_point(tmp_path):
    """Evaluated at epochs 2 and 10 only: 'at epoch 10' would hide that it may have happened at epoch 3."""
    assert first_crossing([2, 10], [0.1, 0.9], 0.8) == Crossing(2.0, 10.0, 10.0, False)
    data = with_curves(tmp_path, {"base": [at(2000)] * 2}, steps_per_epoch=200)  # epochs 2.5, 5, 7.5, 10
    data.curves = data.curves[data.curves["step"].isin([500, 2000])]  # keep epochs 2.5 and 10
    text = words(data)
    assert "between epoch 2.50 and 10 (all 2 seeds; at the last evaluation" in text and "at epoch 10" not in text


# -- the median over seeds ------------------------------------------------------------------------------


def cells(*steps) -> list[Crossing]:
    return [first_crossing(STEPS, at(s), 0.8) for s in steps]


@pytest.mark.parametrize(
    "steps,median",
    [
        ((500, 1000, 1500), (500, 1000)),  # 3 of 3
        ((1000, 1500, None), (1000, 1500)),  # 2 of 3: the censored seed is the slowest, not dropped
        ((1000, None, None), (2000, None)),  # 1 of 3: the median is not within this budget
        ((None, None, None), (2000, None)),
        ((500, 1000, 1500, 2000), (500, 1000)),  # even: the lower median, never the unevaluated 1,250
        ((1000, None), (500, 1000)),  # half of 2 seeds crossed by 1,000
        ((None, None, 1500, None), (2000, None)),
        ((1000,), (500, 1000)),
    ],
)
def test_the_median_counts_seeds_that_never_cross_as_beyond_the_budget(steps, median):
    m = censored_median(cells(*steps))
    assert (m.lo, m.hi) == median and m.n == len(steps) and m.reached == sum(s is not None for s in steps)
    assert m.hi is None or m.hi in STEPS  # always an evaluated step


def test_the_median_interval_holds_the_true_median_on_any_grid():
    """Simulation: true crossing times T, each seed on its own grid; the lower median of T (Kaplan-Meier,
    censored beyond 2,000) lies in (lo, hi] of censored_median, or beyond lo when hi is None."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 7))
        t = rng.uniform(0, 2600, n)  # above 2,000: not within the budget
        grids = [np.sort(rng.choice(np.arange(100, 2001, 100), int(rng.integers(1, 8)), replace=False)) for _ in t]
        cs = [first_crossing(g, (g >= ti).astype(float), 0.5) for g, ti in zip(grids, t)]
        true = np.sort(t)[(n + 1) // 2 - 1]
        m = censored_median(cs)
        assert m.lo is None or true > m.lo
        assert m.hi is None or true <= m.hi


# -- the answer in words --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seeds,expected",
    [
        (
            [1000, 1000, 1000],
            "between step 500 and 1,000 (all 3 seeds) with base",
        ),
        (
            [1000, 1500, None],
            "between step 1,000 and 1,500 (median of 3 seeds; 2 of 3 reached it and stayed, the other not within "
            "this budget) with base",
        ),
        (
            [1000, None, None],
            "not within this budget with base (1 of 3 seeds reached it and stayed, the median seed not by step 2,000)",
        ),
        ([None, None, None], "not within this budget with base"),
        (
            [500, 1000, 1500, 1500],
            "between step 500 and 1,000 (median of 4 seeds; the seeds by step 500 to 1,500; the lower median: the "
            "first evaluation by which half of the 4 seeds had) with base",
        ),
        ([1000], "between step 500 and 1,000 (1 seed: an observation, not an estimate) with base"),
        ([500, 500], "at or before step 500, the first evaluation (all 2 seeds) with base"),
    ],
)
def test_the_answer_names_the_interval_and_the_seeds_that_crossed(tmp_path, seeds, expected):
    text = words(with_curves(tmp_path, {"base": [at(s) for s in seeds]}))
    assert text.startswith(
        f"Digits become recognizable (recognizability reaches 0.8 with {S} and stays there) {expected}"
    )
    assert "1,250" not in text and "at step" not in text


def test_a_fall_back_is_said_and_not_counted(tmp_path):
    data = with_curves(tmp_path, {"base": [[UP, DOWN, UP, UP], at(1500), at(1500)]})
    text = words(data)
    assert "between step 1,000 and 1,500 (all 3 seeds) with base" in text
    assert "in 1 of 3 seeds of base recognizability reached the threshold earlier and fell back below it" in text
    rows = progress_section(data).tables[0].rows
    assert rows[0] == ["base", 0, "between 1,000 and 1,500; reached earlier and fell back below"]
    assert rows[1] == ["base", 1, "between 1,000 and 1,500"]


def test_sooner_in_every_seed_needs_intervals_that_do_not_overlap(tmp_path):
    apart = with_curves(tmp_path / "a", {"a": [at(1000)] * 2, "b": [at(1500), at(2000)]})
    assert "; a is sooner in every seed" in words(apart)
    censored = with_curves(tmp_path / "c", {"a": [at(1000)] * 2, "b": [at(None)] * 2})
    assert "; a is sooner in every seed" in words(censored)
    mixed = with_curves(tmp_path / "m", {"a": [at(1000), at(2000)], "b": [at(1500)] * 2})
    assert "; neither is sooner in every seed" in words(mixed)
    never = with_curves(tmp_path / "n", {"a": [at(None)] * 2, "b": [at(None)] * 2})
    assert "sooner" not in words(never) and "not within this budget with a and b" in words(never)


def test_not_logged_says_so(tmp_path):
    data = with_curves(tmp_path, {"base": [at(1000)] * 2})
    data.curves = data.curves[data.curves["metric"] != "recognizability"]
    steps = progress_section(data).tables[0].rows
    assert [r[2] for r in steps] == ["not logged here"] * 2
    text = recognizable_answer(recognizable_steps(data, S), data.arms, S)
    assert text == "recognizability over training was not logged in this experiment"


# -- answers.json -----------------------------------------------------------------------------------------


def test_crossing_entries(tmp_path):
    data = with_curves(
        tmp_path,
        {"a": [at(1000), at(1500), at(None)], "b": [at(1000), at(None), at(None)], "c": [at(500)] * 3},
        axis="diffusion.schedule",
    )
    data.runs = data.runs[~((data.runs["arm_label"] == "c") & (data.runs["seed"] > 0))]  # c: one seed
    entries = {e["arm"]: e for e in crossing_entries(data)}
    assert json.loads(json.dumps(entries)) == entries  # plain JSON
    assert entries["a"] == {
        "metric": "recognizability",
        "arm": "a",
        "setting": S,
        "threshold": 0.8,
        "median_step": 1500,
        "interval": [1000, 1500],
        "seeds_reached": [0, 1],
        "seeds_total": 3,
        "reason": None,
    }
    b = entries["b"]
    assert b["median_step"] is None and b["interval"] == [2000, None] and b["seeds_reached"] == [0]
    assert b["reason"] == "not within this budget: 1 of 3 seeds reached it and stayed by step 2,000"
    c = entries["c"]
    assert (c["median_step"], c["interval"], c["seeds_total"]) == (500, [None, 500], 1)
    assert c["reason"] == "1 seed: an observation, not an estimate"


def test_crossing_entries_name_arms_without_runs_or_curves(tmp_path):
    data = with_curves(tmp_path, {"a": [at(1000)] * 2, "b": [at(1000)] * 2})
    data.runs = data.runs[data.runs["arm_label"] == "a"]
    data.curves = data.curves[data.curves["metric"] != "recognizability"]
    a, b = crossing_entries(data)
    assert a["reason"] == "no periodic evaluations logged" and a["median_step"] is None and a["seeds_total"] == 0
    assert b["reason"] == "no finished training run" and b["threshold"] is None


def test_the_training_summary_counts_a_crossing_only_where_the_curve_stays_above():
    from harness.config import SamplerSetting
    from harness.result import EvalResult
    from harness.training.train import recognizable_at_step

    setting = SamplerSetting(sampler="ddim", steps=10)

    def curve(*points):
        return [EvalResult(step=s, setting=setting, metrics={"recognizability": r}) for s, r in points]

    assert recognizable_at_step(curve((100, 0.6), (200, 0.3), (300, 0.7), (400, 0.8)), 0.5) == 300
    assert recognizable_at_step(curve((100, 0.6), (200, 0.3)), 0.5) is None
    assert recognizable_at_step(curve((100, 0.2), (200, 0.5)), 0.5) == 200
    assert recognizable_at_step([], 0.5) is None
