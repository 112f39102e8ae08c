"""The verdicts (answers.json) and the report's sentences built from them, on fixture tables with known
answers: rounding noise, mixed N, pixel vs latent losses, partly overlapping settings, margins (TOST),
Welch's seed counts, p near a threshold, intervals inside a metric's range, guided cost, the smoke profile."""

import json
import math

import pandas as pd
import pytest
from analysis_fixtures import S, fixture_data

from analysis.comparisons import comparison_section
from analysis.opening import SMOKE
from analysis.report import answer, build_document, settings_section
from analysis.stats import compare, estimate
from analysis.verdicts import verdicts
from analysis.words import pval

GOOD, BETTER = {"fid": [55.0, 56.5, 54.8]}, {"fid": [50.0, 52.0, 51.0]}
KEYS = {"metric", "compared", "estimate", "interval", "p", "p_adjusted", "winner", "reason", "n", "mde"}


def by(entries: list[dict], metric: str) -> list[dict]:
    return [e for e in entries if e["metric"] == metric]


def test_constant_differences_with_rounding_noise_are_not_tested(tmp_path):
    """Recognizabilities in multiples of 1/200: a - b = 0.01 in every seed up to 1e-17 is no variance."""
    a = [k / 200 for k in (150, 151, 163)]
    b = [(k - 2) / 200 for k in (150, 151, 163)]  # a - b = 0.01 + 9e-18, 0.01 + 9e-18, 0.01 - 1e-16
    assert len({x - y for x, y in zip(a, b)}) > 1  # bit-identical they are not
    d = fixture_data(
        tmp_path,
        {("linear", S): {"fid": GOOD["fid"], "recognizability": b}, ("cosine", S): {**BETTER, "recognizability": a}},
    )
    rec = by(verdicts(d), "recognizability")[0]
    assert (
        rec["winner"] is None
        and rec["p"] is None
        and rec["reason"] == "not tested: identical in every seed (difference -0.01)"
    )
    assert sum(e["p"] is not None for e in verdicts(d)) == 1  # FID alone is tested
    assert "recognizability" not in answer(d).split("On FID")[1].split("Final training")[0]  # no "better"
    row = next(r for r in comparison_section(d).tables[0].rows if r[0] == "recognizability")
    assert row[-1].startswith("not tested: identical in every seed") and row[4] == ""
    assert estimate([0.3, 0.3 + 1e-17, 0.3 - 1e-17]).method == "zero variance"


def test_every_entry_has_the_agreed_keys_and_the_report_reads_the_same_numbers(tmp_path):
    d = fixture_data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    entries = verdicts(d)
    assert json.loads(json.dumps(entries, allow_nan=False)) == entries  # answers.json: plain JSON, no NaN
    fid = by(entries, "fid")[0]
    assert KEYS <= set(fid) and fid["compared"] == ["linear", "cosine"] and fid["winner"] == "cosine"
    assert fid["estimate"] == pytest.approx(4.433333, abs=1e-6) and fid["n"] == [3, 3] and fid["reason"] == ""
    assert fid["interval"] == pytest.approx([2.935966, 5.930700], abs=1e-5)
    assert answer(d).startswith("**cosine has the best FID: it beats every other arm")
    assert f"95% CI {fid['interval'][0]:.3g} to {fid['interval'][1]:.3g}" in answer(d)
    assert f"detects FID differences above {fid['mde']:.3g}" in answer(d)


def test_mixed_n_is_refused_on_every_metric_that_depends_on_it(tmp_path):
    d = fixture_data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals["num_generated"] = d.evals["arm_label"].map({"linear": 200.0, "cosine": 400.0})
    v = verdicts(d)
    for metric in ("fid", "kid", "precision", "recall"):
        e = by(v, metric)[0]
        assert e["reason"] == "refused: different N (200 vs 400)" and e["winner"] is None and e["p"] is None
    assert by(v, "recognizability")[0]["reason"].startswith("not tested")  # not a feature-space metric
    rows = comparison_section(d).tables[0].rows
    assert ["precision", "linear - cosine", "", "none", "", "", "refused: different N (200 vs 400)"] in rows
    assert answer(d).startswith("**FIDs are not ranked: different N (200 vs 400).**")


def test_pixel_and_latent_losses_are_refused(tmp_path):
    loss = {"pixel": [0.030, 0.031, 0.0305], "latent": [0.50, 0.52, 0.51]}
    d = fixture_data(tmp_path, {("pixel", S): GOOD, ("latent", S): BETTER}, axis="data.space", final_loss=loss)
    e = by(verdicts(d), "final_loss")[0]
    assert e["reason"] == "refused: different objectives (data.space pixel vs latent)" and e["winner"] is None
    assert "On final training loss" not in answer(d) and "are not compared" in answer(d)


