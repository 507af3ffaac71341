"""A client of the auth API: used by the proxy, by ``tetherctl`` and by tests.

The same class talks to auth directly (``tetherctl -c`` on the auth host, the proxy) or through
the proxy's public port (``tetherctl`` with a ``tether login`` profile), because the proxy
forwards ``/v1/`` requests to auth with the user's certificate.
"""

from __future__ import annotations

import base64
import datetime
import logging
import pathlib
import random
import ssl
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from tether import pki
from tether.audit import AuditEvent, AuditQuery, HostAuditEvent
from tether.cert_authority_types import CertUsage, SignedCertificate
from tether.config import Config
from tether.datadir import admin_identity_paths, read_process_info
from tether.errors import ConnectionLost, TetherError, Unreachable
from tether.httpclient import json_or_none, request_body

if TYPE_CHECKING:  # not at run time: every CLI start imports this module, and that one trio
    from cryptography import x509

    from tether.auth.in_process import InProcessAuth
    from tether.tunnel.heartbeats import HeartbeatRecord

__all__ = ["FORWARDED_CERT_HEADER", "TRUST_WAIT", "AuthClient", "admin_client"]

log = logging.getLogger(__name__)

#: How long a trust watch asks auth to hold each request (auth caps it lower if it must).
TRUST_WAIT = 15.0
#: A failed trust watch tries again after this, doubling up to the maximum: kept short, as a
#: host learns of changes stored meanwhile (an auth server restarted) only when it asks again.
WATCH_BACKOFF_MIN = 0.5
WATCH_BACKOFF_MAX = 5.0

#: The header in which a proxy passes on its caller's certificate (DER, base64) so that auth
#: acts as that caller (see :mod:`tether.auth.http_api`).
FORWARDED_CERT_HEADER = "tether-forwarded-cert"
#: How long an idle connection to auth (or the proxy in front of it) stays in the pool
#: (seconds): longer than a node's heartbeat interval, so each heartbeat reuses the connection
#: instead of paying a mutual-TLS handshake (httpx's default, 5 s, made every one of them a new
#: handshake: 29% of a root's CPU with 500 tunnel nodes), and shorter than the servers' own
#: keep-alive, so the client never sends on a connection the server is closing.
KEEPALIVE_EXPIRY = 25.0
#: With several auth servers, how long making a connection (TCP and the TLS handshake) may
#: take before the next server is tried, in seconds. A frozen server (stopped, swapping, its
#: host overloaded) still completes TCP handshakes in its kernel and never the TLS one; with
#: the whole request timeout (30 s) every request made meanwhile would wait that long. A
#: single server keeps the whole timeout: there is nowhere else to go.
FAILOVER_CONNECT_TIMEOUT = 5.0


