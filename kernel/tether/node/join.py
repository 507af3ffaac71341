"""Join a cluster with a token through its proxy, keep the identity that results, renew it.

A node (or a proxy joining another's auth) generates its key locally; only the public halves
travel. The proxy is trusted the way ``tether login`` trusts it: by the cluster CA pin printed
by ``tetherctl tokens add``, by the system trust store, or (testing only) not at all. The
token is needed once: the host renews its certificates with the ones it holds, while they
are valid; one stopped past their expiry joins again with a token. The key of a join is kept in
the data directory until its answer is saved, so that a join whose answer was lost (the auth
server died after recording it) is sent again with the same key, which auth accepts for the
host id the first one took.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import pathlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio
from cryptography import x509

from tether import pki
from tether.auth.http_client import AuthClient
from tether.client.web import establish_trust, proxy_call
from tether.config import secret_or_file
from tether.errors import ConfigError, ConnectionLost, TetherError, Unreachable
from tether.token_types import host_roles
from tether.tunnel.agent import Backoff

log = logging.getLogger(__name__)

__all__ = [
    "RENEWAL_RETRY",
    "SERVER_KINDS",
    "JoinedIdentity",
    "host_client_context",
    "join_cluster",
    "keep_renewed",
    "load_identity",
    "load_or_join_current",
    "load_or_join_first_reachable",
    "pending_join_key",
    "renew_and_save",
    "renew_identity",
    "renewal_due",
    "save_identity",
]


#: Who may answer a host at its cluster's address: the proxy, or auth for a host joining
#: directly (``--auth-server``); never another host of the cluster, whose certificate the
#: same CA signed.
SERVER_KINDS = ("proxy", "auth")
#: A failed renewal is tried again after a delay that doubles from a second up to this (or to
#: a tenth of the certificates' lifetime, if shorter).
RENEWAL_RETRY = datetime.timedelta(minutes=5)


@attrs.frozen
class JoinedIdentity:
    """A joined host's key, certificates and the cluster CAs it trusts."""

    identity: pki.Identity
    private_key: pki.PrivateKey
    ssh_host_cert: str
    tls_cert: x509.Certificate
    tls_cas: tuple[x509.Certificate, ...]
    ssh_user_ca_lines: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]

    @classmethod
    def from_json(cls, body: dict[str, Any], key: pki.PrivateKey) -> JoinedIdentity:
        """From a join answer (``/webapi/join``) and the key whose public halves were sent."""
        return _from_json(body, key)


async def join_cluster(
    proxy: str,
    token: str,
    *,
    host_id: str,
    hostname: str,
    role: str = "node",
    addresses: Sequence[str] = (),
    ca_pin: str | None = None,
    insecure: bool = False,
    roles: Sequence[str] = (),
    key: pki.PrivateKey | None = None,
) -> JoinedIdentity:
    """Join through ``proxy`` with ``token``; a node asks for the host roles ``roles`` (none:
    ``Node``, as before host roles), which the token must carry.

    :param key: the host's key (a new one by default); a host that sends a join again, when
        the answer to the first was lost, sends the same key (see :func:`pending_join_key`).
    :raises AccessDenied: the token is unknown, expired or of another kind.
    :raises TrustError: the proxy cannot be verified (see ``ca_pin``).
    """
    context = await establish_trust(
        proxy, insecure=insecure, ca_pin=ca_pin, peer_kinds=SERVER_KINDS
    )
    if key is None:
        key = pki.generate_private_key(_host_key_algorithm(role))
    body = await proxy_call(
        proxy,
        "POST",
        "/webapi/join",
        context,
        json={
            "token": token,
            "role": role,
            "host_id": host_id,
            **({"roles": list(roles)} if roles else {}),
            **_host_request(key, hostname, addresses),
        },
    )
    return JoinedIdentity.from_json(body, key)


