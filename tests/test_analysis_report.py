"""The report's words and pages from fixture tables (no MLflow): each kind of spec, with known answers."""

import base64
import re

import pytest
from analysis_fixtures import S, fixture_data

from analysis.render import to_html, to_markdown
from analysis.report import answer, build_document, guidance_section, settings_section
from analysis.words import NO_DIFFERENCE


@pytest.fixture(scope="module")
def clear(tmp_path_factory):
    """Two arms, three seeds, cosine clearly better; the whole document, figures included (built once)."""
    data = fixture_data(
        tmp_path_factory.mktemp("clear"),
        {("linear", S): {"fid": [55.0, 56.5, 54.8]}, ("cosine", S): {"fid": [50.0, 52.0, 51.0]}},
        rec_at={"linear": 1500, "cosine": 1000},
    )
    return build_document(data)


def test_clear_winner_answer_and_recognizable_steps(clear):
    doc = clear
    assert doc.question == "Does cosine beat linear?"
    assert "cosine beats linear by 4.43 FID (95% CI 2.94 to 5.93, 3 seeds, paired t-test p = 0.0061)" in doc.answer
    assert (
        "between step 500 and 1,000 (all 3 seeds) with cosine; between step 1,000 and 1,500 (all 3 seeds) with "
        "linear; cosine is sooner in every seed"
    ) in doc.answer
    assert "2,000 training steps x 64 images = 128,000 images seen per run" in doc.answer
    assert "500 generated against 5,000 real images" in doc.answer and "not InceptionV3" in doc.answer
    assert "smoke" not in doc.answer
    titles = [s.title for s in doc.sections]
    assert titles[0] == "Setup and budget" and any(t.startswith("Arms compared") for t in titles)
    names = {p.name for s in doc.sections for p in s.pictures}
    assert {"loss", "loss_by_timestep", "quality_over_training", "samples_over_training"} <= names
    setup = " ".join(doc.sections[0].paragraphs)
    assert "held-out accuracy 98.8%" in setup and "not comparable with published InceptionV3" in setup
    assert "Devices: cpu, so these are CPU-hours." in setup


def test_tie_and_never_recognizable(tmp_path):
    data = fixture_data(
        tmp_path,
        {("linear", S): {"fid": [51.0, 50.5, 52.2]}, ("cosine", S): {"fid": [50.0, 52.0, 51.0]}},
        rec_at={"linear": None, "cosine": 2000},
    )
    words = answer(data)
    assert f"{NO_DIFFERENCE} between" in words and "beats" not in words
    assert (
        "not within this budget with linear" in words
        and (
            "between step 1,500 and 2,000 (all 3 seeds; at the last evaluation, so whether it stays is not seen) with "
            "cosine"
        )
        in words
    )


def test_final_loss_is_compared_only_when_arms_share_the_objective(tmp_path, clear):
    fids = {("fp32", S): {"fid": [51.0, 50.5, 52.2]}, ("bf16", S): {"fid": [50.0, 52.0, 51.0]}}
    tie = fixture_data(
        tmp_path / "tie",
        fids,
        axis="train.precision",
        final_loss={"fp32": [0.0300, 0.0310, 0.0305], "bf16": [0.0302, 0.0309, 0.0308]},
    )
    words = answer(tie)
    assert f"On final training loss, {NO_DIFFERENCE} between" in words and "beats" not in words
    worse = fixture_data(
        tmp_path / "worse",
        fids,
        axis="train.precision",
        final_loss={"fp32": [0.0300, 0.0310, 0.0305], "bf16": [0.0400, 0.0412, 0.0404]},
    )
    assert (
        "On final training loss, fp32 beats bf16 by 0.01 loss (97.5% CI 0.00949 to 0.0106, 3 seeds, paired t-test "
        "p < 0.001, Holm-adjusted over 2 comparisons)"
    ) in answer(worse)
    # A schedule rescales the loss at every t, so a lower loss would not mean a better model.
    assert "final training loss" not in clear.answer
    assert any("different scales" in p for s in clear.sections for p in s.paragraphs)


def test_one_seed_says_so(tmp_path):
    data = fixture_data(
        tmp_path,
        {("linear", S): {"fid": [55.0]}, ("cosine", S): {"fid": [50.0]}},
        rec_at={"linear": 1000, "cosine": 1000},
    )
    words = answer(data)
    assert "not tested (1 seed per arm), only the values" in words and "beats" not in words
    assert "both reach it at the same evaluation (one seed: an observation, not a test)" in words


def test_guidance_tradeoff_answer(tmp_path):
    acc = {0: [0.60, 0.62, 0.61], 1: [0.80, 0.82, 0.81], 2: [0.90, 0.93, 0.91], 4: [0.91, 0.92, 0.93]}
    fid = {0: [10.0, 10.5, 10.2], 1: [11.0, 11.2, 11.4], 2: [14.0, 14.5, 14.1], 4: [20.0, 21.0, 20.4]}
    final = {("base", f"ddim-50-eta0-w{w}"): {"fid": fid[w], "class_accuracy": acc[w]} for w in acc}
    data = fixture_data(tmp_path, final, conditional=True, question="Which w?")
    words = answer(data)
    assert "Class accuracy is highest at w = 4 (0.92 (95% CI" in words
    assert "FID is lowest at w = 0" in words
    assert f"Weights with {NO_DIFFERENCE} in class accuracy from w = 4: w = 2" in words
    assert (
        "The smallest such weight, w = 2, is not significantly below w = 4 in class accuracy (not shown equal" in words
    )
    assert words.startswith("**Class accuracy is highest at w = 4")
    assert "w = 4 beats w = 2 by" not in words and "w = 2 beats w = 4 by 6.27 FID" in words
    assert "Pareto-optimal (FID against class accuracy): w = 0, w = 1, w = 2, w = 4" in words
    assert [p.name for p in guidance_section(data).pictures] == ["guidance"]


def test_sampler_settings_answer(tmp_path):
    final = {
        ("base", "ddpm-1000-eta0-w0"): {"fid": [10.0, 11.0, 10.5]},
        ("base", "ddim-50-eta0-w0"): {"fid": [10.2, 10.9, 10.8]},
        ("base", "ddim-10-eta0-w0"): {"fid": [20.0, 22.0, 21.0]},
    }
    data = fixture_data(tmp_path, final, question="How much does each sampler lose?")
    words = answer(data)
    assert words.split("** ", 1)[1].startswith(
        "Against the most expensive setting with a FID, ddpm-1000-eta0-w0 (1,000 NFE; FID 10.5, 95% CI"
    )
    assert "ddim eta=0: no significant loss down to 50 NFE (not shown equal: the data allow it to be up to" in words
    assert "worse at 10 NFE by 10.5 FID (97.5% CI 8.71 to 12.3, 3 seeds, paired t-test p = 0.0015" in words
    assert [p.name for p in settings_section(data).pictures] == ["fid_vs_nfe"]


def test_pages_are_self_contained(clear):
    doc = clear
    html, md = to_html(doc), to_markdown(doc)
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]*)""", html)
    assert links and all(link.startswith("data:image/png;base64,") for link in links) and "url(" not in html
    sources = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(sources) == sum(len(s.pictures) for s in doc.sections) >= 4
    assert all(base64.b64decode(s).startswith(b"\x89PNG\r\n\x1a\n") for s in sources)
    assert md.splitlines()[2].startswith("**Does cosine beat linear?** ") and "](loss.png)" in md
