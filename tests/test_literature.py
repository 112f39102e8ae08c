"""The spec's literature section: its validation (one line, exit 2) and its verdicts on data whose right
answer is known (a true effect, a reversed one, none under the null, a curve that flattens or does not)."""

import re

import numpy as np
import pytest
import yaml
from analysis_fixtures import fixture_data
from fixtures import write_spec

from analysis.literature import AGREES, CANNOT_TELL, DISAGREES, NOT_CHECKED, check, literature_answers
from analysis.report import build_document
from harness.cli import main
from harness.config import ConfigError
from harness.config.literature import Entry
from harness.config.spec import load_spec

SOURCE = {"authors": "A & B", "year": 2021, "title": "T", "where": "Table 1", "checked": "read from Table 1"}


def entry(expect=None, **fields) -> Entry:
    data = {"source": SOURCE, "claim": "c", "differences": "CIFAR-10 vs MNIST", **fields}
    if expect is not None:
        data["expect"] = expect
    return Entry.model_validate(data)


COSINE_BETTER = {"kind": "direction", "metric": "fid", "better": {"diffusion.schedule": "cosine"},
                 "than": {"diffusion.schedule": "linear"}}  # fmt: skip


def schedules(cosine, linear, tmp_path):
    return fixture_data(
        tmp_path,
        {("cosine", "ddim-50-eta0-w0"): {"fid": cosine}, ("linear", "ddim-50-eta0-w0"): {"fid": linear}},
        pngs=False,
    )


# -- validation -------------------------------------------------------------------------------------------


def test_shipped_style_entry_validates(tmp_path):
    path = write_spec(
        tmp_path, literature=[{"source": SOURCE, "claim": "c", "differences": "d", "expect": COSINE_BETTER}]
    )
    assert load_spec(path).literature[0].expect.kind == "direction"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"expect": {**COSINE_BETTER, "metric": "fud"}}, "unknown metric 'fud'"),
        ({"expect": {**COSINE_BETTER, "kind": "shape"}}, "literature.0.expect"),
        ({"expect": {**COSINE_BETTER, "better": {"diffusion.schedule": "sigmoid"}}}, "is not one of the axis's values"),
        ({"expect": {**COSINE_BETTER, "better": {"model.depth": 3}}}, "unknown key 'model.depth'"),
        ({"expect": {"kind": "monotone", "metric": "fid", "along": "sampler"}}, "not a numeric setting field"),
        ({"expect": {"kind": "monotone", "metric": "fid", "along": "steps", "where": {"steps": 5}}}, "fixes steps"),
        ({"expect": {**COSINE_BETTER, "metric": "sample_seconds"}}, "lower_is_better"),
        ({"expect": None}, "says why in unchecked"),
        ({"expect": COSINE_BETTER, "unchecked": "no"}, "drop unchecked"),
        ({"expect": COSINE_BETTER, "differences": ""}, "literature.0.differences"),
        ({"expect": COSINE_BETTER, "source": {**SOURCE, "checked": ""}}, "literature.0.source.checked"),
        ({"expect": {"kind": "equivalent", "metric": "fid", "a": {"steps": 3}, "b": {"steps": 3}, "margin": 0}},
         "margin"),
    ],
)  # fmt: skip
def test_a_malformed_entry_is_one_line_exit_2(tmp_path, capsys, change, message):
    item = {"source": SOURCE, "claim": "c", "differences": "d", **change}
    item = {k: v for k, v in item.items() if v is not None}
    path = write_spec(tmp_path, literature=[item])
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert message in out.err and out.out == ""


# -- verdicts on known answers ------------------------------------------------------------------------------


def test_a_true_effect_agrees_and_its_reverse_disagrees(tmp_path):
    better, worse = [40.0, 42.0, 41.0, 43.0], [50.0, 51.5, 52.0, 53.0]
    agree = check(schedules(better, worse, tmp_path), entry(COSINE_BETTER))
    assert agree.verdict == AGREES and "as claimed" in agree.statistics[0]
    assert any(o.startswith("diffusion.schedule=cosine: 41.5 (95% CI") for o in agree.ours)
    disagree = check(schedules(worse, better, tmp_path), entry(COSINE_BETTER))
    assert disagree.verdict == DISAGREES and "against the claim" in disagree.statistics[0]


