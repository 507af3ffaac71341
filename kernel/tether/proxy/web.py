"""The proxy's web API on the public port: ping, login, sign-up, and the door to auth.

``/webapi/ping`` has the shape Teleport's has, so the guide's ``jq`` lines work unchanged.
``/v1/...`` requests from logged-in users are forwarded to the auth API with the user's
certificate attached; auth verifies it (see :mod:`tether.auth.http_api`). One is answered
here: the watch of the trust (``GET /v1/trust``) by nodes in tunnel mode, from the copy auth
pushes to this proxy, so that however many nodes watch through it, auth serves one watch.
"""

from __future__ import annotations

import base64
import functools
import html
import logging
import urllib.parse
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import tether
from tether import pki
from tether.asgi import PEER_CERT_STATE, BodyLimit, EventRecorder, audit_refused_bodies
from tether.auth.http_client import FORWARDED_CERT_HEADER, AuthClient
from tether.auth.sso_flows import Approval, check_client_redirect
from tether.errors import AccessDenied, TetherError
from tether.proxy.metrics import metrics_route
from tether.proxy.sso_page import approval_page
from tether.ratelimit import RateLimiter, rate_limited
from tether.resources import KindRegistry
from tether.trust.cache import TrustCache
from tether.tunnel.server import TunnelServer
from tether.wire import (
    error_status,
    exception_handlers,
    number_field,
    optional_string_field,
    query_seconds,
    read_json_object,
    string_field,
)

__all__ = ["ProxyWebInfo", "build_web_app"]

log = logging.getLogger(__name__)


@attrs.frozen
class ProxyWebInfo:
    """What the proxy tells clients about itself."""

    cluster_name: str
    public_addr: str
    listen_addr: str
    ca_pems: tuple[str, ...]


def ping_json(info: ProxyWebInfo) -> dict[str, Any]:
    return {
        "cluster_name": info.cluster_name,
        "server_version": tether.__version__,
        "min_client_version": tether.__version__,
        "auth": {"type": "local", "second_factor": "off", "local": {"name": ""}},
        "proxy": {
            "tls_routing_enabled": True,
            "ssh": {
                "listen_addr": info.listen_addr,
                "tunnel_listen_addr": info.listen_addr,
                "public_addr": info.public_addr,
                "ssh_tunnel_public_addr": info.public_addr,
            },
        },
    }


