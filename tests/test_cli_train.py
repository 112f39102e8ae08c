"""`harness train` end to end on mnist-5k, offline, on the CPU."""

import json

from harness.cli import main

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


def test_train_prints_and_writes_metrics(tmp_path, capsys):
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
        assert e["fid"] > 0 and 0 <= e["recognizability"] <= 1 and e["nfe"] == 4
    grids = sorted(p.name for p in (tmp_path / "run" / "grids").rglob("*.png"))
    assert grids == ["step_0000015.png"] * 2 + ["step_0000030.png"] * 2


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--set", "diffusion.schedule=quadratic", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diffusion.schedule: unknown schedule 'quadratic'" in err
    assert not (tmp_path / "r").exists()