async def _load_or_join(
    directory: pathlib.Path,
    server: str,
    token: str | None,
    *,
    role: str,
    host_id: str,
    hostname: str,
    addresses: Sequence[str] = (),
    ca_pin: str | None = None,
    insecure: bool = False,
    roles: Sequence[str] = (),
) -> JoinedIdentity:
    """The identity saved in ``directory``; else join through ``server`` with ``token`` and
    save what results. A saved identity whose certificates expired (the host was stopped past
    their expiry, so it could not renew them) is replaced the same way, when a token is given,
    and one without every host role in ``roles`` (the host now serves more than its token
    allowed when it joined) is refused without a token (with one, the caller renews it with
    the token, keeping its host id).
    ``token`` may be the absolute path of a file holding it, read only when joining (as
    Teleport reads ``--token``), so that it need not stay in the shell's history.

    :raises ConfigError: no usable saved identity and no token, said with what to do.
    """
    saved = await trio.to_thread.run_sync(load_identity, directory)
    if saved is not None and _missing_roles(saved, roles):
        missing = _missing_roles(saved, roles)
        held = ", ".join(host_roles(saved.identity)) or "none"
        if not token:
            raise ConfigError(
                f"this {role} joined with host roles {held}; what it serves now needs "
                f"{', '.join(missing)} too",
                hint="pass --token with a token for everything it serves "
                f"(`tetherctl tokens add --type={','.join(r.lower() for r in roles)}`)",
            )
    if saved is not None:
        expired = saved.tls_cert.not_valid_after_utc
        if expired > datetime.datetime.now(datetime.UTC):
            log.info("%s %s: using the identity saved in %s", role, host_id, directory)
            return saved
        if not token:
            raise ConfigError(
                f"this {role}'s certificates expired at {expired:%Y-%m-%d %H:%M} UTC, while it "
                "was not running to renew them",
                hint=f"join again: pass --token with a new {role} token "
                f"(`tetherctl tokens add --type={role}`)",
            )
        log.warning(
            "%s %s: its certificates expired at %s; joining again with the token",
            role,
            host_id,
            expired.isoformat(),
        )
    if not token:
        raise ConfigError(
            f"this {role} has not joined yet and has no token to join {server} with",
            hint=f"create one with `tetherctl tokens add --type={role}` and pass --token",
        )
    fresh_directory = not await trio.to_thread.run_sync(directory.exists)
    fresh_key = not await trio.to_thread.run_sync((directory / _PENDING_KEY).exists)
    key = await trio.to_thread.run_sync(pending_join_key, directory, role)
    try:
        joined = await join_cluster(
            server,
            secret_or_file(token, "the join token"),
            host_id=host_id,
            hostname=hostname,
            role=role,
            addresses=addresses,
            ca_pin=ca_pin,
            insecure=insecure,
            roles=roles,
            key=key,
        )
    except (ConnectionLost, Unreachable):
        # it may have been recorded (here or, with an older key, through a server that died
        # since): the key stays for the next attempt, through this server or another
        raise
    except Exception:
        # refused, or never sent: a key made for this attempt goes, and a refused first
        # join keeps nothing (a key kept from an earlier attempt stays: that one may hold
        # the id)
        if fresh_key:
            await trio.to_thread.run_sync(_forget_pending_join_key, directory, fresh_directory)
        raise
    await trio.to_thread.run_sync(save_identity, directory, joined)
    await trio.to_thread.run_sync(_forget_pending_join_key, directory)
    log.info("%s %s joined cluster %s through %s", role, host_id, joined.identity.cluster, server)
    return joined


