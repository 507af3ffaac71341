"""The ``oidc`` connector: the authorization code flow with PKCE, and ID token verification.

The kernel owns the state, nonce, PKCE verifier, expiry and one-time use
(:class:`tether.api.SSORequest`); this module speaks OpenID Connect: discovery, the token request,
and the ID token's signature (with the provider's JWKS, refetched once when a token names a
key not seen yet: the provider rotated its keys), issuer, audience and expiry, with PyJWT.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import jwt

from tether.api import (
    AccessDenied,
    ConnectorContext,
    ExternalIdentity,
    Resource,
    SSORequest,
    TetherError,
)
from tether_oidc.kind import CLAIMS_TO_ROLES, OIDCSpec

__all__ = ["OIDCConnector", "ProviderKeys", "parse_jwks", "verify_id_token"]

log = logging.getLogger(__name__)

#: asymmetric algorithms only: "none" and HMAC (keyed with the client secret) are refused
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
#: clock skew tolerated between the provider and this auth service
LEEWAY_SECONDS = 5
#: the JWT claims that describe the token rather than the user: not made into traits
_TOKEN_CLAIMS = frozenset(
    {
        "iss",
        "aud",
        "exp",
        "iat",
        "nbf",
        "nonce",
        "at_hash",
        "c_hash",
        "azp",
        "auth_time",
        "sid",
        "jti",
        "acr",
        "amr",
    }
)
#: discovery and keys are re-read at most this often (a rotation forces it sooner)
CACHE_SECONDS = 300.0


@attrs.define
class ProviderKeys:
    """One provider's discovery document and signing keys, cached."""

    discovery: dict[str, Any]
    keys: dict[str, jwt.PyJWK]
    fetched: float


async def _get_json(http: httpx.AsyncClient, url: str, what: str) -> dict[str, Any]:
    try:
        answer = await http.get(url)
    except httpx.HTTPError as exc:
        raise TetherError(f"cannot read the OpenID provider's {what} at {url}: {exc}") from None
    if answer.status_code != 200:
        raise TetherError(f"the OpenID provider's {what} at {url}: HTTP {answer.status_code}")
    try:
        body = answer.json()
    except json.JSONDecodeError:
        raise TetherError(f"the OpenID provider's {what} at {url} is not JSON") from None
    if not isinstance(body, dict):
        raise TetherError(f"the OpenID provider's {what} at {url} is not a JSON object")
    return body


