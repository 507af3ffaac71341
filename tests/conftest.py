"""Suite-wide settings: hypothesis profiles (``ci`` is what tox selects), and how many
pytest-xdist workers ``-n auto`` starts."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Half again as many workers as CPUs (3 on CI's two cores): a scenario spends much of its
    time waiting on the daemons and clients it started, a certificate's lifetime or a
    heartbeat, while another worker's use the CPU."""
    return max(2, (os.cpu_count() or 1) * 3 // 2)
