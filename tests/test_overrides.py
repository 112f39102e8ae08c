"""`harness run -m`: Hydra's override grammar, the spec it becomes, and that spec run, printed and read back."""

import pytest
import yaml
from fixtures import TINY, write_spec

from harness.cli import main
from harness.config import ConfigError
from harness.config.overrides import default_name, parse, parse_seeds, spec_data, spec_yaml
from harness.config.schema import ROLE
from harness.config.spec import load_spec, make_plan, validate_spec
from harness.orchestration.tracking import MlflowStore

# -- the grammar --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, values, sweep",
    [
        ("train.steps=200", [200], False),
        ("train.lr=1e-3", [0.001], False),  # YAML 1.1 reads 1e-3 as a string; Hydra as a float
        ("train.lr=3.0e-4,1e-3", [3e-4, 1e-3], True),
        ("model.conditional=true", [True], False),
        ("eval.inception_weights=null", [None], False),
        ("diffusion.schedule=linear,cosine", ["linear", "cosine"], True),
        ("diffusion.schedule=choice(linear,cosine)", ["linear", "cosine"], True),
        ("model.channel_mult=[1,2]", [[1, 2]], False),  # brackets keep their commas: one list
        ("model.channel_mult=[1,2],[1,2,2]", [[1, 2], [1, 2, 2]], True),
        ("data.root='a,b'", ["a,b"], False),  # quotes keep theirs: one string
        ('data.root="x y",z', ["x y", "z"], True),
        ("train.steps=range(500,2001,500)", [500, 1000, 1500, 2000], True),  # stop excluded, as Python's
        ("train.steps=range(3,6)", [3, 4, 5], True),
        ("train.lr=range(0.1,0.4,0.1)", [0.1, 0.2, 0.3], True),  # start + i * step: no drift
        ("train.steps=range(5,2,-1)", [5, 4, 3], True),
        ("eval.samplers_x={a: 1}", [{"a": 1}], False),  # parsed here; the schema refuses the key later
    ],
)
def test_an_override_is_a_value_or_a_sweep(item, values, sweep):
    o = parse(item)
    assert (o.values, o.sweep) == (values, sweep)
    assert all(type(a) is type(b) for a, b in zip(o.values, values))  # 200 is an int, 1e-3 a float


@pytest.mark.parametrize(
    "item, words",
    [
        ("train.steps", "expected key=value"),
        ("+train.steps=3", "+key is Hydra's way"),
        ("train.steps=range(1)", "range takes two or three numbers"),
        ("train.steps=range(1,1)", "is empty (stop is excluded)"),
        ("train.steps=range(0,3,0)", "range step 0"),
        ("train.steps=range(a,b)", "range takes two or three numbers"),
        ("train.steps=range(0,5000)", "an axis has at most 1,000"),
        ("model.channel_mult=[1,2", "']' missing"),
        ("data.root='a,b", "unclosed quote '"),
        ("train.steps=1,", "an empty value"),
        ("=x", "expected key=value"),
    ],
)
def test_a_malformed_override_is_one_line_naming_it(item, words):
    with pytest.raises(ConfigError) as err:
        parse(item)
    assert str(err.value).startswith(f"-m {item}: ") and words in str(err.value), err.value


def test_seeds_take_the_sweep_grammar():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("range(0,4)") == [0, 1, 2, 3]
    for bad in ("a,b", "-1", "0.5"):
        with pytest.raises(ConfigError, match=r"^--seeds .*: expected non-negative integers"):
            parse_seeds(bad)


# -- the spec it becomes ------------------------------------------------------------------------------------


def test_sweeps_are_axes_fixed_values_the_base_and_evaluate_its_grid():
    data = spec_data(
        ["diffusion.schedule=linear,cosine", "train.lr=1e-3", "evaluate.steps=10,20", "evaluate.sampler=ddim"],
        seeds=[0, 1],
    )
    assert data["axes"] == {"grid": {"diffusion.schedule": ["linear", "cosine"]}}
    assert data["base"] == {"train": {"lr": 0.001}} and data["seeds"] == [0, 1]
    assert data["evaluate"] == {"steps": [10, 20], "sampler": ["ddim"]}
    # The command line wins over every profile: smoke's own seeds and evaluate grid give way.
    smoke = data["profiles"]["smoke"]
    assert smoke["seeds"] == [0, 1] and smoke["evaluate"]["steps"] == [10, 20]
    assert smoke["set"]["train.steps"] == 4  # what -m does not touch stays the profile's
    assert data["name"] == "cli-diffusion.schedule-linear-cosine_train.lr-0.001"  # no seeds, no evaluate
    assert (
        data["question"]
        == "How do diffusion.schedule (linear vs cosine) and evaluate.steps (10 vs 20) change the samples?"
    )
    plan = make_plan(validate_spec(data, "x", shared=False), "x", "smoke")
    assert len(plan.jobs) == 4 and len(plan.settings) == 2
    assert {j.config.train.lr for j in plan.jobs} == {0.001} and {j.config.train.steps for j in plan.jobs} == {4}


