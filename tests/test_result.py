"""The evaluation result: one schema for what checkpoints store, ``harness train --json`` writes and runs log."""

import pytest
import torch

from harness.config import SamplerSetting
from harness.result import EvalResult
from harness.training import checkpoint


def test_round_trips_through_a_weights_only_checkpoint(tmp_path):
    setting = SamplerSetting(sampler="ddpm", steps=9, guidance=1.5, variance="fixed_large")
    result = EvalResult(7, setting, {"fid": 12.5, "nfe": 17}, {"fid_inception": "weights not downloadable"})
    checkpoint.save_atomic({"evals": [result.to_dict()]}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)["evals"][0]
    assert saved["fid_inception_unavailable"] == "weights not downloadable" and saved["setting"] == setting.label
    assert EvalResult.from_dict(saved) == result


def test_a_misspelled_metric_is_refused_not_silently_dropped():
    with pytest.raises(KeyError, match="fdi"):
        EvalResult(1, SamplerSetting(), {"fdi": 3.0})
    with pytest.raises(KeyError, match="fid_incpetion"):
        EvalResult(1, SamplerSetting(), {}, {"fid_incpetion": "offline"})


def test_a_metric_without_a_value_says_why():
    r = EvalResult(1, SamplerSetting(), {"fid": 1.0}, {"fid_inception": "offline"})
    assert r.why_missing("fid_inception") == "offline"
    assert r.why_missing("kid") == "not in the evaluation result"
