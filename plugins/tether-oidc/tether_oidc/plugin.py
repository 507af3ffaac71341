"""The plugin's hooks: the ``oidc`` resource kind and the ``oidc`` connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import ResourceKind
    from tether_oidc.connector import OIDCConnector


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return the ``oidc`` kind (an OpenID provider's settings)."""
    from tether_oidc.kind import OIDC

    return [OIDC]


@hookimpl
def tether_identity_connectors() -> list[OIDCConnector]:
    """Return the ``oidc`` single sign-on connector (imported here: only auth needs PyJWT)."""
    from tether_oidc.connector import OIDCConnector

    return [OIDCConnector()]
