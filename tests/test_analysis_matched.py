"""Arms sampled with settings of their own (a process ablation: ddim for DDPM, euler/heun for flow) are
compared at equal NFE, never at a setting only one arm has."""

from analysis_fixtures import fixture_data

from analysis.matched import disjoint, matched_sentences
from analysis.report import answer, build_document

AXIS = "diffusion.process"


def process_data(tmp_path, ddpm10, euler10, *, heun=True):
    """DDPM with ddim-9/10, flow with euler-9/10 and heun-5 (9 NFE: 2 x 5 - 1), 3 seeds each."""
    final = {
        ("ddpm", "ddim-9-eta0-w0"): {"fid": [60.0, 61.0, 62.0]},
        ("ddpm", "ddim-10-eta0-w0"): {"fid": ddpm10},
        ("flow", "euler-9-eta0-w0"): {"fid": [90.0, 91.0, 93.0]},
        ("flow", "euler-10-eta0-w0"): {"fid": euler10},
        ("ddpm", "ddim-20-eta0-w0"): {"fid": [40.0, 41.0, 42.0]},  # no flow partner at 20 NFE
    }
    if heun:
        final[("flow", "heun-5-eta0-w0")] = {"fid": [30.0, 31.0, 33.0], "nfe": [9.0] * 3}
    return fixture_data(tmp_path, final, axis=AXIS, question="DDPM or flow at equal NFE?", pngs=False)


def test_arms_meet_at_matched_nfe_with_the_right_partners(tmp_path):
    data = process_data(tmp_path, ddpm10=[50.0, 51.0, 52.5], euler10=[80.0, 82.0, 81.0])
    assert disjoint(data)
    nine, ten, lonely = matched_sentences(data)
    # 9 NFE: heun-5 (9 evaluations) is flow's best and beats both ddim-9 and euler-9
    assert nine.startswith("At 9 NFE") and "flow heun-5-eta0-w0" in nine and "ddpm ddim-9-eta0-w0" in nine
    assert nine.index("flow heun-5") < nine.index("beats")
    assert "ddim-10" not in nine and "euler-10" not in nine
    # 10 NFE: ddim-10 against euler-10 only; DDPM is clearly better
    assert ten.startswith("At 10 NFE") and "ddpm ddim-10-eta0-w0" in ten and "flow euler-10-eta0-w0" in ten
    assert "heun" not in ten and "ddim-9" not in ten
    assert "ddpm ddim-10-eta0-w0 is better" in ten or ten.index("ddpm ddim-10") < ten.index("flow euler-10")
    assert "20 NFE (ddpm ddim-20-eta0-w0)" in lonely and "nothing is compared" in lonely


def test_a_tie_at_matched_nfe_is_not_a_win(tmp_path):
    data = process_data(tmp_path, ddpm10=[50.0, 70.0, 60.0], euler10=[61.0, 59.0, 62.0], heun=False)
    ten = [s for s in matched_sentences(data) if s.startswith("At 10 NFE")][0]
    assert "no significant difference" in ten


def test_the_report_uses_matched_nfe_and_drops_the_one_arm_comparison(tmp_path):
    data = process_data(tmp_path, ddpm10=[50.0, 51.0, 52.5], euler10=[80.0, 82.0, 81.0])
    text = answer(data)
    assert "At 10 NFE" in text and "only ddpm has a FID" not in text
    assert "missing" not in text  # each job was planned with its own process's settings only
    assert "For flow matching, heun is Heun's 2nd-order method" in text and "heun-5-eta0-w0: 9 NFE" in text
    assert "DDPM heun" not in text  # no DDPM arm was sampled with heun
    titles = [s.title for s in build_document(data).sections]
    assert "Arms compared at matched NFE" in titles
    assert not any(t.startswith("Arms compared (") for t in titles)
    table = next(s for s in build_document(data).sections if s.title == "Arms compared at matched NFE").tables[0]
    heun = next(r for r in table.rows if r[2] == "heun-5-eta0-w0")
    assert heun[0] == "9" and heun[1] == "flow" and heun[5] == "yes"
    ddim20 = next(r for r in table.rows if r[2] == "ddim-20-eta0-w0")
    assert ddim20[5] == "no (one arm only)"


def test_arms_that_share_a_setting_are_compared_at_it_as_before(tmp_path):
    final = {(a, "ddim-10-eta0-w0"): {"fid": [50.0, 51.0, 52.0]} for a in ("linear", "cosine")}
    data = fixture_data(tmp_path, final, pngs=False)
    assert not disjoint(data)
    assert "At 10 NFE" not in answer(data)
    assert "Arms compared at matched NFE" not in [s.title for s in build_document(data).sections]


def test_plans_without_per_job_settings_give_each_run_the_settings_of_its_process():
    """Plans logged before jobs listed their settings: a flow run was never planned with ddim."""
    import pandas as pd

    from analysis.load import _planned_settings
    from harness.config import SamplerSetting

    settings = [
        SamplerSetting(sampler="ddim", steps=10).model_dump(),
        SamplerSetting(sampler="euler", steps=10).model_dump(),
    ]
    plan = {
        "jobs": [{"config_hash": "a"}, {"config_hash": "b"}, {"config_hash": "c", "settings": ["x"]}],
        "settings": settings,
    }
    runs = pd.DataFrame(
        {"config_hash": ["a", "b", "c"], "process": ["ddpm", "flow", "ddpm"], "conditional": [False] * 3}
    )
    assert _planned_settings(plan, runs) == {"a": ["ddim-10-eta0-w0"], "b": ["euler-10-eta0-w0"], "c": ["x"]}
