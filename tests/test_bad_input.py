"""Bad input: one line naming the file and the field, exit status 2, nothing written."""
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import ConfigError
from harness.spec import load_spec, make_plan

GOOD = {
    "name": "bad", "question": "q?", "base": {"data": {"dataset": "mnist-5k"}},
    "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}}, "seeds": [0],
    "evaluate": {"sampler": ["ddim"], "steps": [10]}, "profiles": {"smoke": {"set": {"train.steps": 2, "train.device": "cpu"}}},
}


def _with(path: str, value):
    """GOOD with the dotted ``path`` set (``None`` deletes it)."""
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    *heads, last = path.split("/")
    d = spec
    for h in heads:
        d = d.setdefault(h, {})
    if value is None:
        d.pop(last, None)
    else:
        d[last] = value
    return spec


CASES = [  # (id, spec document or raw text, words the error line must contain)
    ("unknown top-level key", _with("axs", {}), "axs: unknown key; valid keys here: axes, base"),
    ("misspelled section", _with("base/trian", {"steps": 3}), "trian: unknown key; valid keys here: data, diffusion, eval, model, train"),
    ("misspelled field", _with("base/train", {"stpes": 3}), "train.stpes: unknown key; valid keys here: batch_size"),
    ("misspelled model field", _with("base/model", {"chanels": 8}), "model.chanels: unknown key"),
    ("seeds wrong type", _with("seeds", "abc"), "seeds"),
    ("seeds empty", _with("seeds", []), "seeds"),
    ("batch size wrong type", _with("base/train", {"batch_size": "many"}), "train.batch_size: Input should be a valid integer"),
    ("unknown schedule", _with("axes/grid", {"diffusion.schedule": ["linear", "quadratic"]}), "unknown schedule 'quadratic'; valid: cosine, linear"),
    ("unknown sampler", _with("evaluate/sampler", ["euler_a"]), "unknown sampler 'euler_a'; valid: ddim, ddpm, dpmpp_2m, heun"),
    ("unknown parameterization", _with("axes/grid", {"diffusion.parameterization": ["score"]}), "unknown parameterization 'score'; valid: eps, v, x0"),
    ("unknown data set", _with("base/data", {"dataset": "imagenet"}), "unknown data set 'imagenet'; valid: cifar10"),
    ("unknown spacing", _with("evaluate/spacing", ["uniform"]), "unknown spacing 'uniform'"),
    ("unknown loss weighting", _with("base/diffusion", {"loss_weighting": "p2"}), "unknown loss weighting 'p2'"),
    ("sampler steps above T", _with("evaluate/steps", [2000]), "steps: 2000 is above diffusion.timesteps = 1000"),
    ("sampler steps below 1", _with("evaluate/steps", [0]), "steps"),
    ("train steps zero", _with("profiles/smoke/set", {"train.steps": 0}), "train.steps: Input should be greater than or equal to 1"),
    ("batch size zero", _with("base/train", {"batch_size": 0}), "train.batch_size"),
    ("batch size negative", _with("base/train", {"batch_size": -4}), "train.batch_size"),
    ("negative lr", _with("base/train", {"lr": -1e-3}), "train.lr"),
    ("ema decay above 1", _with("base/train", {"ema_decay": 1.5}), "train.ema_decay"),
    ("label dropout above 1", _with("base/train", {"label_dropout": 2}), "train.label_dropout"),
    ("T below 2", _with("base/diffusion", {"timesteps": 1}), "diffusion.timesteps"),
    ("guidance on an unconditional model", _with("evaluate/guidance", [0.0, 2.0]), "guidance: 2.0 needs model.conditional: true"),
    ("eps with zero terminal SNR", _with("base/diffusion", {"zero_terminal_snr": True}), "zero_terminal_snr needs parameterization v or x0"),
    ("empty axis", _with("axes/grid", {"diffusion.schedule": []}), "axes.grid: axis 'diffusion.schedule' has no values"),
    ("duplicate arms", _with("axes/grid", {"diffusion.schedule": ["cosine", "cosine"]}), "two arms resolve to the same configuration"),
    ("zip of unequal lengths", _with("axes/zip", [{"diffusion.schedule": ["linear"], "train.lr": [1e-3, 2e-3]}]), "zip group"),
    ("unknown key on an axis", _with("axes/grid", {"train.stepz": [1, 2]}), "train.stepz: unknown key"),
    ("axis into a scalar", _with("axes/grid", {"data.dataset.x": [1, 2]}), "data.dataset: expected a mapping"),
    ("missing question", _with("question", None), "question: Field required"),
    ("missing name", _with("name", None), "name: Field required"),
    ("name with a slash", _with("name", "a/b"), "name: String should match pattern"),
    ("unknown profile key", _with("profiles/smoke", {"sett": {}}), "profiles.smoke.sett: unknown key; valid keys here: cpu_jobs, evaluate, seeds, set"),
    ("cpu_jobs zero", _with("cpu_jobs", 0), "cpu_jobs"),
    ("base is a list", _with("base", [1, 2]), "base"),
    ("setting with unknown sampler", _with("evaluate/settings", [{"sampler": "plms", "steps": 10}]), "unknown sampler 'plms'"),
    ("malformed YAML", "name: [unclosed\n", "malformed YAML"),
    ("a list, not a spec", "- 1\n- 2\n", "a spec is a mapping"),
    ("empty file", "", "this file is empty"),
]


@pytest.mark.parametrize("doc,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_exits_2_with_one_line(tmp_path, capsys, doc, words):
    path = tmp_path / "spec.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    db = tmp_path / "store" / "mlflow.db"
    status = main(["run", str(path), "--profile", "smoke", "--tracking-uri", f"sqlite:///{db}"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"error: {path}") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err
    assert not db.parent.exists()  # nothing was written to the tracking store


def test_missing_file_and_unknown_profile(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert f"error: {tmp_path / 'nope.yaml'}: cannot read" in capsys.readouterr().err
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["run", str(path), "--profile", "huge", "--dry-run"]) == 2
    assert "profiles: unknown profile 'huge'; valid: smoke" in capsys.readouterr().err


def test_validate_reports_bad_spec_and_accepts_good(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path)]) == 0
    path.write_text(textwrap.dedent("""\
        name: x
        question: q
        axes: {grid: {diffusion.schedule: [linear, circle]}}
    """))
    assert main(["validate", str(path)]) == 2
    assert "unknown schedule 'circle'" in capsys.readouterr().err


KEYS = st.sampled_from(["name", "question", "base", "axes", "seeds", "evaluate", "profiles", "grid", "zip",
                        "include", "exclude", "train", "model", "diffusion", "data", "eval", "steps", "sampler",
                        "diffusion.schedule", "train.steps", "set", "smoke", "guidance", "x"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3000), st.floats(allow_nan=True),
                   st.text(max_size=8), st.sampled_from(["linear", "cosine", "ddim", "eps", "mnist-5k"]))
DOCS = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(KEYS, inner, max_size=5)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_random_documents_raise_only_config_errors(tmp_path, doc):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        spec = load_spec(path)
        for profile in [None, *spec.profiles]:
            make_plan(spec, str(path), profile)
    except ConfigError as err:
        assert "\n" not in str(err)
