import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import their shared helpers (oracles.py)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def harness_cache(tmp_path_factory):
    """One cache of domain classifiers and reference statistics for the session, outside the repo."""
    path = tmp_path_factory.getbasetemp() / "harness-cache"
    os.environ["HARNESS_CACHE_DIR"] = str(path)
    yield path
    os.environ.pop("HARNESS_CACHE_DIR", None)
