"""Bad input: one line naming the file and the field (or the --set override), exit status 2, nothing written."""

import re
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import ConfigError
from harness.config.spec import load_spec, make_plan

INF, NAN = float("inf"), float("nan")


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    """Bad input must stop before any work: a case that slips through validation fails here at once."""

    def refuse(*args, **kwargs):
        raise AssertionError("bad input passed validation and reached the runner")

    import harness.orchestration.runner
    import harness.sweeps.sweep
    import harness.training.train

    for module, name in [
        (harness.orchestration.runner, "preflight"),
        (harness.sweeps.sweep, "preflight"),
        (harness.training.train, "train"),
    ]:
        monkeypatch.setattr(module, name, refuse)


GOOD = {
    "name": "bad",
    "question": "q?",
    "base": {"data": {"dataset": "mnist-5k"}},
    "axes": {"grid": {"diffusion.schedule": ["linear", "cosine"]}},
    "seeds": [0],
    "evaluate": {"sampler": ["ddim"], "steps": [10]},
    "profiles": {"smoke": {"set": {"train.steps": 2, "train.device": "cpu"}}},
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
    (
        "misspelled section",
        _with("base/trian", {"steps": 3}),
        "trian: unknown key; valid keys here: autoencoder, data, diffusion, eval, model, train",
    ),
    ("misspelled field", _with("base/train", {"stpes": 3}), "train.stpes: unknown key; valid keys here: batch_size"),
    ("misspelled model field", _with("base/model", {"chanels": 8}), "model.chanels: unknown key"),
    ("seeds wrong type", _with("seeds", "abc"), "seeds"),
    ("seeds empty", _with("seeds", []), "seeds"),
    (
        "batch size wrong type",
        _with("base/train", {"batch_size": "many"}),
        "train.batch_size: Input should be a valid integer",
    ),
    (
        "unknown schedule",
        _with("axes/grid", {"diffusion.schedule": ["linear", "quadratic"]}),
        "unknown schedule 'quadratic'; valid: cosine, linear",
    ),
    (
        "unknown sampler",
        _with("evaluate/sampler", ["euler_a"]),
        "evaluate.sampler.0: unknown sampler 'euler_a'; valid: ddim, ddpm, dpmpp_2m, euler, heun",
    ),
    (
        "unknown parameterization",
        _with("axes/grid", {"diffusion.parameterization": ["score"]}),
        "unknown parameterization 'score'; valid: eps, v, x0",
    ),
    ("unknown data set", _with("base/data", {"dataset": "imagenet"}), "unknown data set 'imagenet'; valid: cifar10"),
    ("unknown spacing", _with("evaluate/spacing", ["uniform"]), "evaluate.spacing.0: unknown spacing 'uniform'"),
    ("unknown loss weighting", _with("base/diffusion", {"loss_weighting": "p2"}), "unknown loss weighting 'p2'"),
    (
        "sampler steps above T",
        _with("evaluate/steps", [2000]),
        "evaluate.steps: 2000 is above diffusion.timesteps = 1000",
    ),
    (
        "sampler steps below 1",
        _with("evaluate/steps", [0]),
        "evaluate.steps.0: Input should be greater than or equal to 1",
    ),
    (
        "train steps zero",
        _with("profiles/smoke/set", {"train.steps": 0}),
        "train.steps: Input should be greater than or equal to 1",
    ),
    ("batch size zero", _with("base/train", {"batch_size": 0}), "train.batch_size"),
    ("batch size negative", _with("base/train", {"batch_size": -4}), "train.batch_size"),
    ("negative lr", _with("base/train", {"lr": -1e-3}), "train.lr"),
    ("ema decay above 1", _with("base/train", {"ema_decay": 1.5}), "train.ema_decay"),
    ("label dropout above 1", _with("base/train", {"label_dropout": 2}), "train.label_dropout"),
    ("T below 2", _with("base/diffusion", {"timesteps": 1}), "diffusion.timesteps"),
    (
        "guidance on an unconditional model",
        _with("evaluate/guidance", [0.0, 2.0]),
        "evaluate.guidance: 2.0 needs model.conditional: true",
    ),
    (
        "eps with zero terminal SNR",
        _with("base/diffusion", {"zero_terminal_snr": True}),
        "zero_terminal_snr needs parameterization v or x0",
    ),
    (
        "empty axis",
        _with("axes/grid", {"diffusion.schedule": []}),
        "axes.grid: axis 'diffusion.schedule' has no values",
    ),
    (
        "duplicate arms",
        _with("axes/grid", {"diffusion.schedule": ["cosine", "cosine"]}),
        "two arms resolve to the same configuration",
    ),
    (
        "zip of unequal lengths",
        _with("axes/zip", [{"diffusion.schedule": ["linear"], "train.lr": [1e-3, 2e-3]}]),
        "zip group",
    ),
    ("unknown key on an axis", _with("axes/grid", {"train.stepz": [1, 2]}), "train.stepz: unknown key"),
    ("axis into a scalar", _with("axes/grid", {"data.dataset.x": [1, 2]}), "data.dataset: expected a mapping"),
    ("missing question", _with("question", None), "question: Field required"),
    ("missing name", _with("name", None), "name: Field required"),
    ("name with a slash", _with("name", "a/b"), "name: String should match pattern"),
    (
        "unknown profile key",
        _with("profiles/smoke", {"sett": {}}),
        "profiles.smoke.sett: unknown key; valid keys here: cpu_jobs, evaluate, seeds, set",
    ),
    ("cpu_jobs zero", _with("cpu_jobs", 0), "cpu_jobs"),
    ("base is a list", _with("base", [1, 2]), "base"),
    (
        "setting with unknown sampler",
        _with("evaluate/settings", [{"sampler": "plms", "steps": 10}]),
        "evaluate.settings.0.sampler: unknown sampler 'plms'",
    ),
    (
        "setting with unknown key",
        _with("evaluate/settings", [{"stepz": 10}]),
        "evaluate.settings: 0: unknown key 'stepz'; valid keys here: sampler, steps",
    ),
    (
        "profile setting above T",
        _with("profiles/smoke/evaluate", {"steps": [5000]}),
        "profiles.smoke.evaluate.steps: 5000 is above",
    ),
    # non-finite floats pass ``gt=0`` and then serialize as null: refused everywhere
    ("infinite lr", _with("base/train", {"lr": INF}), "base.train.lr: Input should be a finite number"),
    (
        "nan weight decay",
        _with("base/train", {"weight_decay": NAN}),
        "base.train.weight_decay: Input should be a finite number",
    ),
    (
        "infinite min-SNR gamma",
        _with("base/diffusion", {"min_snr_gamma": INF}),
        "diffusion.min_snr_gamma: Input should be a finite",
    ),
    ("infinite guidance", _with("evaluate/guidance", [INF]), "evaluate.guidance.0: Input should be a finite number"),
    (
        "infinite eta in a setting",
        _with("evaluate/settings", [{"eta": INF}]),
        "evaluate.settings.0.eta: Input should be a finite",
    ),
    (
        "infinite lr in a profile",
        _with("profiles/smoke/set", {"train.lr": INF}),
        "profiles.smoke.set.train.lr: Input should be a finite",
    ),
    # a bool is not a number (pydantic would read true as 1)
    (
        "batch_size: true",
        _with("base/train", {"batch_size": True}),
        "base.train.batch_size: expected a number, not the boolean true",
    ),
    (
        "steps: true in a profile",
        _with("profiles/smoke/set", {"train.steps": True}),
        "profiles.smoke.set.train.steps: expected a number",
    ),
    (
        "sampler steps: true",
        _with("evaluate/steps", [True]),
        "evaluate.steps.0: expected a number, not the boolean true",
    ),
    ("seed: true", _with("seeds", [True]), "seeds.0: expected a number, not the boolean true"),
    # model shapes that cannot build or run, checked against the data set's image size before anything runs
    ("odd channels", _with("base/model", {"channels": 9}), "base.model.channels: 9 is odd"),
    (
        "channels the attention heads cannot split",
        _with("base/model", {"channels": 50}),
        "model.channels: attention at width 100 uses 3 heads",
    ),
    (
        "channel_mult [0]",
        _with("base/model", {"channel_mult": [0]}),
        "base.model.channel_mult: [0] needs at least one level",
    ),
    ("channel_mult [1, -2]", _with("base/model", {"channel_mult": [1, -2]}), "base.model.channel_mult: [1, -2] needs"),
    (
        "channel_mult []",
        _with("base/model", {"channel_mult": []}),
        "base.model.channel_mult: [] needs at least one level",
    ),
    (
        "attention never reached",
        _with("base/model", {"attention_resolutions": [5]}),
        "base.model.attention_resolutions: 5 is never reached; with 28x28 images and 3 levels the model works at 28, 14, 7",
    ),
    (
        "attention at 7 on cifar10",
        _with("base/data", {"dataset": "cifar10"}),
        "attention_resolutions: 7 is never reached; with 32x32 images",
    ),
    ("negative seed", _with("seeds", [-1]), "seeds.0: Input should be greater than or equal to 0"),
    ("seed of 2^63", _with("seeds", [2**63]), "seeds.0: Input should be less than or equal to 9223372036854775807"),
    (
        "eval seed of 2^63",
        _with("base/eval", {"seed": 2**63}),
        "base.eval.seed: Input should be less than or equal to 9223372036854775807",
    ),
    (
        "too many eval samples",
        _with("base/eval", {"num_samples": 50_001}),
        "base.eval.num_samples: Input should be less than or equal to 50000",
    ),
    ("name too long for a file", _with("name", "n" * 300), "name: String should have at most 100 characters"),
    ("profile name with a slash", _with("profiles", {"a/b": {}}), "String should match pattern"),
    (
        "empty profile seeds",
        _with("profiles/smoke/seeds", []),
        "profiles.smoke.seeds: List should have at least 1 item",
    ),
    # a profile may not silently replace what an axis, the seeds or evaluate decide
    (
        "profile sets an axis",
        _with("profiles/smoke/set", {"diffusion.schedule": "linear"}),
        "profiles.smoke.set.diffusion.schedule: diffusion.schedule is an axis of this spec: axes.grid sets it in every arm",
    ),
    (
        "profile sets the samplers",
        _with("profiles/smoke/set", {"eval.samplers": [{"sampler": "ddim"}]}),
        "profiles.smoke.set.eval.samplers: the spec's evaluate section decides the sampler settings",
    ),
    # plans are counted before they are built: alias-free blow-ups end here, not in a hang
    (
        "plan too large",
        _with(
            "axes/grid",
            {
                "train.warmup_steps": list(range(100)),
                "train.lr": [i / 1000 for i in range(1, 101)],
                "diffusion.schedule": ["linear", "cosine"],
            },
        ),
        "axes x seeds x evaluate: 20,000 evaluation runs; a plan has at most 10,000",
    ),
    (
        "evaluation grid too large",
        _with("evaluate", {"steps": list(range(1, 101)), "guidance": [0.0] * 60}),
        "axes x seeds x evaluate: 12,000 evaluation runs",
    ),
    (
        "too many excludes",
        _with("axes/exclude", [{"diffusion.schedule": "x"}] * 101),
        "axes.exclude: List should have at most 100 items",
    ),
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
    assert not re.search(r"eval\.samplers\.\d", err)  # a setting is named by the spec's field, not the config path
    assert not db.parent.exists()  # nothing was written to the tracking store


def test_missing_file_and_unknown_profile(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert f"error: {tmp_path / 'nope.yaml'}: cannot read" in capsys.readouterr().err
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["run", str(path), "--profile", "huge", "--dry-run"]) == 2
    assert "profiles: unknown profile 'huge'; valid: smoke" in capsys.readouterr().err


def test_a_sweep_spec_given_to_run_names_the_command_it_needs(capsys):
    """Read as an ablation, a sweep's ``profiles.*.search`` would be reported as an unknown key."""
    path = str(Path(__file__).parents[1] / "experiments" / "sweep-lr-ema.yaml")
    err = _fails_cleanly(capsys, ["run", path, "--profile", "smoke", "--dry-run"], f"{path}: search:")
    assert f"run it with `harness sweep {path}`" in err


def test_validate_reports_bad_spec_and_accepts_good(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main(["validate", str(path)]) == 0
    path.write_text(
        textwrap.dedent("""\
        name: x
        question: q
        axes: {grid: {diffusion.schedule: [linear, circle]}}
    """)
    )
    assert main(["validate", str(path)]) == 2
    assert "unknown schedule 'circle'" in capsys.readouterr().err


KEYS = st.sampled_from(
    [
        "name",
        "question",
        "base",
        "axes",
        "seeds",
        "evaluate",
        "profiles",
        "grid",
        "zip",
        "include",
        "exclude",
        "train",
        "model",
        "diffusion",
        "data",
        "eval",
        "steps",
        "sampler",
        "diffusion.schedule",
        "train.steps",
        "set",
        "smoke",
        "guidance",
        "x",
    ]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3000),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["linear", "cosine", "ddim", "eps", "mnist-5k"]),
)
DOCS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)


