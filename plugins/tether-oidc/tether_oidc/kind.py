"""The ``oidc`` resource kind: one OpenID provider's settings, in Teleport's shape.

```yaml
kind: oidc
version: v3
metadata: {name: okta}
spec:
  issuer_url: https://example.okta.com
  client_id: tether
  client_secret: ...
  redirect_url: https://proxy.example.com:3080/webapi/sso/callback
  scope: [email, groups]            # openid is always asked for
  username_claim: email
  claims_to_roles:
    - {claim: groups, value: admins, roles: [access, editor]}
    - {name: groups, value: "^team-(.*)$", roles: ["$1"]}   # the guide's spelling
```
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

__all__ = ["CLAIMS_TO_ROLES", "OIDC", "OIDCClaimRule", "OIDCSpec"]


@attrs.frozen
class OIDCClaimRule:
    """One rule of ``claims_to_roles``; the claim is named ``claim`` (or ``name``, as in the
    guide's examples)."""

    value: str
    roles: tuple[str, ...]
    claim: str = ""
    name: str = ""

    def mapping(self) -> ClaimMapping:
        """:raises ValueError: the claim is named twice or not at all."""
        if bool(self.claim) == bool(self.name):
            raise ValueError("give the claim as claim or name")
        return ClaimMapping(self.claim or self.name, self.value, self.roles)


@attrs.frozen
class OIDCSpec:
    """``spec`` of an ``oidc`` connector.

    :param issuer_url: the provider's issuer; discovery is read from
        ``ISSUER/.well-known/openid-configuration`` and must name the same issuer.
    :param client_id: this cluster's client id at the provider (the ID token's audience).
    :param client_secret: its secret (hidden by ``tetherctl get``).
    :param redirect_url: the proxy's callback, registered at the provider:
        ``https://PROXY/webapi/sso/callback``.
    :param scope: scopes besides ``openid``.
    :param username_claim: the claim that names the Tether user.
    :param claims_to_roles: which claim values give which roles (``*`` and ``^...$`` allowed).
    """

    issuer_url: str
    client_id: str
    client_secret: str
    redirect_url: str
    scope: tuple[str, ...] = ("email",)
    username_claim: str = "email"
    claims_to_roles: tuple[OIDCClaimRule, ...] = ()


#: where an ``oidc`` connector's rules are; the kernel validates and applies them
CLAIMS_TO_ROLES = ClaimRules("claims_to_roles", OIDCClaimRule.mapping)


def _validate(resource: Resource) -> None:
    spec: OIDCSpec = resource.spec
    for field in ("issuer_url", "redirect_url"):
        url = getattr(spec, field)
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname or not (parts.scheme == "https" or is_loopback_http(url)):
            raise InvalidField(
                ("spec", field), f"{url!r} must be an https:// URL (http:// only on loopback)"
            )
    for field in ("client_id", "client_secret", "username_claim"):
        if not getattr(spec, field):
            raise InvalidField(("spec", field), "must not be empty")


OIDC = ResourceKind(
    name="oidc",
    aliases=("oidc_connector", "oidc_connectors"),
    versions=("v3", "v2"),
    spec_type=OIDCSpec,
    storage_prefix="/connectors/oidc/",
    validate=CLAIMS_TO_ROLES.validating(_validate),
    secret_paths=(("spec", "client_secret"),),
)