def test_a_difference_within_the_fids_own_sampling_noise_is_not_confirmed(tmp_path):
    """As in the comparison table: fid_se at this N is added to the interval, so a 10-FID seed effect agrees
    with se 0.1 per evaluation and cannot be told apart with se 8."""
    data = schedules([40.0, 42.0, 41.0, 43.0], [50.0, 51.5, 52.0, 53.0], tmp_path)
    data.evals["fid_se"] = 0.1
    assert check(data, entry(COSINE_BETTER)).verdict == AGREES
    data.evals["fid_se"] = 8.0
    noisy = check(data, entry(COSINE_BETTER))
    assert noisy.verdict == CANNOT_TELL and "once the FID's own sampling noise" in noisy.statistics[0]


def test_no_effect_cannot_tell_and_says_what_budget_could(tmp_path):
    chk = check(schedules([40.0, 45.0, 38.0], [41.0, 43.0, 42.0], tmp_path), entry(COSINE_BETTER))
    assert chk.verdict == CANNOT_TELL
    assert "this design detects differences above" in chk.budget and "seeds per arm" in chk.budget
    one = check(schedules([40.0], [41.0], tmp_path), entry(COSINE_BETTER))
    assert one.verdict == CANNOT_TELL and "a test needs at least 2 seeds per arm" in one.budget


@pytest.mark.parametrize(
    "fids",
    [
        # 2 seeds whose steps agree closely: each raw p near 0.03, none significant once Holm-adjusted over 4
        {10: [20.0, 20.05], 20: [19.0, 18.95], 50: [18.0, 18.1], 100: [17.0, 16.9]},
        # 3 noisy seeds: nothing near significance
        {10: [20.0, 21.0, 19.0], 20: [20.5, 19.5, 19.8], 50: [19.0, 21.0, 19.9], 100: [20.2, 19.1, 20.6]},
    ],
)
def test_the_seeds_a_budget_asks_for_are_more_than_it_had_when_the_effect_is_below_its_mde(tmp_path, fids):
    """Monotone makes several comparisons, Holm-adjusted: the seeds that would detect an effect are counted at
    the adjusted level the MDE uses, so an effect this design cannot detect never asks for the seeds it has."""
    seeds = len(fids[10])
    data = fixture_data(tmp_path, {("base", f"ddim-{s}-eta0-w0"): {"fid": v} for s, v in fids.items()}, axis="none",
                        pngs=False)  # fmt: skip
    chk = check(data, entry(MONOTONE))
    assert chk.verdict == CANNOT_TELL, chk.statistics
    parts = re.findall(
        r"detects differences above ([\d.]+); the ([\d.]+) seen would need about (\d+) seeds", chk.budget
    )
    assert parts, chk.budget
    for mde, seen, need in parts:
        if float(seen) < float(mde):
            assert int(need) > seeds, chk.budget


def test_false_verdicts_under_the_null_stay_near_alpha(tmp_path):
    """Both arms from one distribution: a two-sided test at 0.05 gives 'agrees' or 'disagrees' ~5% of the time."""
    rng = np.random.default_rng(1)
    data = schedules([0.0] * 4, [0.0] * 4, tmp_path)
    decided, n = 0, 120
    for _ in range(n):
        data.evals["fid"] = rng.normal(50, 3, len(data.evals))
        decided += check(data, entry(COSINE_BETTER)).verdict != CANNOT_TELL
    assert decided / n < 0.1, decided


def _steps_data(tmp_path, fid_of_steps, seeds=4, noise=0.3):
    rng = np.random.default_rng(0)
    final = {
        ("base", f"ddim-{s}-eta0-w0"): {"fid": (fid_of_steps(s) + rng.normal(0, noise, seeds)).tolist()}
        for s in (10, 20, 50, 100)
    }
    return fixture_data(tmp_path, final, axis="none", pngs=False)


