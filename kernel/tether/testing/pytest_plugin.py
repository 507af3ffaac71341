"""pytest plugin registered through the ``pytest11`` entry point: Tether's shared fixtures.

Installing the kernel makes these fixtures available to plugin authors' test suites without
any conftest: a running single cluster, a logged-in user, command runners.
"""

from __future__ import annotations

from tether.testing.fixtures import *  # noqa: F403