def build_web_app(
    info: ProxyWebInfo,
    auth: AuthClient,
    *,
    limiter: RateLimiter,
    max_body: int,
    record_event: EventRecorder,
    tunnels: TunnelServer | None = None,
    trust: TrustCache | None = None,
    kinds: KindRegistry | None = None,
) -> BodyLimit:
    """The ASGI app served for ALPN ``http/1.1`` and ``h2`` on the proxy's port.

    :param limiter: holds each client address to its rate on the endpoints that take no
        certificate and cost the cluster work or storage (login, sign-up, SSO login and
        collect, join, trusted cluster validation).
    :param max_body: the largest request body read (``proxy_service.max_request_body``); a
        larger one is refused with 413 before it is read, and audited.
    :param record_event: records the proxy's audit events (its
        :class:`~tether.proxy.audit.ProxyAudit`): the refused request bodies.
    :param tunnels: the proxy's tunnel server, whose tunnels ``/metrics`` reports.
    :param trust: the proxy's copy of the cluster's trust, which answers hosts' watches of
        it; without it, they are forwarded to auth like any ``/v1`` request.
    :param kinds: the kinds of this process's plugins, to read the roles of a scraper.
    """

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse(ping_json(info))

    async def cluster_ca(request: Request) -> JSONResponse:
        # Unauthenticated on purpose: a client that has not trusted the proxy yet fetches
        # the CA here and checks it against the pin it was given out of band.
        pins = [pki.ca_pin(pki.load_cert(pem)) for pem in info.ca_pems]
        return JSONResponse(
            {"cluster_name": info.cluster_name, "tls_ca_certs": list(info.ca_pems), "ca_pins": pins}
        )

    async def login(request: Request) -> JSONResponse:
        data = await read_json_object(request)
        result = await auth.login_password(
            string_field(data, "user"),
            string_field(data, "password"),
            ssh_public_key=string_field(data, "ssh_public_key"),
            tls_public_key=string_field(data, "tls_public_key"),
            ttl_seconds=number_field(data, "ttl_seconds"),
            connector=optional_string_field(data, "connector") or "local",
        )
        return JSONResponse(result)

    async def join(request: Request) -> JSONResponse:
        # anonymous on purpose: the join token is the credential, auth checks it
        return JSONResponse(await auth.join(await read_json_object(request)))

    async def validate_trusted_cluster(request: Request) -> JSONResponse:
        # anonymous on purpose: a leaf proves itself with the invitation token, auth checks it
        body = await auth.call(
            "POST", "/v1/trustedclusters/validate", json=await read_json_object(request)
        )
        return JSONResponse(body)

    async def signup(request: Request) -> JSONResponse:
        data = await read_json_object(request)
        user = await auth.signup(string_field(data, "token"), string_field(data, "password"))
        return JSONResponse({"user": user})

    async def connectors(request: Request) -> JSONResponse:
        # anonymous on purpose: `tether login --auth=NAME` chooses its flow by the type
        return JSONResponse(await auth.call("GET", "/v1/connectors"))

    async def sso_login(request: Request) -> JSONResponse:
        # anonymous on purpose: the identity provider will say who the user is
        body = await auth.call("POST", "/v1/sso/begin", json=await read_json_object(request))
        return JSONResponse(body)

    async def sso_callback(request: Request) -> Response:
        # the browser, sent back by the identity provider: GET with a query (OAuth, OIDC) or
        # a POSTed form (SAML); what it says goes to auth, and the browser, once the user
        # approved what auth found, on to the client with the login's one-time code
        params = dict(request.query_params)
        if request.method == "POST":
            form = urllib.parse.parse_qsl((await request.body()).decode("utf-8", "replace"))
            params.update(form)
        try:
            body = await auth.call("POST", "/v1/sso/complete", json={"params": params})
        except TetherError as exc:
            page = f"<h1>Login failed</h1><p>{html.escape(exc.message)}</p>"
            if exc.hint:
                page += f"<p>{html.escape(exc.hint)}</p>"
            return HTMLResponse(page, status_code=error_status(exc))
        if "approval" in body:
            return approval_page(Approval.from_json(body["approval"]))
        # refused: nothing to approve, the client collects the reason
        return RedirectResponse(check_client_redirect(str(body["redirect"])), status_code=302)

    async def sso_collect(request: Request) -> JSONResponse:
        # the client proves it started the login with the secret only it holds, and that the
        # browser which approved it handed it the one-time code on its loopback listener
        body = await auth.call("POST", "/v1/sso/collect", json=await read_json_object(request))
        return JSONResponse(body)

    async def forward(request: Request) -> Response:
        der = request.scope.get("state", {}).get(PEER_CERT_STATE)
        if not der:
            raise AccessDenied("a client certificate is required", hint="run `tether login` first")
        headers = {FORWARDED_CERT_HEADER: base64.b64encode(der).decode()}
        content_type = request.headers.get("content-type")
        if content_type:
            headers["content-type"] = content_type
        body = await request.body()
        path = request.url.path
        answer = await auth.call_body(
            request.method,
            path,
            params=dict(request.query_params),
            content=body,
            headers=headers,
        )
        # passed on as auth sent it: decoding and encoding a listing of a thousand leaves
        # again cost the proxy more than the listing itself
        return Response(answer, media_type="application/json")

    async def trust_watch(request: Request) -> Response:
        # a hanging GET, answered as auth answers it (TrustWatches.answer) from this proxy's
        # copy, once it holds one
        if trust is None or not trust.revision:
            return await forward(request)
        der = request.scope.get("state", {}).get(PEER_CERT_STATE)
        if not der:
            raise AccessDenied("a client certificate is required", hint="run `tether login` first")
        identity = trust.verify_client(der)
        known = request.query_params.get("known") or None
        wait = query_seconds(request.query_params.get("wait"), "wait")
        return Response(await trust.answer(identity, known, wait), media_type="application/json")

    limited = functools.partial(
        rate_limited, limiter, who="the proxy", setting="proxy_service.rate_limit"
    )
    app = Starlette(
        routes=[
            Route("/webapi/ping", ping),
            Route("/webapi/cluster-ca", cluster_ca),
            Route("/webapi/login", limited(login), methods=["POST"]),
            Route("/webapi/signup", limited(signup), methods=["POST"]),
            Route("/webapi/connectors", connectors),
            Route("/webapi/sso/login", limited(sso_login), methods=["POST"]),
            Route("/webapi/sso/callback", sso_callback, methods=["GET", "POST"]),
            Route("/webapi/sso/collect", limited(sso_collect), methods=["POST"]),
            Route("/webapi/join", limited(join), methods=["POST"]),
            Route(
                "/webapi/trustedclusters/validate",
                limited(validate_trusted_cluster),
                methods=["POST"],
            ),
            Route("/v1/trust", trust_watch, methods=["GET"]),
            Route("/v1/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE"]),
            metrics_route(info.cluster_name, auth, tunnels, kinds),
        ],
        exception_handlers=exception_handlers(),
    )
    return BodyLimit(
        app,
        max_body=max_body,
        setting="proxy_service.max_request_body",
        refused=audit_refused_bodies(record_event, limiter, "proxy.request.refused"),
    )