# Byte-level garbage: random bytes, and YAML's structural tokens (anchors, aliases, brackets, tags,
# merge keys) in random order, with a NUL and invalid UTF-8 among them.
TOKENS = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b"&a ",
        b"&b ",
        b"*a",
        b"*b",
        b": ",
        b"\n",
        b"- ",
        b"  ",
        b",",
        b"!!",
        b"<<",
        b"? ",
        b"'",
        b'"',
        b"\x00",
        b"\xff",
        b"\xc3",
        b"name",
        b"base",
        b"axes",
        b"include",
        b"1",
    ]
)
GARBAGE = st.one_of(st.binary(max_size=300), st.lists(TOKENS, max_size=80).map(b"".join))
# Deep nesting in flow and block style, up to 60,000 levels.
NESTED = st.one_of(
    st.tuples(st.integers(1, 60_000), st.sampled_from([("[", "]"), ("{a: ", "}")])).map(
        lambda t: f"name: x\nquestion: q\nbase: {t[1][0] * t[0]}1{t[1][1] * t[0]}\n".encode()
    ),
    st.integers(1, 300).map(
        lambda n: (
            "name: x\nquestion: q\nbase:\n"
            + "".join(" " * (2 * i + 2) + f"k{i}:\n" for i in range(n))
            + " " * (2 * n + 2)
            + "1\n"
        ).encode()
    ),
)
BOUNDED = settings(max_examples=50, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_config_errors(path):
    """Loading and planning ``path`` succeeds or raises one ConfigError line naming the file."""
    try:
        spec = load_spec(path)
        for profile in [None, *spec.profiles]:
            make_plan(spec, str(path), profile)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path))


