"""The ``saml`` resource kind: an identity provider's metadata and attribute mappings.

Kept apart from the connector so that every ``tether`` and ``tetherctl`` start, which loads
the kinds, does not import pysaml2 (more than half a second); only the auth service does.
"""

from __future__ import annotations

import urllib.parse

import attrs

from tether.api import (
    ClaimMapping,
    ClaimRules,
    InvalidField,
    Resource,
    ResourceKind,
    is_loopback_http,
)

__all__ = ["ATTRIBUTES_TO_ROLES", "SAML", "AttributeMapping", "SAMLSpec"]


@attrs.frozen
class AttributeMapping:
    """Users whose attribute ``name`` has a value matching ``value`` (exact, ``*`` glob or
    ``^...$`` re2 with ``$1``..``$9`` in ``roles``) get ``roles``."""

    name: str
    value: str
    roles: tuple[str, ...]

    def mapping(self) -> ClaimMapping:
        return ClaimMapping(self.name, self.value, self.roles)


@attrs.frozen
class SAMLSpec:
    """``spec`` of a ``saml`` connector.

    :param acs: the proxy's assertion consumer service, ``https://PROXY/webapi/sso/callback``.
    :param entity_descriptor: the provider's metadata XML, or
    :param entity_descriptor_url: where to fetch it (https, or http on loopback).
    :param audience: this service provider's entity id; the ``acs`` URL by default.
    :param attributes_to_roles: which attribute values give which roles.
    :param username_attribute: the attribute naming the user; the NameID when empty.
    """

    acs: str
    attributes_to_roles: tuple[AttributeMapping, ...] = ()
    entity_descriptor: str = ""
    entity_descriptor_url: str = ""
    audience: str = ""
    username_attribute: str = ""

    @property
    def entity_id(self) -> str:
        return self.audience or self.acs


#: where a ``saml`` connector's rules are; the kernel validates and applies them
ATTRIBUTES_TO_ROLES = ClaimRules("attributes_to_roles", AttributeMapping.mapping)


def _https_or_loopback(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return bool(parts.hostname) and (parts.scheme == "https" or is_loopback_http(url))


def _validate(resource: Resource) -> None:
    spec: SAMLSpec = resource.spec
    if not _https_or_loopback(spec.acs):
        raise InvalidField(("spec", "acs"), "must be an https:// URL (http:// only on loopback)")
    if bool(spec.entity_descriptor) == bool(spec.entity_descriptor_url):
        raise InvalidField(
            ("spec", "entity_descriptor"), "give the provider's metadata or its URL (one of them)"
        )
    if spec.entity_descriptor_url and not _https_or_loopback(spec.entity_descriptor_url):
        raise InvalidField(
            ("spec", "entity_descriptor_url"), "must be an https:// URL (http:// only on loopback)"
        )
    if spec.entity_descriptor and "EntityDescriptor" not in spec.entity_descriptor:
        raise InvalidField(("spec", "entity_descriptor"), "is not SAML metadata (EntityDescriptor)")


SAML = ResourceKind(
    name="saml",
    aliases=("saml_connector", "saml_connectors"),
    versions=("v2",),
    spec_type=SAMLSpec,
    storage_prefix="/connectors/saml/",
    validate=ATTRIBUTES_TO_ROLES.validating(_validate),
)
