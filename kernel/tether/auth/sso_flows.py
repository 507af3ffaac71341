"""Single sign-on logins in flight: what the kernel owns around a redirect connector.

A redirect connector (OIDC, SAML, GitHub, a third party's) knows its provider: where to send
the browser and how to read what comes back. Everything a connector could get wrong in a way
that matters is here instead, the same for all of them:

- the ``state`` that ties the provider's callback to one login, random and **one-time** (a
  replayed callback finds nothing), with an expiry;
- the ``nonce`` the provider must echo (compared here when the connector reports it) and the
  PKCE verifier and challenge (RFC 7636, S256);
- the client's redirect, which may only point back at the user's own machine (loopback), so
  a login cannot be steered to deliver certificates elsewhere;
- the result, kept for the client to collect **once**, with a secret only that client holds
  **and** a one-time code minted at the callback, which reaches the client only through the
  browser that signed in: the browser shows what it is approving (:class:`Approval`), and only
  then goes to the client's loopback listener with the code. Whoever started a login and
  shared its link gets nothing: the code goes to the loopback address of the machine whose
  browser signed in, where their client does not listen.

This module is pure: values and checks. :mod:`tether.auth.sso_logins` stores them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import secrets
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from tether.errors import TetherError

__all__ = [
    "REQUEST_TTL",
    "RESULT_TTL",
    "Approval",
    "SSORequest",
    "check_client_redirect",
    "hash_client_secret",
    "hash_code",
    "is_loopback_http",
    "new_code",
    "new_request",
]

#: How long a user has, from ``tether login --auth=NAME``, to finish at the provider.
REQUEST_TTL = datetime.timedelta(minutes=5)
#: How long a login waits, after the callback, for the browser to approve it and the client to
#: collect it with the code.
RESULT_TTL = datetime.timedelta(minutes=2)


def _random(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def hash_client_secret(secret: str) -> str:
    """What the kernel keeps of the client's secret: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_code() -> str:
    """A one-time code for the browser to hand the client: random, unguessable (256 bits)."""
    return _random()


def hash_code(code: str) -> str:
    """What the kernel keeps of a login's one-time code: its sha256, hex."""
    return hashlib.sha256(code.encode()).hexdigest()


@attrs.frozen
class SSORequest:
    """One login in flight, from ``tether login --auth=NAME`` until the client collects it.

    :param id: names the login to the client (in its redirect) and to its result.
    :param connector_kind: the connector's resource kind (``oidc``).
    :param connector_name: the connector resource's name (what ``--auth`` named).
    :param state: the one-time value the provider hands back with its callback.
    :param nonce: the value the provider must put in its signed answer (OIDC's ID token).
    :param pkce_verifier: PKCE's secret; the connector sends :attr:`pkce_challenge` first.
    :param client_redirect_url: where the browser goes after the callback (the client's
        loopback listener), with ``?request=ID&code=CODE`` added.
    :param client_secret_hash: :func:`hash_client_secret` of what the client will collect with.
    :param ssh_public_key: the client's key, certified on success.
    :param tls_public_key: the same key's PEM, certified on success.
    :param ttl_seconds: the certificate lifetime the client asked for (capped by roles).
    :param expires: seconds since the epoch after which the callback is refused.
    """

    id: str
    connector_kind: str
    connector_name: str
    state: str
    nonce: str
    pkce_verifier: str
    client_redirect_url: str
    client_secret_hash: str
    ssh_public_key: str
    tls_public_key: str
    ttl_seconds: float | None
    expires: float

    @property
    def method(self) -> str:
        """The connector, ``KIND/NAME``, as audit events and messages name it."""
        return f"{self.connector_kind}/{self.connector_name}"

    @property
    def pkce_challenge(self) -> str:
        """``BASE64URL(SHA256(verifier))`` without padding (RFC 7636's S256 method)."""
        digest = hashlib.sha256(self.pkce_verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def client_redirect(self, code: str) -> str:
        """The client's loopback URL with this login's id and one-time ``code``, where the
        browser is sent last (checked again here: only ever a loopback address)."""
        parts = urllib.parse.urlsplit(check_client_redirect(self.client_redirect_url))
        query = [*urllib.parse.parse_qsl(parts.query), ("request", self.id), ("code", code)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def client_address(self) -> str:
        """``HOST:PORT`` of the client's loopback listener, as the approval page names it."""
        return urllib.parse.urlsplit(self.client_redirect_url).netloc

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SSORequest:
        return cls(**{field.name: data[field.name] for field in attrs.fields(cls)})


def new_request(
    *,
    connector_kind: str,
    connector_name: str,
    client_redirect_url: str,
    client_secret_hash: str,
    ssh_public_key: str,
    tls_public_key: str,
    ttl_seconds: float | None,
    now: float,
) -> SSORequest:
    """A fresh login with random id, state, nonce and PKCE verifier.

    :raises TetherError: the client redirect is not a loopback URL, or the secret's hash is
        not a sha256.
    """
    if len(client_secret_hash) != 64 or any(
        c not in "0123456789abcdef" for c in client_secret_hash
    ):
        raise TetherError("client_secret_hash must be the hex sha256 of the client's secret")
    return SSORequest(
        id=_random(16),
        connector_kind=connector_kind,
        connector_name=connector_name,
        state=_random(),
        nonce=_random(),
        pkce_verifier=_random(48),  # 64 characters, within RFC 7636's 43..128
        client_redirect_url=check_client_redirect(client_redirect_url),
        client_secret_hash=client_secret_hash,
        ssh_public_key=ssh_public_key,
        tls_public_key=tls_public_key,
        ttl_seconds=ttl_seconds,
        expires=now + REQUEST_TTL.total_seconds(),
    )


def check_client_redirect(url: str) -> str:
    """Accept only ``http://`` to a loopback address with a port: the user's own ``tether``.

    :raises TetherError: saying what is wrong with the URL.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not is_loopback_http(url) or port is None or parts.fragment:
        raise TetherError(
            f"client redirect {url!r} is not allowed",
            hint="it must be http://127.0.0.1:PORT/... (the tether client's own listener)",
        )
    return url


def is_loopback_http(url: str) -> bool:
    """``http://`` to 127.0.0.0/8, ::1 or localhost: this machine, where plain HTTP is fine
    (the client's listener; an identity provider run beside the cluster, as in tests)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return parts.scheme == "http" and loopback


@attrs.frozen
class Approval:
    """What the browser is asked to approve after the provider's callback, and where it then
    sends the login's one-time code.

    :param request_id: the login's id.
    :param username: who the provider says signed in (the Tether user name).
    :param method: the connector, ``KIND/NAME``.
    :param roles: the roles the login gets.
    :param cluster: the cluster the certificates are for.
    :param client: ``HOST:PORT`` of the loopback listener that receives the code.
    :param certificate_ttl_seconds: how long the certificates will be valid.
    :param expires: seconds since the epoch after which the login can no longer be collected.
    :param redirect: the client's loopback URL carrying the login's id and one-time code.
    """

    request_id: str
    username: str
    method: str
    roles: tuple[str, ...]
    cluster: str
    client: str
    certificate_ttl_seconds: float
    expires: float
    redirect: str

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "roles": list(self.roles)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Approval:
        values = {field.name: data[field.name] for field in attrs.fields(cls)}
        return cls(**{**values, "roles": tuple(values["roles"])})
