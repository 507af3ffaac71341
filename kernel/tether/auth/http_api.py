"""The auth service's HTTPS+JSON API (mutual TLS), a thin mapping onto :class:`AuthService`.

Callers are identified by their client certificate only, except the three anonymous
``/webapi/`` routes a host joining directly (``tetherd start --auth-server``) needs before it
has one: ping, the cluster CA (checked against the pin it was given) and the token join; and
a load balancer's two probes, ``/healthz`` (the process serves) and ``/readyz`` (it can serve:
see :mod:`tether.auth.readiness`).

The proxy, which terminates users' TLS on the public port, forwards their requests with its
own certificate and the user's certificate in the ``Tether-Forwarded-Cert`` header; auth
verifies that certificate itself, so a proxy cannot invent identities (it has no CA key).
"""

from __future__ import annotations

import base64
import binascii
import datetime
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether import __version__, audit, pki
from tether.asgi import PEER_CERT_STATE, BodyLimit, audit_refused_bodies
from tether.auth.http_client import FORWARDED_CERT_HEADER
from tether.auth.inventory import RelayedEntry
from tether.auth.readiness import Readiness
from tether.auth.request_bodies import (
    AddToken,
    AddUser,
    AuditBatch,
    BeginSSO,
    CollectSSO,
    CompleteSSO,
    CreateResources,
    Heartbeats,
    HostEvent,
    Join,
    LoginPassword,
    Publish,
    PublishRelayed,
    RelayedPublish,
    RenewHost,
    SignCertificate,
    Signup,
    UpdateUser,
    read_body,
    structure_each,
)
from tether.auth.service import AuthService, JoinResult, TokenInfo
from tether.errors import AccessDenied, TetherError
from tether.ratelimit import RateLimiter, rate_limited
from tether.resources import resource_from_dict
from tether.targets import TargetQuery
from tether.trust.handshake import validate_leaf
from tether.wire import exception_handlers, query_seconds, read_json_object

__all__ = ["FORWARDED_CERT_HEADER", "build_app", "token_to_json"]


def token_to_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "token": info.token,
        "type": info.type,
        "expires": info.expires.isoformat().replace("+00:00", "Z") if info.expires else None,
        "ca_pin": info.ca_pin,
        "labels": dict(info.labels),
    }


def join_result_to_json(result: JoinResult) -> dict[str, Any]:
    return {
        "identity": result.identity.to_json(),
        "ssh_host_cert": result.ssh_host_cert,
        "tls_cert": result.tls_cert_pem,
        "tls_ca_certs": list(result.tls_ca_pems),
        "ssh_user_ca": list(result.ssh_user_ca_lines),
        "ssh_host_ca": list(result.ssh_host_ca_lines),
    }


def _peer_certificate(request: Request, auth: AuthService) -> bytes:
    """The caller's certificate (DER, not verified here): the TLS peer's own, or the one a
    proxy (verified here) forwards for its caller."""
    der = request.scope.get("state", {}).get(PEER_CERT_STATE)
    if not der:
        raise AccessDenied("a client certificate is required", hint="run `tether login` first")
    forwarded = request.headers.get(FORWARDED_CERT_HEADER)
    if forwarded is None:
        return bytes(der)
    proxy = auth.verify_client(der)
    if proxy.kind != "proxy":
        raise AccessDenied(f"{proxy.kind} {proxy.username!r} may not forward identities")
    try:
        return base64.b64decode(forwarded, validate=True)
    except (binascii.Error, ValueError):
        raise AccessDenied("malformed forwarded certificate") from None


def _peer_identity(request: Request, auth: AuthService) -> pki.Identity:
    return auth.verify_client(_peer_certificate(request, auth))


def _require_proxy(identity: pki.Identity) -> None:
    if identity.kind != "proxy":
        raise AccessDenied("only the cluster's proxies may call this endpoint")


#: The most events one audit search returns: a longer history is read page by page.
MAX_AUDIT_PAGE = 10_000


def _audit_time(text: str | None) -> datetime.datetime | None:
    """An ISO 8601 time of an audit query (UTC when it names no zone)."""
    if not text:
        return None
    when = datetime.datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _host_audit_event(body: HostEvent) -> audit.HostAuditEvent:
    """A host's reported event; one from an older host, without its own id and time, is
    named and dated now."""
    named = audit.HostAuditEvent(
        body.type, body.user or "", body.fields or {}, body.success is not False
    )
    if body.id is not None:
        named = attrs.evolve(named, id=body.id)
    if body.time is not None:
        named = attrs.evolve(named, time=body.time)
    return named


def _seconds(value: float | None) -> datetime.timedelta | None:
    return datetime.timedelta(seconds=value) if value is not None else None