def test_a_fixed_value_overrides_the_profile_and_a_sweep_replaces_its_key():
    data = spec_data(["train.steps=6", "model.channels=8,16"])
    plan = make_plan(validate_spec(data, "x", shared=False), "x", "smoke")
    assert [(j.config.train.steps, j.config.model.channels) for j in plan.jobs] == [(6, 8), (6, 16)]


def test_the_name_is_deterministic_and_short():
    a = default_name([parse("train.lr=1e-3,2e-3"), parse("diffusion.schedule=linear")])
    b = default_name([parse("diffusion.schedule=linear"), parse("train.lr=1e-3,2e-3")])
    assert a == b == "cli-diffusion.schedule-linear_train.lr-0.001-0.002"
    assert default_name([parse("train.lr=1e-3"), parse("train.device=cpu"), parse("evaluate.steps=5")]) == (
        "cli-train.lr-0.001"  # where it runs and how it is sampled: the same experiment
    )
    long, longer = (default_name([parse(f"train.steps=range(1,{n})")]) for n in (40, 41))
    assert len(long) <= 80 and len(longer) <= 80 and long != longer


def test_over_a_spec_its_axes_stay_and_a_sweep_of_the_same_key_replaces_its_axis(tmp_path):
    path = write_spec(tmp_path)  # diffusion.schedule: linear, cosine; its own smoke profile
    data = spec_data(["train.lr=1e-3,2e-3"], base=yaml.safe_load(path.read_text()))
    assert data["axes"]["grid"] == {"diffusion.schedule": ["linear", "cosine"], "train.lr": [0.001, 0.002]}
    assert data["name"] == "tiny-train.lr-0.001-0.002"
    assert len(make_plan(validate_spec(data, "x", shared=False), "x", "smoke").jobs) == 4
    data = spec_data(["diffusion.schedule=cosine"], base=yaml.safe_load(path.read_text()))
    assert "axes" not in data and data["base"]["diffusion"] == {"schedule": "cosine"}


# -- the command ---------------------------------------------------------------------------------------------

RUN = ["run", "-m", "diffusion.schedule=linear,cosine", "--seeds", "0,1", "--profile", "smoke"]


def _one_line(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err


@pytest.mark.parametrize(
    "override, words",
    [
        ("diffusion.schedule=linear,cosin", ["-m diffusion.schedule=linear,cosin: ", "unknown schedule 'cosin'"]),
        ("diffusion.schedul=linear", ["-m diffusion.schedul=linear: unknown key diffusion.schedul; valid keys"]),
        ("diffusion.timesteps=[10,20]", ["-m diffusion.timesteps=[10,20]: ", "(a sweep is key=a,b)"]),
        ("train.steps=range(1,x)", ["-m train.steps=range(1,x): range takes two or three numbers"]),
        ("evaluate.steps=0,10", ["-m evaluate.steps=0,10: 0: Input should be greater than or equal to 1"]),
        ("evaluate.sampler=dddim", ["-m evaluate.sampler=dddim: 0: unknown sampler 'dddim'"]),
        ("train.seed=0,1", ["-m train.seed=0,1: seeds are --seeds 0,1,2 here"]),
        ("eval.samplers=[]", ["sampler settings are evaluate.<field> here"]),
    ],
)
def test_a_bad_override_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, override, words):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    for extra in ([], ["--dry-run"], ["--print-spec"]):
        _one_line(capsys, ["run", "-m", override, "--profile", "smoke", "--tracking-uri", uri, *extra], *words)
        assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_a_seed_twice_is_refused_as_a_seed_not_as_an_axis(tmp_path, capsys, monkeypatch):
    """Two equal seeds are one job planned twice; the error names the seeds, not the arms."""
    monkeypatch.chdir(tmp_path)
    for extra in (["--dry-run"], ["--print-spec"]):
        _one_line(
            capsys, ["run", "-m", "diffusion.schedule=linear,cosine", "--seeds", "0,1,0", *extra], "seeds: seed 0"
        )
    spec = write_spec(tmp_path, seeds=[2, 2])
    _one_line(capsys, ["validate", str(spec)], f"{spec}: seeds: seed 2 is listed twice")
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_flags_of_one_form_refused_in_the_other(tmp_path, capsys):
    spec = str(write_spec(tmp_path))
    _one_line(capsys, ["run", spec, "--seeds", "0,1"], "--seeds: only with -m")
    _one_line(capsys, ["run", spec, "--print-spec"], "--print-spec: only with -m")
    _one_line(capsys, ["run", "-m", "train.lr=1e-3", "--set", "train.steps=3"], "--set train.steps=3: with -m")
    _one_line(capsys, ["run"], "give a SPEC file, or -m")
    _one_line(capsys, [*RUN, "--name", "a b"], "--name 'a b': letters, digits")


