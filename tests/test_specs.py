"""Every shipped spec validates in every profile and runs its smoke profile end to end."""

import shutil
from pathlib import Path

import pytest
import yaml
from fixtures import EXPERIMENTS

from harness.config import ConfigError, SamplerSetting
from harness.config.schema import ROLE
from harness.config.spec import Evaluate, load_spec, make_plan
from harness.orchestration.runner import run_plan
from harness.orchestration.tracking import MlflowStore

# Ablation specs; sweep-*.yaml are validated and smoke-run by tests/test_sweep.py.
SPECS = [
    p for p in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")) if not p.stem.startswith("sweep-")
]


def test_there_are_shipped_specs():
    names = {p.stem for p in SPECS}
    assert {
        "ablation-schedules",
        "ablation-parameterization",
        "ablation-samplers",
        "ablation-guidance",
        "recognizability",
    } <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_validates_in_every_profile(path):
    spec = load_spec(path)
    assert {"smoke", "quick", "full"} <= set(spec.profiles)
    for profile in spec.profiles:
        assert make_plan(spec, str(path), profile).jobs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return MlflowStore(f"sqlite:///{tmp_path_factory.mktemp('specs') / 'mlflow.db'}")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_smoke_profile_runs(path, store):
    plan = make_plan(load_spec(path), str(path), "smoke", {"train.device": "cpu"})
    outcomes, parent = run_plan(plan, store, spec_path=str(path), quiet=True)
    assert [o.status for o in outcomes] == ["trained"] * len(plan.jobs), [o.error for o in outcomes]
    exp = store.experiment_id(plan.spec.name)
    # S arms x seeds train exactly S models; a job's K settings are K evaluations of it, no retraining
    # (arms of different processes have different settings: spec.arm_settings).
    assert len(store.runs(exp, {ROLE: "train"})) == len(plan.jobs)
    assert len(store.runs(exp, {ROLE: "eval"})) == sum(len(job.config.eval.samplers) for job in plan.jobs)


def test_evaluate_is_derived_from_the_sampler_setting_with_its_bounds(tmp_path):
    """One schema: every SamplerSetting field is an evaluate list, checked with the field's own bounds."""
    assert set(Evaluate.model_fields) == set(SamplerSetting.model_fields) | {"settings"}
    for field, bad in [("steps", 0), ("eta", -1.0), ("guidance", float("inf")), ("steps", True)]:
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({"name": "x", "question": "q", "evaluate": {field: [bad]}}))
        with pytest.raises(ConfigError, match=rf"spec.yaml: evaluate\.{field}\.0: "):
            load_spec(path)


def test_a_specs_own_profile_extends_the_shared_one(tmp_path):
    """profiles/<name>.yaml beside a spec is its profile <name>; the spec's own adds set keys, replaces the rest."""
    (tmp_path / "profiles").mkdir()
    shared = {"set": {"train.steps": 4, "model.channels": 8}, "seeds": [0], "evaluate": {"steps": [3]}}
    (tmp_path / "profiles" / "smoke.yaml").write_text(yaml.safe_dump(shared))
    own = {"smoke": {"set": {"model.channels": 16}, "evaluate": None}, "quick": {"seeds": [1]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "question": "q", "seeds": [5, 6], "profiles": own}))
    spec = load_spec(path)
    assert spec.profiles["smoke"].set == {"train.steps": 4, "model.channels": 16}
    assert spec.profiles["smoke"].seeds == [0] and spec.profiles["smoke"].evaluate is None
    assert spec.profiles["quick"].seeds == [1]
    (tmp_path / "profiles" / "smoke.yaml").write_text(yaml.safe_dump({**shared, "seeds": []}))
    with pytest.raises(ConfigError, match=r"^\S*profiles/smoke.yaml: seeds: ") as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_a_bad_key_inherited_from_the_shared_profile_names_that_file(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "smoke.yaml").write_text(yaml.safe_dump({"set": {"train.stepz": 4}}))
    path = tmp_path / "spec.yaml"
    spec = {"name": "x", "question": "q", "profiles": {"smoke": {"set": {"train.lr": 0.01}}}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        make_plan(load_spec(path), str(path), "smoke")
    assert str(err.value).startswith(f"{tmp_path / 'profiles' / 'smoke.yaml'}: set.train.stepz: unknown key")
    (tmp_path / "profiles" / "smoke.yaml").write_text(yaml.safe_dump({"set": {"train.steps": 4}}))
    path.write_text(yaml.safe_dump({**spec, "profiles": {"smoke": {"set": {"train.lr": -1}}}}))
    with pytest.raises(ConfigError) as err:  # the spec's own key: the spec's field
        make_plan(load_spec(path), str(path), "smoke")
    assert str(err.value).startswith(f"{path}: profiles.smoke.set.train.lr: ")


def test_a_shipped_spec_copied_without_its_profiles_refuses_its_empty_smoke(tmp_path):
    """Copied alone, ``smoke: {}`` would run the base (the quick-size model) under the name smoke."""
    path = tmp_path / "ablation-schedules.yaml"
    path.write_text((EXPERIMENTS / "ablation-schedules.yaml").read_text())
    with pytest.raises(ConfigError, match=r"profiles.smoke: extends the shared profile profiles/smoke.yaml, which is"):
        load_spec(path)
    shutil.copytree(EXPERIMENTS / "profiles", tmp_path / "profiles")
    assert make_plan(load_spec(path), str(path), "smoke").jobs[0].config.train.steps == 4


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_states_what_the_literature_found(path):
    """Issue 28: an entry for every shipped spec (sweeps too), each saying where its figures come from and
    how the paper's setting differs; the validation of the section is tests/test_literature.py's."""
    from harness.sweeps.search import is_sweep_spec, load_sweep

    spec = load_sweep(path).spec if is_sweep_spec(path) else load_spec(path)
    assert spec.literature, f"{path.name} has no literature section"
    for entry in spec.literature:
        assert entry.source.checked and entry.differences
        assert entry.expect is not None or entry.unchecked


@pytest.mark.parametrize("table", sorted((EXPERIMENTS / "results").glob("*/results.csv")), ids=lambda p: p.parent.name)
def test_committed_quick_reports_carry_the_literature_section(table):
    report = (table.parent / "report.md").read_text()
    assert "## Against the literature" in report
