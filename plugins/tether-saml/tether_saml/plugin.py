"""The plugin's hooks: the ``saml`` resource kind and the ``saml`` connector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.api import hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: each hook imports its own
    from tether.api import ResourceKind
    from tether_saml.connector import SAMLConnector


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """Return the ``saml`` kind (an identity provider's metadata and attribute mappings)."""
    from tether_saml.kind import SAML

    return [SAML]


@hookimpl
def tether_identity_connectors() -> list[SAMLConnector]:
    """Return the ``saml`` single sign-on connector (imported here: only auth needs pysaml2)."""
    from tether_saml.connector import SAMLConnector

    return [SAMLConnector()]