def test_print_spec_is_the_same_plan_read_back(tmp_path, capsys):
    assert main([*RUN, "--print-spec"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# written by: harness run -m diffusion.schedule=linear,cosine --seeds 0,1 --profile smoke")
    path = tmp_path / "my.yaml"  # saved where no profiles/ folder is: the profiles are written out whole
    path.write_text(text)
    from_file = make_plan(load_spec(path), str(path), "smoke")
    data = spec_data(["diffusion.schedule=linear,cosine"], seeds=[0, 1])
    from_line = make_plan(validate_spec(data, "-m", shared=False), "-m", "smoke")
    assert [j.config_hash for j in from_file.jobs] == [j.config_hash for j in from_line.jobs]
    assert len(from_file.jobs) == 4 and from_file.spec.name == "cli-diffusion.schedule-linear-cosine"
    assert yaml.safe_load(spec_yaml(data)) == data


def test_dry_run_prints_the_profile_and_an_estimate_before_any_run(tmp_path, capsys, monkeypatch):
    """The probe times the model (its precision fixed here, so only one candidate is timed), no store needed."""
    monkeypatch.delenv("HARNESS_AUTOTUNE")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    fixed = ["train.precision=fp32", "train.memory_format=contiguous", "train.device=cpu"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([*RUN[:3], *fixed, *RUN[3:], "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "profile smoke" and sum(" new  seed=" in line for line in out) == 4
    estimate = next(line for line in out if line.startswith("estimated time: "))
    assert "unknown" not in estimate and "probed on this machine before any run" in estimate, estimate
    assert not (tmp_path / "mlflow.db").exists()


def test_without_profile_a_run_uses_the_specs_quick_profile(tmp_path, capsys):
    quick = {"set": {**TINY, "train.steps": 6}}
    path = write_spec(tmp_path, profiles={"smoke": {"set": TINY}, "quick": quick})
    assert main(["run", str(path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("profile quick (default; --profile smoke") and "tiny [quick]" in out
    assert "48 images (6 x 8)" in out
    path = write_spec(tmp_path, name="noquick", profiles={"smoke": {"set": TINY}})
    main(["run", str(path), "--dry-run", "--set", "train.device=cpu", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert capsys.readouterr().out.startswith("profile default (the spec's base configuration")


@pytest.mark.slow
def test_a_command_line_ablation_trains_4_runs_then_0(tmp_path, capsys):
    """The Done-when of issue 27: 2 schedules x 2 seeds at the smoke profile, then the same command again."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [*RUN[:3], "train.device=cpu", *RUN[3:], "--tracking-uri", uri]
    assert main(argv) == 0
    assert "summary: 4 trained, 0 evaluated, 0 skipped, 0 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "summary: 0 trained, 0 evaluated, 4 skipped, 0 failed" in capsys.readouterr().out
    store = MlflowStore(uri)
    exp = store.experiment_id("cli-diffusion.schedule-linear-cosine")
    assert len(store.runs(exp, {ROLE: "train"})) == 4
    report = ["report", "--experiment", "cli-diffusion.schedule-linear-cosine", "--tracking-uri", uri]
    assert main([*report, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()