async def load_or_join_current(
    directory: pathlib.Path,
    server: str,
    token: str | None,
    *,
    role: str,
    host_id: str,
    hostname: str,
    addresses: Sequence[str] = (),
    ca_pin: str | None = None,
    insecure: bool = False,
    auth_url: str | Sequence[str] | None = None,
    peer_kinds: Sequence[str] = SERVER_KINDS,
    roles: Sequence[str] = (),
) -> JoinedIdentity:
    """The identity saved in ``directory``, renewed and saved first if it is already due for
    renewal (the host was stopped a while); else joined through ``server`` with ``token`` and
    saved. The one way every joining host (a node's agent, a proxy of its own) gets its
    identity when it starts; it then renews it with :func:`renew_and_save`.

    :param auth_url: where to renew (``https://HOST:PORT``, or several auth servers'
        URLs); ``server`` by default (a proxy forwards ``/v1`` requests to auth).
    :param peer_kinds: who may answer there (a proxy asks auth only).
    :param roles: the host roles a node needs (its protocols'); a saved identity without one
        of them is replaced by joining again with ``token``.
    """
    joined = await _load_or_join(
        directory,
        server,
        token,
        role=role,
        host_id=host_id,
        hostname=hostname,
        addresses=addresses,
        ca_pin=ca_pin,
        insecure=insecure,
        roles=roles,
    )
    missing = _missing_roles(joined, roles)
    if not missing and renewal_due(joined) > datetime.datetime.now(datetime.UTC):
        return joined
    grow: dict[str, Any] = {}
    if missing and token:  # _load_or_join refused it without one
        log.warning(
            "%s %s: joined with host roles %s, needs %s too; renewing with the token",
            role,
            host_id,
            ", ".join(host_roles(joined.identity)),
            ", ".join(missing),
        )
        grow = {"roles": list(roles), "token": secret_or_file(token, "the join token")}
    context = host_client_context(joined, peer_kinds=peer_kinds, insecure=insecure)
    async with AuthClient(auth_url or f"https://{server}", context) as api:
        renewed = await renew_and_save(
            api, directory, hostname=hostname, addresses=addresses, role=role, **grow
        )
    log.info(
        "%s %s renewed its certificates before serving; they expire at %s",
        role,
        host_id,
        renewed.tls_cert.not_valid_after_utc.isoformat(),
    )
    return renewed


async def load_or_join_first_reachable(
    directory: pathlib.Path,
    servers: Sequence[str],
    token: str | None,
    *,
    role: str,
    host_id: str,
    hostname: str,
    addresses: Sequence[str] = (),
    ca_pin: str | None = None,
    insecure: bool = False,
    auth_urls: Sequence[str] = (),
    peer_kinds: Sequence[str] = SERVER_KINDS,
    roles: Sequence[str] = (),
) -> JoinedIdentity:
    """:func:`load_or_join_current` through the first of ``servers`` (``host:port``) that
    can be reached: the auth servers of a cluster that runs several on one store
    (``join.auth_servers``), in their order, or the one proxy.

    A server that cannot be connected to got nothing, so the next one is asked; any other
    failure (a refusal, a connection lost once the join was sent) is the caller's, as for
    one server: a join that may have reached a server is not silently sent to another.

    :param auth_urls: where to renew, one URL per server (``https://HOST:PORT``); the
        renewal asks them from the reached server's on. ``https://SERVER`` by default.
    """
    urls = list(auth_urls) or [f"https://{server}" for server in servers]
    for attempt, server in enumerate(servers):
        try:
            return await load_or_join_current(
                directory,
                server,
                token,
                role=role,
                host_id=host_id,
                hostname=hostname,
                addresses=addresses,
                ca_pin=ca_pin,
                insecure=insecure,
                auth_url=urls[attempt:] + urls[:attempt],
                peer_kinds=peer_kinds,
                roles=roles,
            )
        except Unreachable as exc:
            if attempt == len(servers) - 1:
                raise
            log.warning("auth server %s cannot be reached (%s); trying the next", server, exc)
    raise ValueError("a host needs at least one server to join through")


def _missing_roles(joined: JoinedIdentity, roles: Sequence[str]) -> list[str]:
    """The host roles among ``roles`` that ``joined``'s identity does not carry."""
    held = host_roles(joined.identity)
    return [r for r in roles if r not in held]


def host_client_context(
    joined: JoinedIdentity,
    *,
    alpn: Sequence[str] = (),
    peer_kinds: Sequence[str] = SERVER_KINDS,
    insecure: bool = False,
) -> ssl.SSLContext:
    """A context for reaching the cluster as the joined host: it presents the host's
    certificate and accepts only a server of ``peer_kinds`` signed by the cluster's CA
    (another host's certificate, from the same CA, is refused). ``insecure`` (tests only)
    verifies nothing."""
    return pki.client_ssl_context(
        trusted_cas=None if insecure else list(joined.tls_cas),
        cert=joined.tls_cert,
        key=joined.private_key,
        alpn=alpn,
        insecure=insecure,
        peer_kinds=() if insecure else peer_kinds,
    )


def renewal_due(joined: JoinedIdentity) -> datetime.datetime:
    """When ``joined``'s certificates are due for renewal: once two thirds of their lifetime
    have passed, which leaves a third for retries if auth is unreachable for a while. (The
    lifetime counts from the issue, not from the backdated start of validity.)"""
    return _renewal_due(joined.tls_cert)


