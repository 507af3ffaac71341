"""The ``saml`` kind and connector: SAML 2.0 Web Browser SSO with pysaml2.

```yaml
kind: saml
version: v2
metadata: {name: okta}
spec:
  acs: https://proxy.example.com:3080/webapi/sso/callback
  entity_descriptor_url: https://example.okta.com/app/abc/sso/saml/metadata
  # or entity_descriptor: "<md:EntityDescriptor ...>"
  attributes_to_roles:
    - {name: groups, value: admins, roles: [access, editor]}
    - {name: groups, value: "^team-(.*)$", roles: ["$1"]}
```

This cluster is the service provider whose entity id is ``audience`` (by default the ``acs``
URL). A login sends an AuthnRequest with the HTTP-Redirect binding whose ID is derived from
the kernel's one-time state (the RelayState), so the response the provider posts back must
answer that very request (``InResponseTo``): an assertion captured from another login is
refused even with a fresh state. pysaml2 verifies the signature (of the assertion, or of the
response around it: one is required) against the certificate in the provider's metadata, and
the validity period and audience; the user is the NameID (or ``username_attribute``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
import trio
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.client import Saml2Client
from saml2.config import SPConfig

from tether.api import (
    AccessDenied,
    ConnectorContext,
    ExternalIdentity,
    Resource,
    SSORequest,
    TetherError,
)
from tether_saml.kind import ATTRIBUTES_TO_ROLES, SAMLSpec

__all__ = ["SAMLConnector", "request_id_for"]

log = logging.getLogger(__name__)

#: clock skew tolerated between the provider and this auth service, in seconds
ACCEPTED_TIME_DIFF = 5
#: metadata fetched from entity_descriptor_url is read again after this long
METADATA_CACHE_SECONDS = 300.0


def request_id_for(state: str) -> str:
    """The AuthnRequest ID of the login with this state (an XML NCName: it starts with ``_``)."""
    return "_" + hashlib.sha256(state.encode()).hexdigest()


def _sp_client(spec: SAMLSpec, metadata: str) -> Saml2Client:
    config = SPConfig()
    config.load(
        {
            "entityid": spec.entity_id,
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(spec.acs, BINDING_HTTP_POST)]},
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "want_assertions_signed": False,
                    "want_response_signed": False,
                    "want_assertions_or_response_signed": True,
                },
            },
            "metadata": {"inline": [metadata]},
            "allow_unknown_attributes": True,
            "accepted_time_diff": ACCEPTED_TIME_DIFF,
        }
    )
    return Saml2Client(config=config)


class SAMLConnector:
    """The ``saml`` redirect connector (see :class:`tether.api.RedirectConnector`)."""

    name = "saml"
    claim_rules = ATTRIBUTES_TO_ROLES

    def __init__(self) -> None:
        self._fetched: dict[str, tuple[float, str]] = {}

    async def _metadata(self, spec: SAMLSpec) -> str:
        if spec.entity_descriptor:
            return spec.entity_descriptor
        url = spec.entity_descriptor_url
        cached = self._fetched.get(url)
        if cached and time.monotonic() - cached[0] < METADATA_CACHE_SECONDS:
            return cached[1]
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(url)
        except httpx.HTTPError as exc:
            raise TetherError(
                f"cannot fetch the SAML provider's metadata at {url}: {exc}"
            ) from None
        if answer.status_code != 200 or "EntityDescriptor" not in answer.text:
            raise TetherError(
                f"{url} did not answer with SAML metadata (HTTP {answer.status_code})"
            )
        self._fetched[url] = (time.monotonic(), answer.text)
        return answer.text

    async def login_url(
        self, ctx: ConnectorContext, connector: Resource, request: SSORequest
    ) -> str:
        spec: SAMLSpec = connector.spec
        metadata = await self._metadata(spec)

        def prepare() -> str:
            client = _sp_client(spec, metadata)
            providers = client.metadata.identity_providers()
            if len(providers) != 1:
                raise TetherError(
                    f"the metadata of {connector.metadata.name!r} names {len(providers)} "
                    "identity providers; give the descriptor of exactly one"
                )
            _, info = client.prepare_for_authenticate(
                entityid=providers[0],
                relay_state=request.state,
                binding=BINDING_HTTP_REDIRECT,
                message_id=request_id_for(request.state),
            )
            return str(dict(info["headers"])["Location"])

        return await trio.to_thread.run_sync(prepare)

    async def complete(
        self,
        ctx: ConnectorContext,
        connector: Resource,
        request: SSORequest,
        params: Mapping[str, str],
    ) -> ExternalIdentity:
        spec: SAMLSpec = connector.spec
        posted = params.get("SAMLResponse")
        if not posted:
            raise AccessDenied("the SAML provider's answer carries no SAMLResponse")
        metadata = await self._metadata(spec)
        outstanding = {request_id_for(request.state): spec.acs}

        def parse() -> Any:
            client = _sp_client(spec, metadata)
            return client.parse_authn_request_response(posted, BINDING_HTTP_POST, outstanding)

        try:
            response = await trio.to_thread.run_sync(parse)
        except Exception as exc:  # noqa: BLE001 (pysaml2 raises plain Exception, e.g. audience)
            log.info("refused a SAML response: %r", exc)
            raise AccessDenied(f"the SAML response is not valid: {_reason(exc)}") from None
        if response is None:
            raise AccessDenied("the SAML response is not valid: it could not be verified")
        if not _names_audience(response, spec.entity_id):
            raise AccessDenied(f"the SAML assertion is not restricted to {spec.entity_id!r}")
        attributes = {str(k): tuple(str(v) for v in values) for k, values in response.ava.items()}
        name_id = response.name_id.text if response.name_id is not None else ""
        if spec.username_attribute:
            username = (attributes.get(spec.username_attribute) or ("",))[0]
        else:
            username = name_id
        if not username:
            raise AccessDenied("the SAML assertion does not name the user")
        return ExternalIdentity(username=username, subject=name_id or username, claims=attributes)


def _names_audience(response: Any, entity_id: str) -> bool:
    """pysaml2 accepts an assertion without an audience restriction; we do not."""
    conditions = response.assertion.conditions
    restrictions = conditions.audience_restriction if conditions is not None else []
    return any(
        audience.text and audience.text.strip() == entity_id
        for restriction in restrictions
        for audience in restriction.audience or []
    )


def _reason(exc: Exception) -> str:
    """A one-line reason from pysaml2's exceptions, whose messages vary in usefulness."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = type(exc).__name__
    known = {
        "SignatureError": "its signature does not verify with the provider's certificate",
        "ResponseLifetimeExceed": "it has expired",
        "ToEarly": "it is not valid yet",
        "UnsolicitedResponse": "it does not answer this login's request",
    }
    if kind in known:
        return known[kind]
    if "AudienceRestrictions" in text:
        return "it is for another service provider (audience)"
    if "Signature missing" in text or "are signed" in text or kind == "IncorrectlySigned":
        return "it is not signed"
    return f"{kind}: {text}" if text else kind
