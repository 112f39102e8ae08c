"""The training loop: it learns, it resumes exactly, it stops on a non-finite loss."""

from types import SimpleNamespace

import pytest
import torch

from harness.config import SamplerSetting, build_config
from harness.result import EvalResult
from harness.tracker import MemoryTracker
from harness.training.train import NonFiniteLoss, train

TINY = {
    "model": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": [], "conditional": True},
    "train": {
        "steps": 40,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 5,
        "checkpoint_every": 10,
        "log_every": 7,
        "ema_decay": 0.9,
        "device": "cpu",
        "precision": "fp32",
        "memory_format": "contiguous",
    },
}


class NoEvaluation:
    classifier_accuracy = None

    def run(self, model, *, step, tracker):
        return [EvalResult(step, SamplerSetting(), {"recognizability": 0.0})]


def _data(images=None):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(256, 1, 28, 28, generator=g) * 2 - 1 if images is None else images
    return SimpleNamespace(
        images=images,
        labels=torch.arange(256) % 10,
        num_classes=10,
        channels=1,
        image_size=28,
        name="random",
        fingerprint="random",
    )


def _state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    config = build_config(TINY)
    a, b = MemoryTracker(), MemoryTracker()
    full = train(config, a, run_dir=tmp_path / "a", data=_data(), evaluator=NoEvaluation(), progress=False)
    assert (
        train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), stop_after=23, progress=False)
        is None
    )  # "killed" at step 23: the step-20 checkpoint survives
    assert _state(tmp_path / "b")["step"] == 20
    resumed = train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), progress=False)
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    for key in ("model", "ema"):
        flat_a = sa[key]["model"] if key == "ema" else sa[key]
        flat_b = sb[key]["model"] if key == "ema" else sb[key]
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), (key, name)
    # Steps 21-23 were logged before the kill; the resumed run logs them not again, and the same values.
    assert [s for s, _ in b.metrics["train/loss"]] == list(range(1, 41))
    assert a.metrics["train/loss"] == b.metrics["train/loss"]
    assert resumed.final_loss == full.final_loss and resumed.steps == 40


def test_checkpoint_every_defaults_to_a_tenth_and_every_evaluation_checkpoints(tmp_path):
    auto = {**TINY, "train": {**TINY["train"], "checkpoint_every": 0, "eval_every": 15}}
    config = build_config(auto)
    assert (
        train(config, None, run_dir=tmp_path, data=_data(), evaluator=NoEvaluation(), stop_after=31, progress=False)
        is None
    )
    assert _state(tmp_path)["step"] == 30  # the evaluation at 30, after the tenths 4, 8, ..., 28
    assert (
        train(
            config, None, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), stop_after=7, progress=False
        )
        is None
    )
    assert _state(tmp_path / "b")["step"] == 4


def test_finished_run_is_not_retrained(tmp_path):
    config = build_config(TINY)
    train(config, None, run_dir=tmp_path, data=_data(), evaluator=NoEvaluation(), progress=False)
    tracker = MemoryTracker()
    again = train(config, tracker, run_dir=tmp_path, data=_data(), evaluator=NoEvaluation(), progress=False)
    assert again.steps == 40 and "train/loss" not in tracker.metrics


def test_loss_buckets_and_per_step_losses_are_logged(tmp_path):
    tracker = MemoryTracker()
    train(build_config(TINY), tracker, run_dir=tmp_path, data=_data(), evaluator=NoEvaluation(), progress=False)
    assert [s for s, _ in tracker.metrics["train/loss"]] == list(range(1, 41))
    buckets = [k for k in tracker.metrics if k.startswith("train/loss_t")]
    assert len(buckets) == 10
    # Noise is easiest to predict at high t (x_t is almost pure noise) for eps prediction.
    last = {k: v[-1][1] for k, v in tracker.metrics.items() if k.startswith("train/loss_t")}
    assert last["train/loss_t9"] < last["train/loss_t0"]


def test_non_finite_loss_stops_with_its_step(tmp_path):
    images = torch.zeros(256, 1, 28, 28)
    images[:] = float("nan")
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 1: nan"):
        train(build_config(TINY), None, run_dir=tmp_path, data=_data(images), evaluator=NoEvaluation(), progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