class AuthClient:
    """Typed calls to the auth API. Use as ``async with AuthClient(...) as client``.

    :param base_url: ``https://host:port`` of auth, or of a proxy that forwards to it; or
        several, one per auth server of a cluster that runs more than one (``join.auth_servers``).
    :param ssl_context: carries the client certificate and the CAs trusted for the server.
    :param transport: auth in this process (:class:`~tether.auth.in_process.InProcessAuth`),
        called without a socket; ``base_url`` is then its ``IN_PROCESS_URL``.

    With several base URLs, requests go to one server, the first at the start, for as long as
    it answers, and fail over to the next:

    - at once, for any request, when no connection to it could be made (refused, timed out
      connecting: :class:`~tether.errors.Unreachable`): nothing reached that server;
    - for a ``GET`` only (it changes nothing), when the connection failed once made
      (:class:`~tether.errors.ConnectionLost`: reset, closed, timed out reading);
    - never for another method that may have reached the server: a login, a join or a write
      that may have been applied there is not silently sent again to another server. Its
      caller gets the ``ConnectionLost`` and decides (a user runs ``tether login`` again); the
      next request goes to the next server if that one still cannot be reached.

    The server that answered is kept for the following requests; a failover is logged once.
    An error the server answered (refused, not found, ...) is never retried elsewhere. A
    connection that is not made within :data:`FAILOVER_CONNECT_TIMEOUT` counts as one that
    could not be made.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        ssl_context: ssl.SSLContext,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        transport: InProcessAuth | None = None,
    ) -> None:
        self.base_urls = (base_url,) if isinstance(base_url, str) else tuple(base_url)
        if not self.base_urls:
            raise ValueError("an auth client needs at least one base URL")
        self._context = ssl_context
        self._transport = transport
        self._headers = dict(headers or {})
        self._timeout = timeout
        #: the index in base_urls of the server requests go to
        self._active = 0
        self._clients = [self._open(url) for url in self.base_urls]
        #: requests under way, by the client they run on
        self._requests: dict[httpx.AsyncClient, int] = {}

    @property
    def base_url(self) -> str:
        """The URL requests go to now (the server that last answered)."""
        return self.base_urls[self._active]

    def _timeouts(self, timeout: float) -> httpx.Timeout:
        """``timeout`` for each phase of a request, connecting within the failover's time
        when there is another server to fail over to."""
        if len(self.base_urls) == 1:
            return httpx.Timeout(timeout)
        return httpx.Timeout(timeout, connect=min(timeout, FAILOVER_CONNECT_TIMEOUT))

    def _open(self, base_url: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url,
            verify=self._context,
            transport=self._transport,
            headers=self._headers,
            timeout=self._timeouts(self._timeout),
            # no cap on connections: a proxy forwards each tunnel-mode node's trust watch,
            # which holds one for its wait, and its own calls must not queue behind them
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=20,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
        )

    async def present_certificate(self, cert: x509.Certificate, key: pki.PrivateKey) -> None:
        """Present ``cert`` from the next request on (a host renewed its certificates).

        Pooled connections made their handshakes with the old one, which auth would keep
        seeing until it expires: new requests go through new connections, and the old ones
        close once the requests under way on them are done.
        """
        pki.present_certificate(self._context, cert, key)
        if self._transport is not None:
            self._transport.present_certificate(cert)
        previous, self._clients = self._clients, [self._open(url) for url in self.base_urls]
        for http in previous:
            if not self._requests.get(http):
                await http.aclose()
            # else the last request on it closes it (see call_body)

    async def __aenter__(self) -> AuthClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for http in self._clients:
            await http.aclose()

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; a server-side TetherError is raised here as the same class."""
        return json_or_none(await self.call_body(method, path, **kwargs))

    async def call_body(self, method: str, path: str, **kwargs: Any) -> bytes:
        """One request, whose JSON answer comes back undecoded (a proxy passes it on as it
        is: a listing of a thousand leaves is not decoded and encoded again on the way); a
        server-side TetherError is raised here as the same class. With several servers, it
        fails over as the class says.

        :raises Unreachable: no server could be connected to.
        :raises ConnectionLost: the connection failed after the request may have reached
            the server (a request other than ``GET``, or the last server's).
        """
        first = self._active
        count = len(self.base_urls)
        unreachable: list[Unreachable] = []
        failures: list[str] = []
        for step in range(count):
            index = (first + step) % count
            try:
                body = await self._request(index, method, path, **kwargs)
            except Unreachable as exc:
                unreachable.append(exc)
                failures.append(exc.message)
                continue
            except ConnectionLost as exc:
                if method != "GET" or step == count - 1:
                    raise self._lost(index, exc) from None
                failures.append(exc.message)
                continue
            if index != first and self._active == first:  # (not switched by another request)
                log.warning(
                    "auth server %s failed (%s); requests go to %s from now on",
                    self.base_urls[self._active],
                    "; ".join(failures),
                    self.base_urls[index],
                )
                self._active = index
            return body
        if count == 1 or len(unreachable) == 1:
            raise unreachable[0]
        raise Unreachable(
            "no auth server could be reached: " + "; ".join(failures),
            reason=unreachable[-1].reason,
            hint=unreachable[-1].hint,
        )

    def _lost(self, index: int, exc: ConnectionLost) -> ConnectionLost:
        """``exc`` as its caller must read it when the cluster has several auth servers: one
        of them failed under the request, which it may have done or not, and another one
        takes the next (as one auth server's own connection, it stays as it is)."""
        if len(self.base_urls) == 1:
            return exc
        return ConnectionLost(
            f"auth server {self.base_urls[index]} failed while handling the request, which it "
            f"may or may not have done ({exc.message})",
            hint="try again: the cluster's other auth servers take the next request",
        )

    async def _request(self, index: int, method: str, path: str, **kwargs: Any) -> bytes:
        if isinstance(kwargs.get("timeout"), int | float):  # a caller's longer wait (a watch)
            kwargs["timeout"] = self._timeouts(kwargs["timeout"])
        http = self._clients[index]
        self._requests[http] = self._requests.get(http, 0) + 1
        try:
            return await request_body(
                http,
                method,
                path,
                untrusted_hint="check the address, or log in again with `tether login`",
                **kwargs,
            )
        finally:
            self._requests[http] -= 1
            if not self._requests[http]:
                del self._requests[http]
                if http not in self._clients:  # replaced by present_certificate meanwhile
                    await http.aclose()

    # --- resources -----------------------------------------------------------------------

    async def get_resources(
        self,
        kind: str,
        name: str | None = None,
        *,
        with_secrets: bool = False,
        target: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Resources of ``kind`` as documents; ``headers`` from
        :meth:`tether.protocols.ProxyConnection.forwarded_headers` ask as that user.

        :param target: what a user typed to reach a target of ``kind`` (``web-1``,
            ``env=prod``): only the entries it names (routing's read). An auth server older
            than this parameter ignores it and answers every entry, which routing resolves
            the same way.
        """
        params = {}
        if name:
            params["name"] = name
        if with_secrets:
            params["with_secrets"] = "1"
        if target is not None:
            params["target"] = target
        body = await self.call(
            "GET", f"/v1/resources/{kind}", params=params, headers=dict(headers or {})
        )
        return list(body["resources"])

    async def publish(self, document: Mapping[str, Any], ttl: datetime.timedelta) -> None:
        """Publish this host's own inventory entry (a node's heartbeat), expiring after ttl."""
        await self.call(
            "PUT",
            "/v1/presence",
            json={"resource": dict(document), "ttl_seconds": ttl.total_seconds()},
        )

    async def publish_relayed(
        self, entries: Sequence[tuple[bytes, Mapping[str, Any], float, float | None]]
    ) -> list[str | None]:
        """Relay the inventory entries of the hosts whose tunnels this proxy holds (only the
        cluster's proxies may): each is ``(the host's certificate (DER), entry, ttl in
        seconds, removed)``, where ``removed`` is None, or for the entry of a host whose
        tunnel closed, how many seconds ago it was relayed (auth removes it unless published
        again since). Returns, per entry, None when stored or why auth refused it."""
        body = await self.call(
            "PUT",
            "/v1/presence/relayed",
            json={
                "entries": [
                    {
                        "cert": base64.b64encode(cert).decode(),
                        "resource": dict(document),
                        "ttl_seconds": ttl,
                        **({"removed_relayed_ago": gone} if gone is not None else {}),
                    }
                    for cert, document, ttl, gone in entries
                ]
            },
        )
        refused = body.get("refused") if isinstance(body, dict) else None
        if not isinstance(refused, list) or len(refused) != len(entries):
            raise TetherError("auth answered a relayed inventory batch with nonsense")
        return [str(why) if why else None for why in refused]

    async def trust(self, known: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """What the cluster trusts (:meth:`tether.trust.ClusterTrust.to_json` and its
        ``revision``), or only ``{"revision", "unchanged": true}`` when ``known`` is the
        current revision; the cluster's hosts only.

        :param wait: when ``known`` is current, how long auth may hold the answer back for a
            change (a watch; auth caps it, see :data:`tether.auth.trust_feed.MAX_WAIT`).
        """
        params: dict[str, str] = {"known": known} if known else {}
        if wait:
            params["wait"] = f"{wait:g}"
        # the answer may take the whole wait: the timeout counts from its end
        timeout = self._timeout + wait
        return dict(await self.call("GET", "/v1/trust", params=params, timeout=timeout))

    async def watch_trust(
        self, known: str | None = None, *, wait: float = TRUST_WAIT
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Yield each new trust snapshot (as :meth:`trust` returns it) from the one after
        ``known`` on, as auth pushes them: one hanging request at a time, answered when the
        trust changes or after ``wait`` seconds with nothing new.

        Never ends by itself: while auth cannot be reached or refuses, it asks again with
        backoff (doubling up to :data:`WATCH_BACKOFF_MAX` seconds, with jitter) and logs once
        per outage, not once per try. Close it with :func:`contextlib.aclosing`.
        """
        import trio  # here, not at the top: see the TYPE_CHECKING import there

        delay = 0.0
        while True:
            started = trio.current_time()
            try:
                body = await self.trust(known, wait=wait)
            except TetherError as exc:
                if not delay:
                    log.warning("watching the trust at %s failed: %s; retrying", self.base_url, exc)
                delay = min(max(2 * delay, WATCH_BACKOFF_MIN), WATCH_BACKOFF_MAX)
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            if delay:
                log.warning("watching the trust at %s again", self.base_url)
                delay = 0.0
            revision = body.get("revision")
            if body.get("unchanged") is True and revision == known:
                if trio.current_time() - started < WATCH_BACKOFF_MIN:
                    # a server that does not hold the answer back must not make this spin
                    await trio.sleep(WATCH_BACKOFF_MIN)
                continue
            known = str(revision) if revision else None
            yield body

    async def record_tunnel_heartbeats(self, records: Sequence[HeartbeatRecord]) -> None:
        """Store a batch of tunnel heartbeats (only the cluster's proxies may)."""
        await self.call(
            "PUT",
            "/v1/tunnels/heartbeats",
            json={
                "heartbeats": [
                    {
                        "cluster": r.cluster,
                        "agent": r.agent,
                        "last_heartbeat": r.time,
                        "status": dict(r.status),
                    }
                    for r in records
                ]
            },
        )

    async def record_event(
        self, event_type: str, user: str, fields: Mapping[str, Any], *, success: bool = True
    ) -> None:
        """Record an audit event that happened on this host; *user* is empty when nobody is
        known (a key no CA signed, a stream refused before anyone logged in)."""
        await self.call(
            "POST",
            "/v1/audit",
            json={
                "type": event_type,
                "user": user or None,  # the API takes a user or none, never an empty name
                "fields": dict(fields),
                "success": success,
            },
        )

    async def record_events(self, events: Sequence[HostAuditEvent]) -> None:
        """Record audit events that happened on this host in one call, in order, all or none.
        Each keeps the host's id and time: a batch sent again after a lost answer is
        recorded once.

        :raises TetherError: auth refused the batch (naming the event at fault), or cannot
            be reached; nothing was recorded then.
        """
        await self.call(
            "POST", "/v1/audit/batch", json={"events": [event.to_json() for event in events]}
        )

    async def sign_certificate(
        self,
        ca_type: str,
        public_key: pki.SubjectPublicKey | str,
        common_name: str,
        *,
        usage: CertUsage,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> SignedCertificate:
        """Have the CA of ``ca_type`` (one a plugin declares) sign a certificate for
        ``public_key`` (an object or PEM): subject exactly ``CN=<common_name>``, the DNS
        names and IP addresses as its SAN, for a ``server`` or a ``client``, valid ``ttl``
        (at most the CA type's ``max_ttl``).

        Nothing is cached, here or in auth: each call signs anew and is audited
        (``cert.issued``). A caller signing often (a client certificate per session) keeps
        what it got and reuses it until near its expiry.

        :raises AccessDenied: the caller may not (the admin, users whose roles allow verb
            ``sign`` on kind ``cert_authority``, and hosts with a role the CA type names may).
        """
        pem = (
            public_key
            if isinstance(public_key, str)
            else pki.public_key_to_pem(public_key).decode()
        )
        body = await self.call(
            "POST",
            "/v1/certificates",
            json={
                "ca_type": ca_type,
                "public_key": pem,
                "common_name": common_name,
                "usage": usage,
                "ttl_seconds": ttl.total_seconds(),
                "dns_names": list(dns_names),
                "ip_addresses": list(ip_addresses),
            },
        )
        return SignedCertificate(
            certificate=str(body["certificate"]),
            ca_certs=tuple(str(pem) for pem in body["ca_certs"]),
        )

    async def authority_certificates(self, ca_type: str, cluster: str) -> list[str]:
        """The certificates (PEM) of ``cluster``'s CA of ``ca_type``, what a peer signed by it
        is verified with: those it signs with and, during a rotation, those it still trusts
        (its ``cert_authority`` resource's active and additional trusted keys)."""
        docs = await self.get_resources("cert_authority", f"{ca_type}/{cluster}")
        pems: dict[str, None] = {}
        for doc in docs:
            spec = doc.get("spec") or {}
            for group in ("active_keys", "additional_trusted_keys"):
                for pem in (spec.get(group) or {}).get("tls") or ():
                    pems[str(pem)] = None
        return list(pems)

    async def create_resources(
        self,
        documents: Sequence[Mapping[str, Any]],
        *,
        force: bool = False,
        expected_revision: int | None = None,
    ) -> list[str]:
        """Create the resources (``force``: or replace them), all or none.

        :param expected_revision: replace the one resource only if it is still at this
            revision (as read in ``metadata.revision``); ``CompareFailed`` if it changed.
        """
        request: dict[str, Any] = {"resources": list(documents), "force": force}
        if expected_revision is not None:
            request["expected_revision"] = expected_revision
        body = await self.call("POST", "/v1/resources", json=request)
        return list(body["messages"])

    async def delete_resource(self, kind: str, name: str) -> str:
        body = await self.call("DELETE", f"/v1/resources/{kind}/{name}")
        return str(body["message"])

    # --- users and tokens ----------------------------------------------------------------

    async def add_user(
        self,
        name: str,
        *,
        roles: Sequence[str],
        traits: Mapping[str, Sequence[str]],
        password: str | None = None,
    ) -> dict[str, Any] | None:
        body = await self.call(
            "POST",
            "/v1/users",
            json={
                "name": name,
                "roles": list(roles),
                "traits": {k: list(v) for k, v in traits.items()},
                "password": password,
            },
        )
        token = body["token"]
        return dict(token) if token else None

    async def update_user(
        self,
        name: str,
        *,
        roles: Sequence[str] | None = None,
        traits: Mapping[str, Sequence[str]] | None = None,
    ) -> str:
        payload: dict[str, Any] = {}
        if roles is not None:
            payload["roles"] = list(roles)
        if traits is not None:
            payload["traits"] = {k: list(v) for k, v in traits.items()}
        body = await self.call("PUT", f"/v1/users/{name}", json=payload)
        return str(body["message"])

    async def add_token(
        self, type_name: str, ttl: datetime.timedelta, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        body = await self.call(
            "POST",
            "/v1/tokens",
            json={
                "type": type_name,
                "ttl_seconds": ttl.total_seconds(),
                "labels": dict(labels or {}),
            },
        )
        return dict(body)

    async def list_tokens(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/v1/tokens"))["tokens"])

    async def delete_token(self, token: str) -> str:
        return str((await self.call("DELETE", f"/v1/tokens/{token}"))["message"])

    # --- audit, cluster, login -----------------------------------------------------------

    async def search_audit(self, query: AuditQuery) -> list[AuditEvent]:
        params: dict[str, str] = {"limit": str(query.limit)}
        if query.offset:
            params["offset"] = str(query.offset)
        if query.type:
            params["type"] = query.type
        if query.user:
            params["user"] = query.user
        if query.since:
            params["since"] = query.since.isoformat()
        if query.until:
            params["until"] = query.until.isoformat()
        body = await self.call("GET", "/v1/audit", params=params)
        return [AuditEvent.from_json(e) for e in body["events"]]

    async def cluster(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/v1/cluster"))

    async def whoami(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/v1/whoami"))

    async def login_password(
        self,
        username: str,
        password: str,
        *,
        ssh_public_key: str,
        tls_public_key: str,
        ttl_seconds: float | None = None,
        connector: str = "local",
    ) -> dict[str, Any]:
        """Only the cluster's proxies may call this (on behalf of an anonymous user)."""
        return dict(
            await self.call(
                "POST",
                "/v1/login/password",
                json={
                    "username": username,
                    "password": password,
                    "ssh_public_key": ssh_public_key,
                    "tls_public_key": tls_public_key,
                    "ttl_seconds": ttl_seconds,
                    "connector": connector,
                },
            )
        )

    async def join(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Only the cluster's proxies may call this (on behalf of a joining node or proxy)."""
        return dict(await self.call("POST", "/v1/join", json=dict(request)))

    async def signup(self, token: str, password: str) -> str:
        body = await self.call("POST", "/v1/signup", json={"token": token, "password": password})
        return str(body["user"])


def admin_client(config: Config) -> tuple[AuthClient, str | None]:
    """A client acting as the local admin on the auth host (``tetherctl -c``, ``tetherd demo``).

    Returns the client and the proxy address users should be told about (None when no
    proxy runs with this auth service).
    """
    data_dir = pathlib.Path(config.data_dir)
    cert_path, key_path, ca_path = admin_identity_paths(data_dir)
    try:
        cert = pki.load_cert(cert_path.read_bytes())
        key = pki.load_private_key(key_path.read_bytes())
        cas = pki.load_certs(ca_path.read_bytes())
    except FileNotFoundError:
        raise TetherError(
            f"no admin identity in {data_dir}",
            hint="start the auth service with this configuration first (tetherd start -c ...)",
        ) from None
    except PermissionError:
        raise TetherError(
            f"cannot read the admin identity in {data_dir}", hint="run as the daemon's user"
        ) from None
    process = read_process_info(data_dir)
    listen = config.auth_service.listen_addr
    addr = process.get("auth_addr") or f"{listen.connect_host}:{listen.port}"
    context = pki.client_ssl_context(trusted_cas=cas, cert=cert, key=key, peer_kinds=("auth",))
    return AuthClient(f"https://{addr}", context), process.get("proxy_addr")
