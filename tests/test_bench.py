"""`harness bench --quick` runs and reports every figure the README table needs (slow: ~2 minutes)."""
import json

import pytest

from harness.cli import main

KEYS = {"train_images_per_second", "bare_images_per_second", "overhead_ratio", "best_speedup", "best_config",
        "flop_utilization", "guidance_cost_ratio", "ddim50_vs_ddpm1000_speedup", "fid_eval_seconds", "device"}


@pytest.mark.slow
def test_bench_quick_writes_all_keys(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert KEYS <= set(result)
    assert result["bare_images_per_second"] > 0 and 0 < result["flop_utilization"] < 1.5
