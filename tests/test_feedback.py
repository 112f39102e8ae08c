"""Feedback while waiting: progress lines in logs, a bar on a terminal, and the dry run's budget and estimate."""

import io
import re

import pytest
import torch
from mlflow import MlflowClient

from harness import progress as progress_module
from harness.cli import main
from harness.config import Config, SamplerSetting
from harness.config.schema import DEVICE, ROLE
from harness.config.spec import load_spec, make_plan
from harness.evaluation.evaluate import Evaluator, sampling_nfe
from harness.evaluation.features import train_classifier
from harness.orchestration.placement import resolve_plan
from harness.progress import Progress, duration, interactive
from harness.training.data import ImageData, load_dataset
from harness.training.train import NoEvaluation, train

SMOKE_SPEC = "experiments/ablation-schedules.yaml"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def no_quiet(monkeypatch):
    """Every task is long enough to report (short tasks print no lines and draw no bar)."""
    monkeypatch.setattr(progress_module, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(progress_module, "BAR_DELAY", 0.0)


def test_lines_every_tenth_with_rate_stats_and_eta(no_quiet):
    out = io.StringIO()  # not a terminal: lines, not a bar
    p = Progress(200, "job abc", stream=out)
    for i in range(200):
        if i == 50:
            p.set_stats(loss="0.0312")
        p.update(1)
    p.close()
    lines = out.getvalue().splitlines()
    assert [int(re.search(r"(\d+)% \(", x)[1]) for x in lines] == list(range(10, 101, 10))
    assert lines[0].startswith("job abc:  10% (20/200 steps), ") and "steps/s" in lines[0] and "ETA " in lines[0]
    assert "loss=0.0312" not in lines[1] and "loss=0.0312" in lines[2]
    assert lines[-1].endswith(("done in 0s", "done in 1s")) and "ETA" not in lines[-1]


def test_a_short_task_says_nothing_and_disabled_says_nothing():
    out = io.StringIO()
    p = Progress(10, "quick", stream=out)
    for _ in range(10):
        p.update(1)
    assert out.getvalue() == ""
    out = io.StringIO()
    p = Progress(10, "off", stream=out, enabled=False)
    p.update(10)
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal_but_lines_in_a_worker(no_quiet, monkeypatch):
    assert interactive(Terminal()) and not interactive(io.StringIO())
    term = Terminal()
    p = Progress(10, "bar", stream=term, enabled=True)
    p.update(10)
    p.close()
    assert "10/10" in term.getvalue() and "bar" in term.getvalue()
    monkeypatch.setattr(progress_module.multiprocessing, "parent_process", lambda: object())
    assert not interactive(Terminal())  # a worker's terminal belongs to its parent's bar
    assert Progress(10, "worker", stream=Terminal()).lines


def test_duration_reads_as_people_read_it():
    assert [duration(s) for s in (4.6, 61, 3600 + 5 * 60 + 59)] == ["5s", "1m01s", "1h05m"]
    assert duration(float("inf")) == "unknown"


def test_training_prints_a_line_per_tenth_with_images_per_second_and_eta(no_quiet, tmp_path, capsys):
    config = Config.model_validate(
        {
            "model": {"channels": 8, "channel_mult": [1], "attention_resolutions": []},
            "train": {
                "steps": 10,
                "batch_size": 4,
                "log_every": 3,
                "checkpoint_every": 10,
                "device": "cpu",
                "precision": "fp32",
                "memory_format": "contiguous",
            },
        }
    )
    data = load_dataset("mnist-5k")
    train(config, None, run_dir=tmp_path, data=data, evaluator=NoEvaluation())  # progress=None: stderr is no tty
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"train {config.train_hash()}")]
    assert len(lines) == 10 and "(1/10 steps)" in lines[0] and "ETA" in lines[0]
    # Stats come from the last log interval (the loop syncs with the device only there): none before step 3.
    assert "images/s=" not in lines[1] and re.search(r"loss=[\d.]+, images/s=\d+", lines[3])
    assert "done in" in lines[-1]
    train(config, None, run_dir=tmp_path / "quiet", data=data, evaluator=NoEvaluation(), progress=False)
    assert capsys.readouterr().out == ""