def parse_jwks(jwks: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by key id; keys of unusable kinds are skipped."""
    found = {}
    for data in jwks.get("keys", []):
        try:
            key = jwt.PyJWK.from_dict(data)
        except jwt.PyJWTError as exc:  # a key of a kind we do not use: skip it, say so
            log.info("skipping a JWKS key: %s", exc)
            continue
        found[str(data.get("kid", ""))] = key
    return found


def verify_id_token(
    token: str, keys: Mapping[str, jwt.PyJWK], *, issuer: str, client_id: str
) -> dict[str, Any]:
    """The ID token's claims, once its signature, issuer, audience and times check out.

    :raises AccessDenied: saying which check failed.
    :raises KeyError: the token names a key ``keys`` lacks (the caller refetches them once).
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AccessDenied(f"the ID token is malformed: {exc}") from None
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise AccessDenied(f"the ID token is signed with {algorithm!r}, which is not accepted")
    kid = str(header.get("kid", ""))
    if kid not in keys:
        if not kid and len(keys) == 1:
            kid = next(iter(keys))
        else:
            raise KeyError(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys[kid],
            algorithms=[algorithm],
            audience=client_id,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "aud", "exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AccessDenied("the ID token has expired") from None
    except jwt.InvalidAudienceError:
        raise AccessDenied(f"the ID token is not for client {client_id!r} (audience)") from None
    except jwt.InvalidIssuerError:
        raise AccessDenied(f"the ID token is not from issuer {issuer!r}") from None
    except jwt.InvalidSignatureError:
        raise AccessDenied("the ID token's signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise AccessDenied(f"the ID token is not valid: {exc}") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise AccessDenied(f"the ID token was issued to {claims.get('azp')!r} (azp)")
    return claims


def _traits(claims: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """String and list-of-string claims about the user, as traits."""
    traits: dict[str, tuple[str, ...]] = {}
    for name, value in claims.items():
        if name in _TOKEN_CLAIMS:
            continue
        if isinstance(value, str):
            traits[name] = (value,)
        elif isinstance(value, bool):
            traits[name] = ("true" if value else "false",)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            traits[name] = tuple(value)
    return traits


class OIDCConnector:
    """The ``oidc`` redirect connector (see :class:`tether.api.RedirectConnector`)."""

    name = "oidc"
    claim_rules = CLAIMS_TO_ROLES

    def __init__(self) -> None:
        self._providers: dict[str, ProviderKeys] = {}

    async def _provider(self, spec: OIDCSpec, *, refresh: bool = False) -> ProviderKeys:
        cached = self._providers.get(spec.issuer_url)
        if cached and not refresh and time.monotonic() - cached.fetched < CACHE_SECONDS:
            return cached
        url = spec.issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        async with httpx.AsyncClient(timeout=10) as http:
            discovery = await _get_json(http, url, "discovery document")
            if discovery.get("issuer") != spec.issuer_url:
                raise TetherError(
                    f"the discovery document names issuer {discovery.get('issuer')!r}, "
                    f"not {spec.issuer_url!r}",
                    hint="spec.issuer_url must be the provider's issuer exactly",
                )
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(discovery.get(field), str):
                    raise TetherError(f"the discovery document has no {field}")
            jwks = await _get_json(http, discovery["jwks_uri"], "keys (JWKS)")
        provider = ProviderKeys(discovery, parse_jwks(jwks), time.monotonic())
        self._providers[spec.issuer_url] = provider
        return provider

    async def login_url(
        self, ctx: ConnectorContext, connector: Resource, request: SSORequest
    ) -> str:
        spec: OIDCSpec = connector.spec
        provider = await self._provider(spec)
        query = {
            "response_type": "code",
            "client_id": spec.client_id,
            "redirect_uri": spec.redirect_url,
            "scope": " ".join(dict.fromkeys(("openid", *spec.scope))),
            "state": request.state,
            "nonce": request.nonce,
            "code_challenge": request.pkce_challenge,
            "code_challenge_method": "S256",
        }
        return f"{provider.discovery['authorization_endpoint']}?{urllib.parse.urlencode(query)}"

    async def complete(
        self,
        ctx: ConnectorContext,
        connector: Resource,
        request: SSORequest,
        params: Mapping[str, str],
    ) -> ExternalIdentity:
        spec: OIDCSpec = connector.spec
        if "error" in params:
            detail = params.get("error_description") or params["error"]
            raise AccessDenied(f"the OpenID provider refused the login: {detail}")
        if not params.get("code"):
            raise AccessDenied("the OpenID provider's answer carries no code")
        provider = await self._provider(spec)
        token = await self._exchange(spec, provider, params["code"], request.pkce_verifier)
        try:
            claims = verify_id_token(
                token, provider.keys, issuer=spec.issuer_url, client_id=spec.client_id
            )
        except KeyError as missing:  # a key not seen yet: the provider rotated its keys
            log.info("ID token names key %s; reading the provider's keys again", missing)
            provider = await self._provider(spec, refresh=True)
            try:
                claims = verify_id_token(
                    token, provider.keys, issuer=spec.issuer_url, client_id=spec.client_id
                )
            except KeyError:
                raise AccessDenied(
                    f"the ID token is signed with key {missing} the provider does not publish"
                ) from None
        username = claims.get(spec.username_claim)
        if not isinstance(username, str) or not username:
            raise AccessDenied(
                f"the ID token has no {spec.username_claim!r} claim to name the user"
            )
        nonce = claims.get("nonce")
        return ExternalIdentity(
            username=username,
            subject=str(claims["sub"]),
            claims=_traits(claims),
            nonce=nonce if isinstance(nonce, str) else "",  # a missing nonce never matches
        )

    async def _exchange(
        self, spec: OIDCSpec, provider: ProviderKeys, code: str, verifier: str
    ) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            try:
                answer = await http.post(
                    provider.discovery["token_endpoint"],
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": spec.redirect_url,
                        "code_verifier": verifier,
                    },
                    auth=(spec.client_id, spec.client_secret),  # client_secret_basic
                )
            except httpx.HTTPError as exc:
                raise TetherError(
                    f"cannot reach the OpenID provider's token endpoint: {exc}"
                ) from None
        try:
            body = answer.json()
        except json.JSONDecodeError:
            body = {}
        if answer.status_code != 200:
            detail = body.get("error_description") or body.get("error") or answer.text[:200]
            raise AccessDenied(f"the OpenID provider refused the code: {detail}")
        token = body.get("id_token")
        if not isinstance(token, str):
            raise AccessDenied("the OpenID provider's token answer has no id_token")
        return token
