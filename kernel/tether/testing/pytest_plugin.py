"""pytest plugin registered through the ``pytest11`` entry point: Tether's shared fixtures.

Installing the kernel makes these fixtures available to plugin authors' test suites without
any conftest: a running single cluster, a logged-in user, command runners, a Kubernetes API
server. The tests that need Kubernetes (the ``kube_apiserver`` fixture or the ``kube`` marker)
run after all others, in the order they had: their components may still be building in the
background when the run starts (``tether.testing.kube``).
"""

from __future__ import annotations

import pytest

from tether.testing.fixtures import *  # noqa: F403

KUBE_MARKER = "kube"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{KUBE_MARKER}: needs the Kubernetes components (tether.testing.kube); runs last",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # after pytest-randomly's shuffle (a wrapper that runs first), a stable partition: the
    # order a seed gives stays reproducible
    def needs_kube(item: pytest.Item) -> bool:
        return "kube_apiserver" in getattr(item, "fixturenames", ()) or bool(
            item.get_closest_marker(KUBE_MARKER)
        )

    items[:] = [item for item in items if not needs_kube(item)] + [
        item for item in items if needs_kube(item)
    ]