def test_partly_overlapping_settings_are_compared_where_they_overlap(tmp_path):
    other = "ddim-10-eta0-w0"
    d = fixture_data(tmp_path, {("ddpm", S): GOOD, ("ddpm", other): GOOD, ("flow", other): BETTER})
    words = answer(d)
    assert "only ddpm has a FID" not in words and f"On FID with {other}" in words
    assert "flow beats ddpm by 4.43 FID" in words
    assert by(verdicts(d), "fid")[0]["winner"] == "flow"


def test_a_margin_turns_a_tie_into_equivalence_and_nothing_else_does(tmp_path):
    close = {("a", S): {"fid": [50.0, 51.0, 50.5]}, ("b", S): {"fid": [50.1, 51.2, 50.4]}}
    d = fixture_data(tmp_path, close, axis="train.precision")
    plain = by(verdicts(d), "fid")[0]
    assert plain["reason"] == "not significant" and plain["p_equivalence"] is None
    assert "the data allow" in answer(d) and "equivalent" not in answer(d)
    eq = by(verdicts(d, margins={"fid": 2.0}), "fid")[0]
    assert eq["reason"] == "equivalent within margin" and eq["winner"] is None and eq["p_equivalence"] < 0.05
    assert "a and b are equivalent within 2 FID (TOST p" in build_document(d, margins={"fid": 2.0}).answer
    # From this pilot (sd of a per-seed difference 0.153), 2 FID needs the fewest seeds a t-test can have.
    tight = by(verdicts(d, margins={"fid": 0.05}), "fid")[0]  # the interval is wider than +-0.05
    assert tight["reason"] == "not significant" and tight["p_equivalence"] > 0.05
    assert eq["seeds_for_margin"] == 2 and tight["seeds_for_margin"] > 3


def test_welch_counts_both_arms_and_p_keeps_the_digits_that_matter():
    df = pd.DataFrame(
        {"arm_label": ["a"] * 3 + ["b"] * 2, "seed": [0, 1, 2, 3, 4], "fid": [50.0, 52.0, 51.0, 56.0, 55.0]}
    )
    c = compare(df, "fid", "a", "b", lower_is_better=True)
    from analysis.words import comparison_sentence

    assert c.test == "Welch t" and "2 seeds of b, 3 of a, Welch t-test" in comparison_sentence(c, "FID")
    assert pval(0.0495) == "p = 0.0495" and pval(0.0505) == "p = 0.051" and pval(0.05) == "p = 0.05"
    assert pval(0.81338) == "p = 0.81" and pval(0.0061) == "p = 0.0061" and pval(0.0002) == "p < 0.001"


def test_intervals_stay_inside_the_metrics_range(tmp_path):
    acc = [0.97, 0.99, 1.0]
    assert estimate(acc).high > 1  # the raw t-interval leaves [0, 1]
    d = fixture_data(tmp_path, {("a", S): {**GOOD, "class_accuracy": acc}, ("b", S): {**BETTER, "class_accuracy": acc}})
    from analysis.report import final_metrics_section

    table = final_metrics_section(d).tables[0]
    cell = table.rows[0][table.header.index("class accuracy")]
    assert cell.endswith(", 1]") and float(cell.split("[")[1].split(",")[0]) >= 0
    low = estimate([0.5, 3.0, 1.0])  # an FID this spread would reach below 0
    assert low.low < 0
    c = compare(
        pd.DataFrame({"arm_label": ["a"] * 3, "seed": [0, 1, 2], "fid": [0.5, 3.0, 1.0]}).pipe(
            lambda x: pd.concat([x, x.assign(arm_label="b", fid=[9.0, 9.5, 10.0])])
        ),
        "fid",
        "a",
        "b",
        lower_is_better=True,
    )
    assert c.a_est.low == 0.0 and not math.isnan(c.a_est.high)


def test_guided_cost_is_counted_in_batch_rows_and_classifier_passes(tmp_path):
    final = {
        ("base", "ddim-50-eta0-w0"): {"fid": [10.0, 11.0, 10.5]},
        ("base", "ddim-10-eta0-w0"): {"fid": [20.0, 22.0, 21.0]},
    }
    d = fixture_data(tmp_path, final)
    d.evals["classifier_passes"] = 0.0
    s = settings_section(d)
    text = " ".join(s.paragraphs)
    assert "as batch rows (a classifier-free-guided step counts 2)" in text
    d.evals["classifier_passes"] = 20.0  # classifier guidance: its passes are a cost of their own, not NFE
    assert "classifier passes (forward and backward per sample) are a separate cost" in " ".join(
        settings_section(d).paragraphs
    )
    assert "classifier passes" in s.tables[0].header and "sampling seconds" in s.tables[0].header
    from analysis.arms import FLOPS_NOTE

    assert "costs NFE times this" not in FLOPS_NOTE and "classifier's passes" in FLOPS_NOTE


def test_the_smoke_profile_opens_with_its_one_sentence(tmp_path):
    d = fixture_data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.profile = "smoke"
    assert answer(d).startswith(f"**{SMOKE}** ") and SMOKE == (
        "Smoke profile: this run checks the pipeline and answers nothing."
    )


