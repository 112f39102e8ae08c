"""`harness train` end to end on mnist-5k, offline, on the CPU, tracked like any run."""

import json

import pytest
from mlflow import MlflowClient

from harness.cli import main
from harness.config.schema import CHECKPOINT, CODE_VERSION, COMMIT, HASH, PARENT, ROLE, SPEC
from harness.orchestration.provenance import code_version

TINY = [
    "model.channels=8",
    "model.channel_mult=[1, 2]",
    "model.attention_resolutions=[]",
    "model.conditional=true",
    "train.steps=30",
    "train.batch_size=16",
    "train.eval_every=15",
    "train.checkpoint_every=15",
    "train.device=cpu",
    "eval.num_samples=40",
    "eval.batch_size=40",
    "eval.samplers=[{sampler: ddim, steps: 4}, {sampler: dpmpp_2m, steps: 4, guidance: 1.0}]",
]


def test_train_prints_writes_metrics_and_is_tracked(tmp_path, capsys, monkeypatch):
    out_json = tmp_path / "m.json"
    assert (
        main(
            [
                "train",
                *sum((["--set", s] for s in TINY), []),
                "--json",
                str(out_json),
                "--run-dir",
                str(tmp_path / "run"),
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for word in ("fid", "kid", "precision", "recall", "recognizability", "class_accuracy", "recognizable at step"):
        assert word in printed
    m = json.loads(out_json.read_text())
    assert set(m) == {"config_hash", "classifier_accuracy", "train", "evals", "recognizable_at_step"}
    assert m["classifier_accuracy"] > 0.96 and m["train"]["images_per_second"] > 0
    assert [(e["sampler"], e["guidance"]) for e in m["evals"]] == [("ddim", 0.0), ("dpmpp_2m", 1.0)]
    for e in m["evals"]:
        assert {
            "fid",
            "kid",
            "precision",
            "recall",
            "recognizability",
            "class_accuracy",
            "nfe",
            "sample_seconds",
            "eta",
            "steps",
        } <= set(e)
        # guided (w > 0): each step runs a doubled batch, 2 network evaluations per sample
        assert e["fid"] > 0 and 0 <= e["recognizability"] <= 1 and e["nfe"] == (8 if e["guidance"] else 4)
    grids = sorted(p.name for p in (tmp_path / "run" / "grids").rglob("*.png"))
    assert grids == ["step_0000015.png"] * 2 + ["step_0000030.png"] * 2

    # Tracked as a job's training run is, in the default experiment, with its evaluations as children.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harness-train")
    (run,) = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'train'")
    assert f"tracked: run {run.info.run_id} in experiment 'harness-train'" in printed
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags[HASH] == m["config_hash"] and tags[SPEC] == "harness-train"
    assert tags[CODE_VERSION] == code_version().train and COMMIT in tags
    assert tags[CHECKPOINT] == str(tmp_path / "run" / "checkpoint.pt")
    assert run.data.params["train.steps"] == "30" and run.data.params["model.conditional"] == "True"
    assert [x.step for x in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 31))
    assert run.data.metrics["classifier_accuracy"] == m["classifier_accuracy"]
    evals = client.search_runs([exp.experiment_id], f"tags.`{PARENT}` = '{run.info.run_id}'")
    assert sorted(e.data.params["sampler"] for e in evals) == ["ddim", "dpmpp_2m"]
    assert all(e.data.tags[ROLE] == "eval" and e.data.metrics["fid"] > 0 for e in evals)

    # The same command again resumes the finished checkpoint and the same run: nothing new is trained.
    args = ["train", *sum((["--set", s] for s in TINY), []), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    again = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'train'")
    assert [r.info.run_id for r in again] == [run.info.run_id] and again[0].info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 30

    # --experiment names another experiment (a run of its own there); --no-track opens no store at all.
    assert main([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "mine"]) == 0
    (mine,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id], f"tags.`{ROLE}` = 'train'")
    assert (
        mine.info.status == "FINISHED" and mine.data.tags[SPEC] == "mine" and mine.data.tags[HASH] == m["config_hash"]
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    capsys.readouterr()
    assert main([*args, "--no-track"]) == 0
    assert "tracked:" not in capsys.readouterr().out and not (tmp_path / "store").exists()


SHORT = [*TINY[:4], "train.steps=2", "train.batch_size=4", "train.device=cpu", "eval.num_samples=8"]


def test_unreachable_store_is_one_line_exit_2_before_training(tmp_path, capsys):
    args = ["train", *sum((["--set", s] for s in SHORT), []), "--run-dir", str(tmp_path / "r")]
    assert main([*args, "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tracking store http://127.0.0.1:9 is not usable" in err, err
    assert not (tmp_path / "r").exists()


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--set", "diffusion.schedule=quadratic", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diffusion.schedule: unknown schedule 'quadratic'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_two_trainings_with_different_set_are_two_arms_of_a_report(tmp_path, capsys):
    """Issue 27: `harness train` runs have no arm; the loader makes the config fields that differ their arms."""
    from analysis.load import load_experiment
    from harness.orchestration.tracking import MlflowStore

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for schedule in ("linear", "cosine"):
        sets = [*SHORT, f"diffusion.schedule={schedule}", "eval.samplers=[{sampler: ddim, steps: 3}]"]
        args = ["train", *sum((["--set", s] for s in sets), []), "--run-dir", str(tmp_path / schedule)]
        assert main([*args, "--tracking-uri", uri]) == 0
    data = load_experiment(MlflowStore(uri), "harness-train")
    assert data.axes == ["diffusion.schedule"] and sorted(data.arms) == ["cosine", "linear"]
    out = ["--out", str(tmp_path / "report")]
    assert main(["report", "--experiment", "harness-train", "--tracking-uri", uri, *out]) == 0
    assert "cosine" in (tmp_path / "report" / "report.md").read_text()


FIXED = [*SHORT, "train.precision=fp32", "train.memory_format=contiguous", "eval.samplers=[{sampler: ddim, steps: 2}]"]


def _train_args(sets, run_dir, uri):
    return ["train", *sum((["--set", s] for s in sets), []), "--run-dir", str(run_dir), "--tracking-uri", uri]


@pytest.mark.slow  # trains end to end; test_checkpoint_identity.py checks the same rules in seconds
def test_a_run_dir_of_another_config_is_refused_in_one_line_or_moved_aside_with_force(tmp_path, capsys):
    """Issue 29: another configuration's checkpoint is never adopted (0 steps trained, its FID logged as ours)."""
    from harness.config import load_config
    from harness.training.checkpoint import ASIDE

    uri, run_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "r"
    assert main(_train_args(FIXED, run_dir, uri)) == 0
    ours = load_config(None, FIXED).train_hash()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness-train").experiment_id
    for change in ("train.lr=3e-4", "model.channels=16"):  # another optimization; another architecture
        sets = [*(s for s in FIXED if s.split("=")[0] != change.split("=")[0]), change]
        other = load_config(None, sets).train_hash()
        capsys.readouterr()
        assert main(_train_args(sets, run_dir, uri)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"holds config {ours}, not this config {other}" in err, err
        assert "--force moves it aside" in err and "Traceback" not in err
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing written
        assert not client.search_runs([exp], f"tags.`{HASH}` = '{other}'")  # no run opened
    assert main([*_train_args([*FIXED, "train.lr=3e-4"], run_dir, uri), "--force"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    (aside,) = (run_dir / ASIDE).iterdir()
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.is_file()} == before  # moved, not deleted


@pytest.mark.slow  # trains end to end; test_checkpoint_identity.py checks the same rules in seconds
def test_force_through_a_symlinked_run_dir_retrains_what_it_points_to(tmp_path, capsys):
    """Issue 29: rmtree(ignore_errors=True) did nothing on a link, and the old checkpoint was reused as "trained"."""
    uri, real, link = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    assert main(_train_args(FIXED, link, uri)) == 0
    first = (real / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*_train_args(FIXED, link, uri), "--force"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert link.is_symlink() and (real / "checkpoint.pt").stat().st_mtime_ns != first  # a new checkpoint
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("harness-train").experiment_id], f"tags.`{ROLE}` = 'train'"
    )
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # each trained its own 2 steps
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")] == [1, 2]