MONOTONE = {"kind": "monotone", "metric": "fid", "along": "steps", "where": {"sampler": "ddim", "eta": 0.0}}


def test_a_curve_that_falls_and_flattens_agrees(tmp_path):
    data = _steps_data(tmp_path, lambda s: 10 + 100 / s)  # 20, 15, 12, 11: the gain beyond 50 is 1 of 9
    chk = check(data, entry({**MONOTONE, "flattens_after": 50}))
    assert chk.verdict == AGREES, chk.statistics
    assert any(s.startswith("flattening:") and "as claimed" in s for s in chk.statistics)


def test_a_curve_that_does_not_flatten_disagrees_and_a_rising_one_disagrees(tmp_path):
    straight = _steps_data(tmp_path, lambda s: 100 - 0.5 * s)  # gains 15 up to 50, 25 beyond it
    assert check(straight, entry(MONOTONE)).verdict == AGREES
    assert check(straight, entry({**MONOTONE, "flattens_after": 50})).verdict == DISAGREES
    rising = _steps_data(tmp_path, lambda s: 10 + 0.2 * s)
    assert check(rising, entry(MONOTONE)).verdict == DISAGREES
    assert check(rising, entry({**MONOTONE, "gets": "worse"})).verdict == AGREES


def test_ordering_needs_every_neighbour_pair(tmp_path):
    data = _steps_data(tmp_path, lambda s: {10: 30, 20: 20, 50: 20.2, 100: 10}[s])
    order = [{"steps": 100}, {"steps": 50}, {"steps": 20}, {"steps": 10}]
    assert check(data, entry({"kind": "ordering", "metric": "fid", "order": order})).verdict == CANNOT_TELL
    wrong = [{"steps": 10}, {"steps": 100}]
    assert check(data, entry({"kind": "ordering", "metric": "fid", "order": wrong})).verdict == DISAGREES


def test_equivalence_within_a_margin(tmp_path):
    eq = {"kind": "equivalent", "metric": "fid", "a": {"diffusion.schedule": "cosine"},
          "b": {"diffusion.schedule": "linear"}, "margin": 2.0}  # fmt: skip
    same = schedules([40.0, 41.0, 42.0, 43.0], [40.1, 41.2, 41.9, 43.1], tmp_path)
    assert check(same, entry(eq)).verdict == AGREES
    far = schedules([40.0, 41.0, 42.0, 43.0], [50.1, 51.2, 51.9, 53.1], tmp_path)
    assert check(far, entry(eq)).verdict == DISAGREES


def test_a_selection_that_picks_nothing_or_two_arms_cannot_tell(tmp_path):
    data = schedules([40.0, 42.0], [50.0, 51.0], tmp_path)
    none = check(data, entry({**COSINE_BETTER, "better": {"diffusion.schedule": "cosine", "steps": 7}}))
    assert none.verdict == CANNOT_TELL and "no FID" in none.statistics[0]
    both = check(data, entry({**COSINE_BETTER, "better": {"steps": 50}}))
    assert both.verdict == CANNOT_TELL and "picks 2 arms" in both.statistics[0]


def test_the_report_has_the_section_and_answers_json_its_entries(tmp_path):
    data = schedules([40.0, 42.0, 41.0], [50.0, 51.5, 52.0], tmp_path)
    entries = [entry(COSINE_BETTER, figures=[{"setting": "S=10", "value": 13.36, "metric": "FID"}]),
               entry(unchecked="a sweep has no arms")]  # fmt: skip
    doc = build_document(data, literature=entries)
    section = next(s for s in doc.sections if s.title == "Against the literature")
    rows = section.tables[0].rows
    assert [r[4] for r in rows] == [AGREES, NOT_CHECKED] and "S=10: 13.36 (FID)" in rows[0][2]
    answers = literature_answers(data, entries)
    assert answers[0]["verdict"] == AGREES and answers[0]["published"][0]["value"] == 13.36
    assert yaml.safe_dump(answers)  # plain data
    assert all(s.title != "Against the literature" for s in build_document(data).sections)
