import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import their shared helpers (oracles.py)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# precision/memory_format auto resolve to fp32, contiguous unmeasured: every test trains the same numerics on every
# machine, and no test pays for a probe (tests/test_autotune.py and the bench measure; worker processes inherit it).
os.environ["HARNESS_AUTOTUNE"] = "off"


import pytest  # noqa: E402

CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "tests")


@pytest.fixture(scope="session", autouse=True)
def harness_cache():
    """Domain classifiers and reference statistics, kept between sessions in .cache/tests (git-ignored).

    The cache is keyed by content (data fingerprint, classifier weights), so sharing it is safe; tests
    that must see a cold cache use their own tmp directory.
    """
    os.environ["HARNESS_CACHE_DIR"] = CACHE
    yield CACHE
    os.environ.pop("HARNESS_CACHE_DIR", None)