def _renewal_due(cert: x509.Certificate) -> datetime.datetime:
    issued = cert.not_valid_before_utc + pki.CLOCK_SKEW
    return issued + (cert.not_valid_after_utc - issued) * 2 / 3


async def keep_renewed(
    host: str,
    cert: x509.Certificate,
    renew: Callable[[], Awaitable[x509.Certificate]],
    *,
    retry: datetime.timedelta = RENEWAL_RETRY,
) -> None:
    """Renew ``host``'s certificates (``cert`` the current one) each time two thirds of their
    lifetime have passed, until cancelled.

    ``renew`` gets new certificates, applies them wherever the host presents them, and returns
    the new one. A renewal that fails (auth refused or could not be reached, or the new
    certificate could not be loaded) is logged with the reason and tried again, after a delay
    that doubles from a second up to ``retry`` or a tenth of the lifetime, whichever is
    shorter; the current certificates stand meanwhile.

    :param host: who renews, as log lines name it (``"node 1f2e..."``, ``"proxy proxy-b"``).
    """
    while True:
        due = _renewal_due(cert)
        lifetime = (cert.not_valid_after_utc - due) * 3
        cap = min(retry, lifetime / 10).total_seconds()
        delays = Backoff(initial=min(1.0, cap), maximum=cap, jitter=0.0).delays()
        await trio.sleep(max((due - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0))
        for delay in delays:  # without end: until a renewal succeeds
            try:
                cert = await renew()
                break
            except (TetherError, OSError) as exc:
                log.warning(
                    "%s: could not renew its certificates, which expire at %s (trying again in "
                    "%.1fs): %s",
                    host,
                    cert.not_valid_after_utc.isoformat(),
                    delay,
                    exc,
                )
                await trio.sleep(delay)
        log.info(
            "%s renewed its certificates; they expire at %s",
            host,
            cert.not_valid_after_utc.isoformat(),
        )


async def renew_identity(
    api: AuthClient,
    *,
    hostname: str,
    addresses: Sequence[str] = (),
    role: str = "node",
    roles: Sequence[str] | None = None,
    token: str | None = None,
) -> JoinedIdentity:
    """New certificates for a new key, from auth, proven by the current ones (``api`` presents
    them): the same host id and kind, a full lifetime. The caller saves and applies them.
    ``roles`` (with ``token``, which must carry them) asks for other host roles than the
    current certificate's.

    :raises TetherError: auth refused, could not be reached, or answered with something that
        is no identity (the current ones still stand).
    """
    key = pki.generate_private_key(_host_key_algorithm(role))
    request = _host_request(key, hostname, addresses)
    if roles is not None:
        request["roles"] = list(roles)
    if token:
        request["token"] = token
    body = await api.call("POST", "/v1/hosts/renew", json=request)
    try:
        return JoinedIdentity.from_json(body, key)
    except (KeyError, TypeError, ValueError) as exc:
        raise TetherError(
            f"auth answered the renewal with an unreadable identity: {exc!r}",
            hint="check that auth runs the same Tether version",
        ) from None


async def renew_and_save(
    api: AuthClient,
    directory: pathlib.Path | None,
    *,
    hostname: str,
    addresses: Sequence[str] = (),
    role: str = "node",
    roles: Sequence[str] | None = None,
    token: str | None = None,
) -> JoinedIdentity:
    """:func:`renew_identity`, then saved in ``directory`` (None: a host beside auth, which
    gets new certificates at each start, keeps none).

    :raises TetherError: see :func:`renew_identity`.
    """
    renewed = await renew_identity(
        api, hostname=hostname, addresses=addresses, role=role, roles=roles, token=token
    )
    if directory is not None:
        await trio.to_thread.run_sync(save_identity, directory, renewed)
    return renewed


def _host_key_algorithm(role: str) -> str:
    """The key type of a joining host: a proxy's certificate is what browsers meet on its web
    port, so it is ECDSA P-256; a node's key is also its SSH host key, which stays Ed25519
    (``ssh-audit`` fails the NIST curves)."""
    return pki.WEB_ALGORITHM if role == "proxy" else "ed25519"


def _host_request(key: pki.PrivateKey, hostname: str, addresses: Sequence[str]) -> dict[str, Any]:
    """What a host says of itself when it asks for certificates: names and public keys."""
    return {
        "hostname": hostname,
        "addresses": list(addresses),
        "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
        "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
    }


def _from_json(body: dict[str, Any], key: pki.PrivateKey) -> JoinedIdentity:
    return JoinedIdentity(
        identity=pki.Identity.from_json(body["identity"]),
        private_key=key,
        ssh_host_cert=str(body["ssh_host_cert"]),
        tls_cert=pki.load_cert(str(body["tls_cert"]).encode()),
        tls_cas=tuple(pki.load_cert(str(p).encode()) for p in body["tls_ca_certs"]),
        ssh_user_ca_lines=tuple(str(line) for line in body["ssh_user_ca"]),
        ssh_host_ca_lines=tuple(str(line) for line in body["ssh_host_ca"]),
    )


_FILES = {
    "key": "key.pem",
    "ssh_host_cert": "ssh_host_cert.pub",
    "tls_cert": "tls.crt",
    "tls_cas": "cas.pem",
    "meta": "identity.json",
}
#: the key of a join whose answer is not saved yet
_PENDING_KEY = "join_key.pem"


def pending_join_key(directory: pathlib.Path, role: str) -> pki.PrivateKey:
    """The key to join with from ``directory``: that of an earlier join whose answer was not
    saved (lost with the auth server that recorded it, or with this process), else a new one,
    written there (0600) before it is sent, so that a join sent again after a crash on either
    side names the same key, which auth accepts for the id the first join took.

    A pending key of another type than ``role``'s (the directory served another kind of
    host) is replaced.
    """
    path = directory / _PENDING_KEY
    algorithm = _host_key_algorithm(role)
    try:
        key = pki.load_private_key(path.read_bytes())
    except FileNotFoundError:
        pass
    else:
        if pki.key_algorithm(key) == algorithm:
            return key
    key = pki.generate_private_key(algorithm)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(path, pki.private_key_to_pem(key))
    return key


def _forget_pending_join_key(directory: pathlib.Path, remove_directory: bool = False) -> None:
    """Remove the key of a join once its answer is saved (as the identity's key), or once
    the join was refused; with ``remove_directory``, the directory too if nothing else is in
    it (made for this join)."""
    (directory / _PENDING_KEY).unlink(missing_ok=True)
    if remove_directory:
        with contextlib.suppress(OSError):  # not empty: something else lives there
            directory.rmdir()


def save_identity(directory: pathlib.Path, joined: JoinedIdentity) -> None:
    """Write the identity under ``directory`` (0700, files 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(directory / _FILES["key"], pki.private_key_to_pem(joined.private_key))
    pki.write_secret_file(directory / _FILES["ssh_host_cert"], joined.ssh_host_cert.encode())
    pki.write_secret_file(directory / _FILES["tls_cert"], pki.cert_to_pem(joined.tls_cert))
    pki.write_secret_file(directory / _FILES["tls_cas"], pki.certs_to_pem(joined.tls_cas))
    meta = {
        "identity": joined.identity.to_json(),
        "ssh_user_ca": list(joined.ssh_user_ca_lines),
        "ssh_host_ca": list(joined.ssh_host_ca_lines),
    }
    pki.write_secret_file(directory / _FILES["meta"], json.dumps(meta, indent=2).encode())


def load_identity(directory: pathlib.Path) -> JoinedIdentity | None:
    """The identity saved by :func:`save_identity`, or None when this host has not joined."""
    try:
        meta = json.loads((directory / _FILES["meta"]).read_text())
        key = pki.load_private_key((directory / _FILES["key"]).read_bytes())
        ssh_cert = (directory / _FILES["ssh_host_cert"]).read_text()
        tls_cert = pki.load_cert((directory / _FILES["tls_cert"]).read_bytes())
        cas = tuple(pki.load_certs((directory / _FILES["tls_cas"]).read_bytes()))
    except FileNotFoundError:
        return None
    return JoinedIdentity(
        identity=pki.Identity.from_json(meta["identity"]),
        private_key=key,
        ssh_host_cert=ssh_cert,
        tls_cert=tls_cert,
        tls_cas=cas,
        ssh_user_ca_lines=tuple(meta["ssh_user_ca"]),
        ssh_host_ca_lines=tuple(meta["ssh_host_ca"]),
    )