def test_classifier_training_reports_progress(no_quiet, capsys):
    full = load_dataset("mnist-5k")
    data = ImageData("digits-512", full.images[:512], full.labels[:512], 10, "test")
    train_classifier(data, epochs=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[-1].startswith("domain classifier digits-512 (trained once, then cached): 100% (4/4 steps)")
    train_classifier(data, epochs=1, reject=True, progress=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({"sampler": "ddim", "steps": 7}, 7),
        ({"sampler": "ddpm", "steps": 30}, 30),
        ({"sampler": "dpmpp_2m", "steps": 5}, 5),
    ],
)
def test_sampling_nfe_counts_the_network_calls_of_the_sampler(setting, expected):
    assert sampling_nfe(Config(), SamplerSetting(**setting)) == expected


def test_sampling_nfe_equals_what_evaluation_counts_and_sampling_reports_progress(no_quiet, capsys):
    config = Config.model_validate(
        {
            "model": {"channels": 8, "channel_mult": [1], "attention_resolutions": [], "conditional": True},
            "eval": {
                "num_samples": 6,
                "batch_size": 3,
                "samplers": [{"sampler": "heun", "steps": 10}, {"sampler": "ddim", "steps": 4, "guidance": 1.0}],
            },
        }
    )
    data = load_dataset("mnist-5k")
    evaluator = Evaluator(config, data)
    model = lambda x, t, y: torch.zeros_like(x)  # noqa: E731 - the counts do not depend on the network
    for setting in config.eval.samplers:
        assert evaluator.generate(model, setting).cost.nfe == sampling_nfe(config, setting)
    heun = sampling_nfe(config, config.eval.samplers[0])
    assert 10 < heun < 20  # Euler steps above sigma_max take one call, the others two
    out = capsys.readouterr().out
    assert f"evaluate {config.train_hash()} heun-10" in out and f"100% ({2 * heun}/{2 * heun} calls)" in out


def test_dry_run_prints_the_budget_and_unknown_without_measurements(tmp_path, capsys):
    assert (
        main(["run", SMOKE_SPEC, "--profile", "smoke", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("32 images (4 x 8)") == 2  # two arms, one seed: 4 steps of 8 images each
    assert "training: 64 images in 2 jobs" in out
    # eval_every 2 of 4 steps: evaluated at steps 2 and 4, 16 samples, DDIM-3.
    assert "sampling ddim-3-eta0-w0: 16 samples x 3 NFE x 2 evaluation(s) = 96 per job" in out
    assert "sampling in all: 192 network evaluations" in out
    assert "estimated time: unknown (no finished run of this model shape on cpu" in out
    assert not (tmp_path / "m.db").exists()


def test_dry_run_estimates_from_finished_runs_of_the_same_shape(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/m.db"
    plan, _ = resolve_plan(make_plan(load_spec(SMOKE_SPEC), SMOKE_SPEC, "smoke"))  # what its runs log
    job = plan.jobs[0]
    client = MlflowClient(uri)
    exp = client.create_experiment("elsewhere")  # any experiment: speed is a property of the shape and device
    run = client.create_run(exp, start_time=1_000_000, tags={ROLE: "train", DEVICE: "cpu"})
    for k, v in job.config.flat().items():
        client.log_param(run.info.run_id, k, str(v))
    for k, v in {
        "train/images_per_second_mean": 16.0,
        "train/seconds": 1.0,
        "eval/ddim-3-eta0-w0/sample_seconds": 2.0,
        "eval/ddim-3-eta0-w0/nfe": 3,
        "eval/ddim-3-eta0-w0/num_generated": 16,
    }.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, end_time=1_010_000)  # 10 s: 1 training, 2 x 2 sampling, 5 the rest
    assert main(["run", SMOKE_SPEC, "--profile", "smoke", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    # Per job 32 images / 16 per s + 96 NFE / 24 per s + 5 s = 11 s; two jobs, two at a time (cpu_jobs: 2).
    assert "estimated time: 11s (measured by finished runs" in out
    assert "16 images/s, 24 NFE/s and 5 s of checkpoints and metrics per job, over 1 run(s); 2 job(s) at a time" in out
