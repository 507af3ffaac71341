"""The plugin's hooks: the ``github`` resource kind and the ``github`` connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import ResourceKind
    from tether_github.connector import GitHubConnector


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return the ``github`` kind (an OAuth app's settings and team mappings)."""
    from tether_github.kind import GITHUB

    return [GITHUB]


@hookimpl
def tether_identity_connectors() -> list[GitHubConnector]:
    """Return the ``github`` single sign-on connector (imported here: only auth needs it)."""
    from tether_github.connector import GitHubConnector

    return [GitHubConnector()]
