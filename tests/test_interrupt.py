"""Ctrl-C and SIGTERM (harness/stop.py): the first stops every job within seconds, checkpointed, with the runs and
the parent KILLED and a summary; the rerun resumes each job once; a second Ctrl-C stops at once."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fixtures import TINY, write_spec
from test_train import TINY as TINY_TRAIN
from test_train import NoEvaluation, _data, _state

from harness import stop
from harness.config import build_config
from harness.config.schema import HASH, ROLE
from harness.orchestration.tracking import MlflowStore
from harness.tracker import MemoryTracker
from harness.training.train import train

STEPS = 20_000  # far more than a test waits for: every job is still training when the signal comes


@pytest.fixture(autouse=True)
def fresh_request():
    stop.reset()
    yield
    stop.reset()


def test_a_stop_request_checkpoints_at_the_next_step_and_the_resumed_run_equals_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    config = build_config({**TINY_TRAIN, "train": {**TINY_TRAIN["train"], "steps": 20}})  # logs at 7, 10, 17, 20
    a, b = MemoryTracker(), MemoryTracker()
    full = train(config, a, run_dir=tmp_path / "a", data=_data(), evaluator=NoEvaluation(), progress=False)
    calls = []

    def requested_before_step_17() -> bool:  # asked once per step, at its start: True once 16 steps are done
        calls.append(1)
        return len(calls) > 16

    monkeypatch.setattr(stop, "requested", requested_before_step_17)
    with pytest.raises(stop.Stopped, match="stopped at step 16 of 20"):
        train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), progress=False)
    saved = _state(tmp_path / "b")
    assert saved["step"] == 16  # checkpointed where it stopped, not at the last due checkpoint (10)
    assert len(saved["unlogged"]["losses"]) == 6 and [s for s, _ in b.metrics["train/loss"]] == list(range(1, 11))
    monkeypatch.undo()
    resumed = train(config, b, run_dir=tmp_path / "b", data=_data(), evaluator=NoEvaluation(), progress=False)
    sa, sb = _state(tmp_path / "a"), _state(tmp_path / "b")
    for name in sa["model"]:
        assert torch.equal(sa["model"][name], sb["model"][name]), name
    # Steps 11-16 were trained but not logged before the stop: the resumed run logs them, once, with their values.
    assert [s for s, _ in b.metrics["train/loss"]] == list(range(1, 21))
    assert a.metrics["train/loss"] == b.metrics["train/loss"]
    assert resumed.final_loss == full.final_loss and resumed.steps == 20