def test_sampler_and_guidance_answers_have_their_entries(tmp_path):
    final = {
        ("base", "ddpm-1000-eta0-w0"): {"fid": [10.0, 11.0, 10.5]},
        ("base", "ddim-50-eta0-w0"): {"fid": [10.2, 10.9, 10.8]},
        ("base", "ddim-10-eta0-w0"): {"fid": [20.0, 22.0, 21.0]},
    }
    v = verdicts(fixture_data(tmp_path / "s", final))
    assert [(e["compared"], e["winner"], e["reason"]) for e in v] == [
        (["ddim-50-eta0-w0", "ddpm-1000-eta0-w0"], None, "not significant"),
        (["ddim-10-eta0-w0", "ddpm-1000-eta0-w0"], "ddpm-1000-eta0-w0", ""),
    ]
    assert v[1]["p_adjusted"] == pytest.approx(2 * v[1]["p"]) and v[1]["level"] == pytest.approx(0.975)
    acc = {0: [0.60, 0.62, 0.61], 2: [0.90, 0.93, 0.91], 4: [0.91, 0.92, 0.93]}
    guided = {("base", f"ddim-50-eta0-w{w}"): {"fid": [10.0, 10.5, 10.2], "class_accuracy": acc[w]} for w in acc}
    g = verdicts(fixture_data(tmp_path / "g", guided, conditional=True))
    assert {tuple(e["compared"]): e["winner"] for e in g} == {("w = 0", "w = 4"): "w = 4", ("w = 2", "w = 4"): None}
    assert all(e["metric"] == "class_accuracy" and e["question"] == "guidance weights of base" for e in g)


def test_spec_margins_name_known_metrics(tmp_path):
    from harness.config.fields import ConfigError
    from harness.config.spec import load_spec

    good = tmp_path / "good.yaml"
    good.write_text("name: m\nquestion: Which?\nmargins: {fid: 2.0, recall: 0.02}\n")
    assert load_spec(good).margins == {"fid": 2.0, "recall": 0.02}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: m\nquestion: Which?\nmargins: {fidd: 2.0}\n")
    with pytest.raises(ConfigError, match=r"margins: unknown metric 'fidd'; valid: fid, "):
        load_spec(bad)
    bad.write_text("name: m\nquestion: Which?\nmargins: {fid: -1}\n")
    with pytest.raises(ConfigError, match="margins"):
        load_spec(bad)


def test_the_fids_own_sampling_noise_widens_the_interval_and_can_take_the_winner_away(tmp_path):
    """GOOD - BETTER is about 4.4 FID, clear over 3 seeds. A bootstrap standard error of 0.1 per evaluation
    leaves the winner; one of 3 (the noise of a 200-sample FID) is larger than the difference can carry."""

    def fid_verdict(se: float | None) -> dict:
        d = fixture_data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
        if se is not None:
            d.evals["fid_se"] = se
        return by(verdicts(d), "fid")[0], answer(d)

    bare, _ = fid_verdict(None)
    small, _ = fid_verdict(0.1)
    large, words = fid_verdict(3.0)
    assert bare["winner"] == small["winner"] == "cosine"
    half = lambda v: (v["interval"][1] - v["interval"][0]) / 2  # noqa: E731
    assert half(bare) < half(small) < half(large)
    # z(0.975) * sqrt(2) * 3 in quadrature with the seeds' half width
    assert half(large) == pytest.approx(math.hypot(half(bare), 1.959964 * math.sqrt(2) * 3.0), rel=1e-4)
    assert large["winner"] is None and large["interval"][0] < 0 < large["interval"][1]
    assert large["p_adjusted"] < 0.05 and "sampling noise" in large["reason"]
    assert "sampling noise at this N" in words and "cosine beats" not in words


def test_every_fid_basis_names_its_floor(tmp_path):
    """The floor (held-out real images at the same N) stands beside the FIDs it qualifies."""
    d = fixture_data(tmp_path, {("linear", S): GOOD, ("cosine", S): BETTER})
    d.evals["fid_floor"] = 4.79
    assert "the floor, real images scored the same way at this N, is 4.79" in answer(d)
    d.evals = d.evals.drop(columns="fid_floor")  # runs before the floor: no claim about it
    assert "the floor" not in answer(d)


def test_without_a_fid_verdict_the_curves_answer_when_in_bold(tmp_path):
    """One seed per arm: no FID test to state, but "when does it become recognizable?" has an answer."""
    d = fixture_data(
        tmp_path, {("linear", S): {"fid": [40.0]}, ("cosine", S): {"fid": [45.0]}}, rec_at={"linear": 1000}
    )
    words = answer(d)
    head = words.split("**")[1]
    assert head.startswith("Digits become recognizable") and "with linear" in head, head
    assert words.count("Digits become recognizable") == 1
