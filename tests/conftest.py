"""Shared test setup: a fixed seed per test, a bounded hypothesis profile, and CUDA tests skipped
without CUDA.

``python -m pytest -m "not slow" -q`` is the quick subset (about 3 minutes here with
OMP_NUM_THREADS=1); the full suite, slow tests included, is ``python -m pytest -q``.
``python -m pytest -m cuda`` runs only the tests marked ``@pytest.mark.cuda`` (on a GPU machine:
``scripts/gpu_check.sh``).
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``cuda`` when this machine has no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (an NVIDIA GPU): run scripts/gpu_check.sh on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
