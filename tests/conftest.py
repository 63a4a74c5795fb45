"""Shared test setup: a fixed seed per test, and a bounded hypothesis profile.

``python -m pytest -m "not slow" -q`` is the quick subset (about 41-48 s here with OMP_NUM_THREADS=1,
up to ~54 s while other jobs share the 2 cores); the full suite, slow tests included, is
``python -m pytest -q``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests stay small and untimed: a bounded number of examples, no per-example deadline
# (the first call of an op can be slow on a busy 2-core machine).
settings.register_profile(
    "manual_bp", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("manual_bp")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
