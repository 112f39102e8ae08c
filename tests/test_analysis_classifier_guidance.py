"""A spec with classifier-free (w) and classifier guidance (s) settings: each weight family is read on its
own, so classifier-guided samples never enter the numbers of w = 0, and s gets its own answer."""

from analysis_fixtures import fixture_data

from analysis.families import classifier_family, guidance_family
from analysis.report import answer

W0, W3 = "ddim-20-eta0-w0", "ddim-20-eta0-w3"
S3, S10 = "ddim-20-eta0-w0-cg3", "ddim-20-eta0-w0-cg10"


def data(tmp_path):
    def m(fid, acc):
        return {"fid": [fid, fid + 1.0, fid + 2.0], "class_accuracy": [acc, acc + 0.01, acc - 0.01]}

    final = {
        ("conditional", W0): m(50.0, 0.76),
        ("conditional", W3): m(30.0, 0.96),
        ("conditional", S3): m(200.0, 0.10),  # would drag w = 0 to FID 125 if it were mixed in
        ("conditional", S10): m(210.0, 0.12),
        ("unconditional", W0): {"fid": [60.0, 61.0, 62.0], "class_accuracy": [float("nan")] * 3},
        ("unconditional", S3): m(62.0, 0.30),
        ("unconditional", S10): m(64.0, 0.60),
    }
    d = fixture_data(tmp_path, final, axis="model.conditional", conditional=True, pngs=False)
    d.runs["conditional"] = d.runs["arm_label"] == "conditional"
    return d


def test_classifier_guided_settings_stay_out_of_the_w_family(tmp_path):
    d = data(tmp_path)
    fam = guidance_family(d)
    assert set(fam["setting"]) == {W0, W3} and set(fam["arm_label"]) == {"conditional"}
    assert fam.loc[fam["setting"] == W0, "fid"].mean() == 51.0
    cg = classifier_family(d)
    assert set(cg["setting"]) == {W0, S3, S10}


def test_classifier_guidance_is_answered_per_arm_with_its_own_symbol(tmp_path):
    text = answer(data(tmp_path))
    assert "FID is lowest at w = 3 (31" in text  # the w answer sees only w = 0 and w = 3
    uncond = text[text.index("Classifier guidance of unconditional:") :]
    assert "class accuracy is highest at s = 10" in uncond and "no class accuracy recorded at s = 0" in uncond
    assert "Classifier guidance of conditional:" in text