def build_app(auth: AuthService) -> BodyLimit:
    """The ASGI app for one auth service. Bodies from callers without a certificate are
    capped (``auth_service.max_request_body``); hosts and users are authenticated, and a
    proxy caps what it forwards."""
    rate = auth.config.auth_service.rate_limit
    # the one anonymous route that costs work and storage; the proxy's are limited there
    limiter = RateLimiter(average=rate.average, burst=rate.burst, period=rate.period)

    async def cluster(request: Request) -> JSONResponse:
        _peer_identity(request, auth)
        return JSONResponse(
            {
                "name": auth.cluster_name,
                "version": __version__,
                "ca_pin": auth.ca_pin,
                "fingerprints": auth.authorities.fingerprints(),
                # the cluster's keep-alive, which its proxies name to every tunnel's agent
                "keep_alive_interval": auth.context.keep_alive.interval,
                "keep_alive_count_max": auth.context.keep_alive.count_max,
            }
        )

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse(_peer_identity(request, auth).to_json())

    async def get_resources(request: Request) -> Response:
        identity = _peer_identity(request, auth)
        name = request.query_params.get("name") or None
        with_secrets = request.query_params.get("with_secrets") in ("1", "true")
        # what a user typed to reach a target: routing reads only the entries it names
        target = request.query_params.get("target")
        found = await auth.get_resources(
            identity,
            request.path_params["kind"],
            name,
            with_secrets=with_secrets,
            target=TargetQuery.parse(target) if target is not None else None,
        )
        body = auth.encoded_documents(found, with_secrets=with_secrets)
        return Response(body, media_type="application/json")

    async def create_resources(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, CreateResources)
        resources = [
            resource_from_dict(doc, auth.registry, source=f"request document {i}")
            for i, doc in enumerate(body.resources, start=1)
        ]
        messages = await auth.create_resources(
            identity,
            resources,
            force=bool(body.force),
            expected_revision=body.expected_revision,
        )
        return JSONResponse({"messages": messages})

    async def delete_resource(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        message = await auth.delete_resource(
            identity, request.path_params["kind"], request.path_params["name"]
        )
        return JSONResponse({"message": message})

    async def add_user(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, AddUser)
        token = await auth.add_user(
            identity,
            body.name,
            roles=body.roles or (),
            traits=body.traits or {},
            password=body.password,
        )
        return JSONResponse({"token": token_to_json(token) if token else None})

    async def update_user(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, UpdateUser)
        message = await auth.update_user(
            identity, request.path_params["name"], roles=body.roles, traits=body.traits
        )
        return JSONResponse({"message": message})

    async def add_token(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, AddToken)
        info = await auth.add_token(
            identity,
            body.type,
            datetime.timedelta(seconds=body.ttl_seconds),
            labels=body.labels or None,
        )
        return JSONResponse(token_to_json(info))

    async def list_tokens(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        return JSONResponse(
            {"tokens": [token_to_json(t) for t in await auth.list_tokens(identity)]}
        )

    async def delete_token(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        return JSONResponse(
            {"message": await auth.delete_token(identity, request.path_params["token"])}
        )

    async def audit_search(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        params = request.query_params
        try:
            query = audit.AuditQuery(
                type=params.get("type") or None,
                user=params.get("user") or None,
                since=_audit_time(params.get("since")),
                until=_audit_time(params.get("until")),
                limit=int(params.get("limit", "1000")),
                offset=int(params.get("offset", "0")),
            )
        except ValueError as exc:
            raise TetherError(f"bad audit query: {exc}") from None
        if not 1 <= query.limit <= MAX_AUDIT_PAGE or query.offset < 0:
            raise TetherError(
                f"bad audit query: limit must be 1 to {MAX_AUDIT_PAGE} and offset 0 or more"
            )
        events = await auth.search_audit(identity, query)
        return JSONResponse({"events": [e.to_json() for e in events]})

    async def login_password(request: Request) -> JSONResponse:
        _require_proxy(_peer_identity(request, auth))
        body = await read_body(request, LoginPassword)
        result = await auth.login_password(
            body.username,
            body.password,
            ssh_public_key=body.ssh_public_key,
            tls_public_key_pem=body.tls_public_key,
            ttl=_seconds(body.ttl_seconds),
            connector_name=body.connector or "local",
        )
        return JSONResponse(result.to_json())

    async def join(request: Request) -> JSONResponse:
        _require_proxy(_peer_identity(request, auth))
        return await direct_join(request)

    async def direct_join(request: Request) -> JSONResponse:
        # anonymous on purpose (nodes started with --auth-server): the token is the credential
        body = await read_body(request, Join)
        result = await auth.join(
            body.token,
            role=body.role,
            roles=body.roles,
            host_id=body.host_id,
            hostname=body.hostname,
            addresses=body.addresses or (),
            ssh_public_key=body.ssh_public_key,
            tls_public_key_pem=body.tls_public_key,
        )
        return JSONResponse(join_result_to_json(result))

    async def renew_host(request: Request) -> JSONResponse:
        # the host's current certificate is the credential: no token a second time
        certificate = _peer_certificate(request, auth)
        body = await read_body(request, RenewHost)
        result = await auth.renew_host_identity(
            certificate,
            hostname=body.hostname,
            addresses=body.addresses or (),
            ssh_public_key=body.ssh_public_key,
            tls_public_key_pem=body.tls_public_key,
            roles=body.roles,
            token=body.token,
        )
        return JSONResponse(join_result_to_json(result))

    async def publish(request: Request) -> JSONResponse:
        certificate = _peer_certificate(request, auth)
        identity = auth.verify_client(certificate)
        body = await read_body(request, Publish)
        resource = resource_from_dict(body.resource, auth.registry, source="published resource")
        await auth.publish(
            identity,
            resource,
            datetime.timedelta(seconds=body.ttl_seconds),
            host_names=pki.x509_host_names(certificate),
        )
        return JSONResponse({"published": resource.metadata.name})

    async def publish_relayed(request: Request) -> JSONResponse:
        # a proxy's batch of its tunnel-mode nodes' inventory heartbeats: each entry is
        # checked as the node whose certificate the proxy passes on (verified here)
        proxy = _peer_identity(request, auth)
        body = await read_body(request, PublishRelayed)
        entries = []
        for i, entry in enumerate(structure_each(body.entries, RelayedPublish, "entry"), 1):
            try:
                cert = base64.b64decode(entry.cert, validate=True)
            except (binascii.Error, ValueError):
                raise TetherError(f"entry {i}: cert is not base64") from None
            gone = entry.removed_relayed_ago
            entries.append(
                RelayedEntry(
                    cert,
                    entry.resource,
                    entry.ttl_seconds,
                    removed=gone is not None,
                    relayed_ago=gone or 0.0,
                )
            )
        refused = await auth.inventory.publish_relayed(
            proxy,
            entries,
            verify=auth.verify_client,
            trust_revision=auth.trust_feed.revision,
        )
        return JSONResponse({"refused": refused})

    async def record_event(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, HostEvent)
        await auth.record_host_events(identity, [_host_audit_event(body)])
        return JSONResponse({"recorded": True})

    async def record_events(request: Request) -> JSONResponse:
        # a host's backlog in one call, all or none: each event is checked before any is
        # recorded, so that a retried batch never records its first events twice
        identity = _peer_identity(request, auth)
        body = await read_body(request, AuditBatch)
        events = structure_each(body.events, HostEvent, "audit event")
        await auth.record_host_events(identity, [_host_audit_event(e) for e in events])
        return JSONResponse({"recorded": len(events)})

    async def sign_certificate(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, SignCertificate)
        if body.usage not in ("server", "client"):
            raise TetherError("request field 'usage' must be server or client")
        signed = await auth.sign_certificate(
            identity,
            body.ca_type,
            body.public_key,
            body.common_name,
            usage="server" if body.usage == "server" else "client",
            ttl=datetime.timedelta(seconds=body.ttl_seconds),
            dns_names=body.dns_names or (),
            ip_addresses=body.ip_addresses or (),
        )
        return JSONResponse({"certificate": signed.certificate, "ca_certs": list(signed.ca_certs)})

    async def trust(request: Request) -> Response:
        # a hanging GET (a watch): see TrustFeed.answer
        identity = _peer_identity(request, auth)
        known = request.query_params.get("known") or None
        wait = query_seconds(request.query_params.get("wait"), "wait")
        body = await auth.trust_feed.answer(identity, known, wait)
        return Response(body, media_type="application/json")

    async def record_heartbeats(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        body = await read_body(request, Heartbeats)
        await auth.record_tunnel_heartbeats(identity, body.heartbeats)
        return JSONResponse({"recorded": len(body.heartbeats)})

    async def validate_trusted_cluster(request: Request) -> JSONResponse:
        # a leaf's handshake, passed on by the proxy; the invitation token is the credential
        _require_proxy(_peer_identity(request, auth))
        root = await validate_leaf(auth.handshake_party, await read_json_object(request))
        return JSONResponse({"root": root.to_json()})

    async def connectors(request: Request) -> JSONResponse:
        identity = _peer_identity(request, auth)
        if identity.kind not in ("proxy", "admin", "user"):
            raise AccessDenied(f"{identity.kind} {identity.username!r} may not list connectors")
        return JSONResponse({"connectors": await auth.list_connectors()})

    async def sso_begin(request: Request) -> JSONResponse:
        # the user is anonymous until the provider vouches; the proxy asks on their behalf
        _require_proxy(_peer_identity(request, auth))
        body = await read_body(request, BeginSSO)
        request_id, url = await auth.begin_sso(
            body.connector,
            client_redirect_url=body.client_redirect_url,
            client_secret_hash=body.client_secret_hash,
            ssh_public_key=body.ssh_public_key,
            tls_public_key_pem=body.tls_public_key,
            ttl=_seconds(body.ttl_seconds),
        )
        return JSONResponse({"request_id": request_id, "auth_url": url})

    async def sso_complete(request: Request) -> JSONResponse:
        _require_proxy(_peer_identity(request, auth))
        body = await read_body(request, CompleteSSO)
        completed = await auth.complete_sso(body.params or {})
        if isinstance(completed, str):  # refused: the client collects the reason
            return JSONResponse({"redirect": completed})
        return JSONResponse({"approval": completed.to_json()})

    async def sso_collect(request: Request) -> JSONResponse:
        _require_proxy(_peer_identity(request, auth))
        body = await read_body(request, CollectSSO)
        return JSONResponse(
            await auth.collect_sso(body.request_id, body.client_secret, body.code or "")
        )

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"cluster_name": auth.cluster_name, "server_version": __version__})

    readiness = Readiness(auth.backend)

    async def healthz(request: Request) -> JSONResponse:
        # the process serves HTTP: nothing else is asked (a load balancer's liveness probe)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        # anonymous (balancers have no client certificate), not audited, not rate limited:
        # Readiness reads the store at most once a second however often it is asked
        verdict = await readiness.check()
        if verdict.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": verdict.reason}, status_code=503)

    async def cluster_ca(request: Request) -> JSONResponse:
        # unauthenticated on purpose, as the proxy's: a joining host checks it against its pin
        cas = auth.trusted_tls_cas()
        return JSONResponse(
            {
                "cluster_name": auth.cluster_name,
                "tls_ca_certs": [pki.cert_to_pem(c).decode() for c in cas],
                "ca_pins": [pki.ca_pin(c) for c in cas],
            }
        )

    async def signup(request: Request) -> JSONResponse:
        _require_proxy(_peer_identity(request, auth))
        body = await read_body(request, Signup)
        user = await auth.complete_signup(body.token, body.password)
        return JSONResponse({"user": user})

    app = Starlette(
        routes=[
            Route("/v1/cluster", cluster),
            Route("/v1/whoami", whoami),
            Route("/v1/resources/{kind}", get_resources, methods=["GET"]),
            Route("/v1/resources", create_resources, methods=["POST"]),
            Route("/v1/resources/{kind}/{name:path}", delete_resource, methods=["DELETE"]),
            Route("/v1/users", add_user, methods=["POST"]),
            Route("/v1/users/{name}", update_user, methods=["PUT"]),
            Route("/v1/tokens", add_token, methods=["POST"]),
            Route("/v1/tokens", list_tokens, methods=["GET"]),
            Route("/v1/tokens/{token}", delete_token, methods=["DELETE"]),
            Route("/v1/audit", audit_search, methods=["GET"]),
            Route("/v1/audit", record_event, methods=["POST"]),
            Route("/v1/audit/batch", record_events, methods=["POST"]),
            Route("/v1/certificates", sign_certificate, methods=["POST"]),
            Route("/v1/presence", publish, methods=["PUT"]),
            Route("/v1/presence/relayed", publish_relayed, methods=["PUT"]),
            Route("/v1/hosts/renew", renew_host, methods=["POST"]),
            Route("/v1/tunnels/heartbeats", record_heartbeats, methods=["PUT"]),
            Route("/v1/trust", trust, methods=["GET"]),
            Route("/v1/login/password", login_password, methods=["POST"]),
            Route("/v1/connectors", connectors, methods=["GET"]),
            Route("/v1/sso/begin", sso_begin, methods=["POST"]),
            Route("/v1/sso/complete", sso_complete, methods=["POST"]),
            Route("/v1/sso/collect", sso_collect, methods=["POST"]),
            Route("/v1/signup", signup, methods=["POST"]),
            Route("/v1/join", join, methods=["POST"]),
            Route("/v1/trustedclusters/validate", validate_trusted_cluster, methods=["POST"]),
            Route("/webapi/ping", ping),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/webapi/cluster-ca", cluster_ca),
            Route(
                "/webapi/join",
                rate_limited(
                    limiter,
                    direct_join,
                    who="the auth service",
                    setting="auth_service.rate_limit",
                ),
                methods=["POST"],
            ),
        ],
        exception_handlers=exception_handlers(),
    )
    return BodyLimit(
        app,
        max_body=auth.config.auth_service.max_request_body,
        setting="auth_service.max_request_body",
        refused=audit_refused_bodies(auth.audit_event, limiter, "auth.request.refused"),
        anonymous_only=True,
    )
