"""Shared test setup.

Triton's interpreter must be chosen before ``triton`` is first imported, so it is
switched on here, at the very start of the session, unless the tests are meant to
run the compiled kernels on a GPU (``MMSCALE_TEST_DEVICE=cuda``).
"""

import os
import sys
from pathlib import Path

if os.environ.get("MMSCALE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# the naive baseline composition lives in benchmarks/ and is the oracle for the layers
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("mmscale", max_examples=12, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mmscale"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