@BOUNDED
@given(doc=DOCS)
def test_random_documents_raise_only_config_errors(tmp_path, doc):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(doc))
    _only_config_errors(path)


@BOUNDED
@given(data=st.one_of(GARBAGE, NESTED))
def test_random_bytes_and_deep_nesting_raise_only_config_errors(tmp_path, data):
    path = tmp_path / "random.yaml"
    path.write_bytes(data)
    _only_config_errors(path)


# -- raw files: what yaml.safe_dump cannot write -------------------------------------------------


def _laughs(levels: int = 9, indent: str = "    ") -> str:
    """Each level is ten aliases of the one before: 10^levels values once expanded ("billion laughs")."""
    rows = [f"{indent}- &l0 [" + ", ".join(["lol"] * 10) + "]"]
    rows += [f"{indent}- &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)
RAW = [  # (id, file bytes, words the error line must contain)
    (
        "not UTF-8",
        GOOD_TEXT.replace("q?", "caf\udce9?").encode("utf-8", "surrogateescape"),
        "line 2: byte 0xe9 is not UTF-8 text",
    ),
    (
        "NUL byte",
        GOOD_TEXT.replace("q?", "q\0?").encode(),
        "line 2, column 12: character U+0000 is not allowed in YAML",
    ),
    ("escape character", GOOD_TEXT.replace("q?", "q\x1b[31m").encode(), "character U+001B is not allowed"),
    (
        "nested 50,000 deep",
        ("name: x\nquestion: q\nbase: " + "[" * 50_000 + "]" * 50_000).encode(),
        "line 3, column 38: nested more than 32 levels deep",
    ),
    (
        "billion laughs in axes.include",
        ("name: x\nquestion: q\naxes:\n  include:\n" + _laughs()).encode(),
        "more than 10,000 values (aliases expanded)",
    ),
    ("billion laughs in base", ("name: x\nquestion: q\nbase:\n  lol:\n" + _laughs()).encode(), "(aliases expanded)"),
    (
        "alias inside its own anchor",
        b"name: x\nquestion: q\nbase: &b {train: *b}\n",
        "alias *b refers to a value that contains it",
    ),
    ("duplicate top-level key", (GOOD_TEXT + "name: other\n").encode(), "duplicate key 'name' at line"),
    (
        "duplicate section under base",
        b"name: x\nquestion: q\nbase:\n  train: {steps: 3}\n  data: {}\n  train: {lr: 0.1}\n",
        "base: duplicate key 'train' at line 6 (first at line 4)",
    ),
    (
        "duplicate key deep down",
        b"name: x\nquestion: q\nprofiles:\n  smoke:\n    set: {train.steps: 2, train.steps: 3}\n",
        "profiles.smoke.set: duplicate key 'train.steps' at line 5 (first at line 5)",
    ),
    (
        "python tag",
        b"name: !!python/object/apply:os.system ['true']\nquestion: q\n",
        "line 1, column 7: YAML tags such as '!!python/object/apply:os.system' are not allowed",
    ),
    (
        "integer of 5,000 digits",
        ("name: x\nquestion: q\nseeds: [" + "9" * 5000 + "]\n").encode(),
        "malformed YAML: Exceeds the limit (4300 digits)",
    ),
    ("file over 1 MB", b"name: x\nquestion: q\n#" + b"x" * 1_000_001, "larger than 1,000,000 bytes"),
]
COMMANDS = {  # how each command is given a spec; every one must leave the store dir absent
    "run": lambda spec, uri: ["run", spec, "--profile", "smoke", "--tracking-uri", uri],
    "dry run": lambda spec, uri: ["run", spec, "--dry-run", "--tracking-uri", uri],
    "validate": lambda spec, uri: ["validate", spec],
    "sweep": lambda spec, uri: ["sweep", spec, "--profile", "smoke", "--tracking-uri", uri],
}


def _fails_cleanly(capsys, argv, start, *words):
    """``argv`` exits 2 with one stderr line that starts with ``start`` and holds ``words``."""
    t0 = time.perf_counter()
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith(f"error: {start}") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    # A hang (alias expansion, deep recursion) takes minutes; 60 s only catches that, never a slow machine.
    assert time.perf_counter() - t0 < 60
    return err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("data,words", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_bad_files_exit_2_with_one_line_for_every_command(tmp_path, capsys, command, data, words):
    path = tmp_path / "spec.yaml"
    path.write_bytes(data)
    store = tmp_path / "store"
    _fails_cleanly(capsys, COMMANDS[command](str(path), f"sqlite:///{store / 'mlflow.db'}"), path, words)
    assert not store.exists()


# -- --set: a value is YAML read within the same limits; a key the spec owns is refused ----------

SWEEP = {
    **{k: v for k, v in GOOD.items() if k != "axes"},
    "search": {
        "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
        "n_trials": 1,
        "objective": {"metric": "fid", "direction": "minimize"},
        "sampler": "random",
        "pruner": "none",
    },
}
BAD_SETS = [  # (--set items, words); refused by harness train, run and sweep alike
    (["train.steps={"], "--set train.steps: line 1, column 2: malformed YAML"),
    (
        ["train.steps=!!python/object/apply:os.system ['true']"],
        "--set train.steps: line 1, column 1: YAML tags such as",
    ),
    (["train.steps=!!int 3"], "YAML tags such as '!!int' are not allowed"),
    (["train.lr=.inf"], "--set train.lr: Input should be a finite number"),
    (["train={lr: .nan}"], "--set train: train.lr: Input should be a finite number"),
    (["diffusion.min_snr_gamma=.inf"], "--set diffusion.min_snr_gamma: Input should be a finite number"),
    (["train.steps=true"], "--set train.steps: expected a number, not the boolean true"),
    (["model.channels=9"], "--set model.channels: 9 is odd"),
    (["model.channel_mult=[]"], "--set model.channel_mult: [] needs at least one level"),
    (["eval.num_samples=1000000"], "--set eval.num_samples: Input should be less than or equal to 50000"),
    (
        ["train.steps=" + "[" * 50_000 + "]" * 50_000],
        "--set train.steps: line 1, column 33: nested more than 32 levels",
    ),
    (["train.steps=[" + _laughs(7, "").replace("\n", ", ").replace("- ", "") + "]"], "(aliases expanded)"),
    (["train.steps=3", "train.steps=4"], "--set train.steps: given twice"),
    (["train.steps"], "--set 'train.steps': expected key=value"),
    (["train..steps=3"], "expected key=value"),
]
OWNED_SETS = [  # keys the spec itself decides (issue 12: never silently ignored)
    (
        ["diffusion.schedule=cosin"],
        "run",
        "--set diffusion.schedule: diffusion.schedule is an axis of this spec: axes.grid sets it in every arm",
    ),
    (["diffusion={schedule: linear}"], "run", "--set diffusion: diffusion.schedule is an axis of this spec"),
    (
        ["eval.samplers=[{sampler: ddim, steps: 5}]"],
        "run",
        "--set eval.samplers: the spec's evaluate section decides the sampler settings; change its fields (sampler, steps",
    ),
    (["eval.samplers.0.steps=5"], "sweep", "--set eval.samplers.0.steps: the spec's evaluate section decides"),
    (["eval={samplers: []}"], "run", "--set eval: the spec's evaluate section decides"),
    (["train.seed=3"], "sweep", "--set train.seed: the spec's seeds decide train.seed; change seeds instead"),
]


def _spec_files(tmp_path):
    run, sweep = tmp_path / "spec.yaml", tmp_path / "sweep.yaml"
    run.write_text(GOOD_TEXT)
    sweep.write_text(yaml.safe_dump(SWEEP))
    return run, sweep


@pytest.mark.parametrize("items,words", BAD_SETS, ids=[i[0][:30] for i, _ in BAD_SETS])
def test_bad_overrides_exit_2_for_train_run_and_sweep(tmp_path, capsys, items, words):
    run, sweep = _spec_files(tmp_path)
    sets = [a for item in items for a in ("--set", item)]
    store, run_dir = tmp_path / "store", tmp_path / "run"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    _fails_cleanly(capsys, ["train", *sets, "--run-dir", str(run_dir)], "--set", words)
    _fails_cleanly(capsys, ["run", str(run), "--profile", "smoke", "--tracking-uri", uri, *sets], "--set", words)
    _fails_cleanly(capsys, ["sweep", str(sweep), "--profile", "smoke", "--tracking-uri", uri, *sets], "--set", words)
    assert not store.exists() and not run_dir.exists()


@pytest.mark.parametrize("items,command,words", OWNED_SETS, ids=[i[0][:30] for i, _, _ in OWNED_SETS])
def test_overrides_of_what_the_spec_decides_exit_2_naming_the_owner(tmp_path, capsys, items, command, words):
    run, sweep = _spec_files(tmp_path)
    store = tmp_path / "store"
    spec = run if command == "run" else sweep
    sets = [a for item in items for a in ("--set", item)]
    _fails_cleanly(
        capsys,
        [command, str(spec), "--profile", "smoke", "--tracking-uri", f"sqlite:///{store}/m.db", *sets],
        "--set",
        words,
    )
    _fails_cleanly(capsys, ["run", str(run), "--dry-run", *sets], "--set")
    assert not store.exists()


@pytest.mark.parametrize("item", ["train.lr=0.001", "train={lr: 0.001}"])
def test_an_override_of_a_searched_key_exits_2(tmp_path, capsys, item):
    _, sweep = _spec_files(tmp_path)
    store = tmp_path / "store"
    argv = ["sweep", str(sweep), "--profile", "smoke", "--tracking-uri", f"sqlite:///{store}/m.db", "--set", item]
    _fails_cleanly(capsys, argv, "--set", "search.params samples this key in every trial")
    assert not store.exists()


def test_an_override_the_spec_does_not_own_still_applies(tmp_path):
    run, _ = _spec_files(tmp_path)
    plan = make_plan(load_spec(run), str(run), "smoke", {"train.lr": 3e-4, "eval.num_samples": 64})
    assert {(j.config.train.lr, j.config.eval.num_samples) for j in plan.jobs} == {(3e-4, 64)}


# -- a dry run reads a store and never creates one -------------------------------------------------


def test_dry_run_never_creates_a_store(tmp_path, capsys, monkeypatch):
    run, _ = _spec_files(tmp_path)
    assert main(["run", str(run), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"]) == 0
    assert "new  seed=0  diffusion.schedule=linear" in capsys.readouterr().out
    for uri in [(tmp_path / "files").as_uri(), str(tmp_path / "plain")]:  # MLflow 3 refuses its file store
        _fails_cleanly(capsys, ["run", str(run), "--dry-run", "--tracking-uri", uri], "--tracking-uri", "file store")
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        assert main(["run", str(run), "--dry-run", "--tracking-uri", uri]) == 0
        assert "new  seed=0  diffusion.schedule=linear" in capsys.readouterr().out
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "sweep.yaml"]


def test_dry_run_on_a_broken_store_is_one_line(tmp_path, capsys):
    run, _ = _spec_files(tmp_path)
    (tmp_path / "mlflow.db").write_text("not a database")
    _fails_cleanly(
        capsys,
        ["run", str(run), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        "--tracking-uri",
        "is not an SQLite database",
    )


# -- resources: memory and device checked before anything is written (issue 29 item 4) --------------------


@pytest.mark.parametrize(
    "items,words",
    [
        (["train.batch_size=60000", "model.channels=512"], "lower train.batch_size"),
        (["train.device=cuda:7"], "train.device: 'cuda:7' but"),
        (["eval.num_samples=3"], "precision and recall need at least 4 samples"),
    ],
    ids=["memory", "device", "num_samples"],
)
def test_what_cannot_run_here_exits_2_before_anything_is_written(tmp_path, capsys, monkeypatch, items, words):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run, _ = _spec_files(tmp_path)
    sets = [a for item in items for a in ("--set", item)]
    store, run_dir = tmp_path / "store", tmp_path / "run"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    _fails_cleanly(capsys, ["train", *sets, "--run-dir", str(run_dir)], "", words)
    _fails_cleanly(capsys, ["run", str(run), "--profile", "smoke", "--tracking-uri", uri, *sets], "", words)
    _fails_cleanly(
        capsys, ["run", str(run), "--profile", "smoke", "--dry-run", "--tracking-uri", uri, *sets], "", words
    )
    assert not store.exists() and not run_dir.exists()
