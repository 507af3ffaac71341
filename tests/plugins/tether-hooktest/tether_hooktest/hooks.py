"""A plugin that implements every Tether hook and records each call.

Installed into the test environment through the ``tether`` entry-point group, exactly like a
third-party plugin, so tests prove that the kernel calls each hook in a real daemon. It does
nothing unless ``TETHER_HOOKTEST_LOG`` names a file, so other tests are unaffected.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import os
import pathlib
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import attrs
import click
import httpx
import trio

from tether.api import (
    AccessDenied,
    AgentContext,
    AgentStream,
    AuditEvent,
    AuditQuery,
    Backend,
    BackendType,
    CertAuthorityType,
    ClaimMapping,
    ClaimRules,
    Config,
    ConfigSection,
    ConnectorContext,
    ExternalIdentity,
    FieldError,
    LoginIdentity,
    Profile,
    ProtocolHandler,
    ProxyConnection,
    Resource,
    ResourceKind,
    RoleField,
    RoleMapRule,
    Service,
    ServiceContext,
    ServiceRole,
    SSORequest,
    Target,
    TargetKind,
    TetherError,
    TokenType,
    hookimpl,
    open_sqlite,
    positive,
    shared_group,
)
from tether.testing.http import serve_http
from tether_hooktest import LOG_ENV, _active


def record(hook: str, **fields: Any) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"hook": hook, **fields}, default=str) + "\n")


@attrs.frozen
class WidgetSpec:
    """``spec`` of the test kind ``hooktest_widget``."""

    size: int = 1
    colour: str = "blue"


WIDGET = ResourceKind(
    name="hooktest_widget",
    aliases=("widgets",),
    versions=("v1",),
    spec_type=WidgetSpec,
    storage_prefix="/hooktest/widgets/",
)


@attrs.frozen
class HooktestSection:
    """``hooktest_service:``: a plugin's own top-level section, read back typed."""

    enabled: bool = False
    greeting: str = "hello"
    period: datetime.timedelta = attrs.field(
        default=datetime.timedelta(minutes=1), validator=positive
    )
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.greeting == "goodbye":
            raise FieldError(("greeting",), "a greeting says hello")


SECTION = ConfigSection(
    name="hooktest_service",
    type=HooktestSection,
    template="hooktest_service:\n  enabled: false\n  # how the plugin says hello\n"
    "  greeting: hello\n  period: 1m\n  labels: {}\n",
)
#: ``tetherd start --roles=hooktest`` turns hooktest_service on
ROLE = ServiceRole("hooktest", "hooktest_service", "hooktest's own service")


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    return [SECTION] if _active() else []


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    return [ROLE] if _active() else []


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


@attrs.frozen
class GadgetRule:
    """One item of ``hooktest_rules``: a gadget and how many of it."""

    gadget: str
    count: int = attrs.field(default=1, validator=_positive)


#: role conditions' ``hooktest_gadgets`` (may be ``{{internal.gadgets}}``),
#: ``hooktest_labels`` and ``hooktest_rules``, read with RoleSet.traits_values,
#: RoleSet.can_access and RoleSet.conditions_matching
ROLE_FIELDS = [
    RoleField("hooktest_gadgets", "strings", "gadgets the role may use"),
    RoleField("hooktest_labels", "labels", "gadgets the role may see"),
    RoleField("hooktest_rules", "records", "gadget rules", record=GadgetRule),
]


@hookimpl
def tether_role_fields() -> list[RoleField]:
    return list(ROLE_FIELDS) if _active() else []


#: ``tetherctl tokens add --type=hooktest``: a token that joins as role ``Hooktest``, a host
#: role: a host serving hooktest's gadgets (``--roles=hooktest``) joins with it
TOKEN_TYPE = TokenType("hooktest", "Hooktest", "a hooktest gadget joins", host_role=True)


@hookimpl
def tether_token_types() -> list[TokenType]:
    return [TOKEN_TYPE] if _active() else []


#: ``tetherctl auth sign --format=hooktest``: a gadget server's certificate signed by the
#: ``hooktest`` CA, with the ``hooktest_client`` CA (which signs its clients) in PREFIX.cas
SERVER_CA = CertAuthorityType(
    name="hooktest",
    description="signs hooktest gadget servers' certificates",
    usages=("server",),
    max_ttl=datetime.timedelta(days=365),
    sign_format="hooktest",
    format_trusts=("hooktest_client",),
)
#: client certificates for hosts with the ``Hooktest`` role (what the hooktest token joins as)
CLIENT_CA = CertAuthorityType(
    name="hooktest_client",
    description="signs the hooktest service's client certificates",
    usages=("client",),
    max_ttl=datetime.timedelta(hours=1),
    host_roles=("Hooktest",),
)


@hookimpl
def tether_cert_authorities() -> list[CertAuthorityType]:
    return [SERVER_CA, CLIENT_CA] if _active() else []


@hookimpl
def tether_configure(config: Config) -> None:
    record("tether_configure", cluster=config.cluster_name)
    if _active():
        section = config.section(HooktestSection)
        record(
            "tether_config_sections.read",
            enabled=section.enabled,
            greeting=section.greeting,
            labels=dict(section.labels),
        )


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    if not _active():
        return []
    record("tether_resource_kinds")
    return [WIDGET, SSO, WHOAMI, GADGET]


@contextlib.asynccontextmanager
async def _open_hooktest(url: str) -> AsyncIterator[Backend]:
    # hooktest:///path -> the SQLite backend at /path: enough to prove scheme dispatch
    record("tether_backends.open", url=url)
    async with open_sqlite("sqlite://" + url.removeprefix("hooktest://")) as backend:
        yield backend


@hookimpl
def tether_backends() -> list[BackendType]:
    if not _active():
        return []
    record("tether_backends")
    return [BackendType(scheme="hooktest", open=_open_hooktest)]


class HooktestConnector:
    """Password connector ``hooktest``: any user whose password is ``hooktest-<user>``."""

    name = "hooktest"

    async def authenticate_password(
        self, ctx: ConnectorContext, username: str, password: str
    ) -> LoginIdentity:
        record("tether_identity_connectors.authenticate", user=username)
        if password != f"hooktest-{username}":
            raise AccessDenied("invalid user name or password")
        return LoginIdentity(username=username, roles=("access",), traits={"logins": (username,)})


# --- a single sign-on connector, and the stand-in provider it talks to --------------------
#
# The kernel's half of single sign-on (state, nonce, PKCE, expiry, one-time use, the client's
# redirect) is tested with this connector. Its provider is a stand-in run by the tests: an
# authorization-code flow with PKCE in a few lines, not a real OpenID provider (the OIDC,
# SAML and GitHub plugins are tested against real ones).


@attrs.frozen
class SSOSpec:
    """``spec`` of the test kind ``hooktest_sso``."""

    provider_url: str
    client_id: str
    client_secret: str
    redirect_url: str
    claims_to_roles: tuple[ClaimMapping, ...] = ()


#: the rules are ClaimMapping themselves; the kernel validates and applies them
CLAIMS_TO_ROLES = ClaimRules("claims_to_roles")

SSO = ResourceKind(
    name="hooktest_sso",
    versions=("v1",),
    spec_type=SSOSpec,
    storage_prefix="/hooktest/sso/",
    secret_paths=(("spec", "client_secret"),),
    validate=CLAIMS_TO_ROLES.validating(),
)


class HooktestSSOConnector:
    """Redirect connector ``hooktest_sso``: the stand-in provider's code flow with PKCE."""

    name = "hooktest_sso"
    claim_rules = CLAIMS_TO_ROLES

    async def login_url(self, ctx: ConnectorContext, connector: Any, request: SSORequest) -> str:
        record("tether_identity_connectors.login_url", connector=connector.metadata.name)
        spec: SSOSpec = connector.spec
        query = {
            "client_id": spec.client_id,
            "redirect_uri": spec.redirect_url,
            "state": request.state,
            "nonce": request.nonce,
            "code_challenge": request.pkce_challenge,
            "code_challenge_method": "S256",
        }
        return f"{spec.provider_url}/authorize?{urllib.parse.urlencode(query)}"

    async def complete(
        self, ctx: ConnectorContext, connector: Any, request: SSORequest, params: Mapping[str, str]
    ) -> ExternalIdentity:
        record("tether_identity_connectors.complete", connector=connector.metadata.name)
        spec: SSOSpec = connector.spec
        if "error" in params:
            raise AccessDenied(f"the provider refused the login: {params['error']}")
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(
                f"{spec.provider_url}/token",
                data={
                    "code": params.get("code", ""),
                    "code_verifier": request.pkce_verifier,
                    "client_id": spec.client_id,
                    "client_secret": spec.client_secret,
                },
            )
        if answer.status_code != 200:
            raise AccessDenied(f"the provider refused the code: {answer.text}")
        body = answer.json()
        return ExternalIdentity(
            username=body["username"],
            subject=body["subject"],
            claims={k: tuple(v) for k, v in body["claims"].items()},
            nonce=body["nonce"],
        )


@hookimpl
def tether_identity_connectors() -> list[HooktestConnector | HooktestSSOConnector]:
    if not _active():
        return []
    record("tether_identity_connectors")
    return [HooktestConnector(), HooktestSSOConnector()]


@attrs.define
class StandInProvider:
    """An OAuth 2 authorization server on 127.0.0.1, for tests: who logs in next is set by
    the test (``next_user``), and knobs make it misbehave the way tests need."""

    client_id: str = "tether"
    client_secret: str = attrs.field(factory=lambda: secrets.token_urlsafe(16))
    next_user: tuple[str, dict[str, list[str]]] = ("alice", {})
    #: answer with another nonce than the login's
    wrong_nonce: bool = False
    #: answer the token request with an empty object (the connector then fails)
    empty_answer: bool = False
    _codes: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    url: str = ""
    _serving: contextlib.ExitStack = attrs.field(factory=contextlib.ExitStack)

    def __enter__(self) -> StandInProvider:
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, headers: Mapping[str, str] = {}) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path != "/authorize" or query.get("client_id") != provider.client_id:
                    self._reply(400, {"error": "bad authorize request"})
                    return
                code = secrets.token_urlsafe(16)
                user, claims = provider.next_user
                provider._codes[code] = {"query": query, "user": user, "claims": claims}
                back = {"code": code, "state": query["state"]}
                location = f"{query['redirect_uri']}?{urllib.parse.urlencode(back)}"
                self._reply(302, {}, {"location": location})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                grant = provider._codes.pop(form.get("code", ""), None)  # one-time codes
                if self.path != "/token" or grant is None:
                    self._reply(400, {"error": "invalid_grant"})
                    return
                if (form.get("client_id"), form.get("client_secret")) != (
                    provider.client_id,
                    provider.client_secret,
                ):
                    self._reply(401, {"error": "invalid_client"})
                    return
                verifier = form.get("code_verifier", "").encode()
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest())
                if challenge.rstrip(b"=").decode() != grant["query"]["code_challenge"]:
                    self._reply(400, {"error": "invalid_grant", "detail": "PKCE check failed"})
                    return
                if provider.empty_answer:
                    self._reply(200, {})
                    return
                nonce = "not-the-nonce" if provider.wrong_nonce else grant["query"]["nonce"]
                self._reply(
                    200,
                    {
                        "username": grant["user"],
                        "subject": f"standin|{grant['user']}",
                        "claims": grant["claims"],
                        "nonce": nonce,
                    },
                )

        self.url = self._serving.enter_context(serve_http(Handler))
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.close()


@hookimpl
def tether_client_logged_in(profile: Profile) -> None:
    record("tether_client_logged_in", proxy=profile.proxy, cluster=profile.identity().cluster)


@hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    if not _active():
        return

    @cli.command("hooktest")
    def hooktest() -> None:
        """Prove that plugins can add commands."""
        click.echo(f"hooktest command in {program}")

    if program == "tether":  # beside the SSH plugin's `proxy ssh`, in the kernel's group

        @shared_group(cli, "proxy").command("hooktest")
        def proxy_hooktest() -> None:
            """Prove that two plugins can add to a group the kernel owns."""
            click.echo("hooktest command in tether proxy")

    if program == "tetherctl":  # beside the kernel's `auth export` and hooktest-sibling's

        @shared_group(cli, "auth").command("hooktest")
        def auth_hooktest() -> None:
            """Prove that two plugins can add to a group the kernel owns."""
            click.echo("hooktest command in tetherctl auth")


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    if not _active():
        return {}
    record("tether_cli_lazy_commands", program=program)
    declared = {"hooktest-lazy": "tether_hooktest.hooks:lazy_hooktest"}
    if program == "tether":  # beside the SSH plugin's `proxy ssh`, declared the same way
        declared["proxy hooktest-lazy"] = "tether_hooktest.hooks:lazy_hooktest"
    return declared


@click.command("hooktest-lazy")
def lazy_hooktest() -> None:
    """Prove that a plugin's declared command is imported when named."""
    click.echo("declared hooktest command")


@hookimpl
def tether_services(ctx: ServiceContext) -> list[Service]:
    if not _active():
        return []
    record("tether_services", cluster=ctx.config.cluster_name)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        record("service.started")
        task_status.started()
        await trio.sleep_forever()

    return [Service(name="hooktest", run=run)]


#: The ALPN id of hooktest's protocol: it greets the caller by the name in their certificate.
GREETER_ALPN = "hooktest-greeter/1"


async def _greet(conn: ProxyConnection) -> None:
    try:
        who = conn.identity().username
    except TetherError as exc:
        await conn.stream.send_all(f"refused: {exc.message}\n".encode())
        return
    record("tether_protocols.serve", user=who, alpn=conn.alpn)
    await conn.stream.send_all(f"hello {who} from {conn.proxy.cluster_name}\n".encode())


#: The ALPN id of a protocol whose handler fails, as a buggy plugin's would.
FAILING_ALPN = "hooktest-failing/1"


async def _fail(conn: ProxyConnection) -> None:
    raise RuntimeError("hooktest's failing protocol fails on purpose")


#: The name of hooktest's node protocol: the tunnel target a proxy opens at the node.
AGENT_PROTOCOL = "hooktest-whoami"
#: Its ALPN id on the proxy's public port; the kernel routes it to the node's agent.
WHOAMI_ALPN = "hooktest-whoami/1"
#: Its route names' prefix, for clients that set only a server name; it gives no ``refuse``
#: (the kernel closes what it refuses) and holds them to HTTP/1.1, as a Kubernetes plugin would.
WHOAMI_PREFIX = "whoami"
WHOAMI_SERVER_NAME_ALPN = ("http/1.1",)
#: A protocol of the same target kind that no node serves: the agent refuses its streams.
ABSENT_PROTOCOL = "hooktest-absent"
ABSENT_ALPN = "hooktest-absent/1"


@attrs.frozen
class WhoAmISpec:
    """``spec`` of ``hooktest_whoami``, the inventory entry of a node serving hooktest."""

    hostname: str = ""


WHOAMI = ResourceKind(
    name="hooktest_whoami",
    versions=("v1",),
    spec_type=WhoAmISpec,
    storage_prefix="/hooktest/whoami/",
    published_by="node",
    readable_by=("proxy",),
    access_labels="node_labels",
)


def _describe_whoami(resource: Resource) -> Target:
    """A node serving hooktest, reached through its own tunnel (its agent is its host id)."""
    return Target(
        kind=WHOAMI.name,
        id=resource.metadata.name,
        name=resource.spec.hostname,
        labels=dict(resource.metadata.labels),
    )


# hints name `tether hooktest`: the test plugin's one command stands in for a listing
WHOAMI_TARGET = TargetKind(WHOAMI, _describe_whoami, list_command="tether hooktest")


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    if not _active():
        return []
    record("tether_protocols")
    return [
        ProtocolHandler(name="hooktest-greeter", alpn=(GREETER_ALPN,), serve=_greet),
        ProtocolHandler(name="hooktest-failing", alpn=(FAILING_ALPN,), serve=_fail),
        ProtocolHandler(
            name=AGENT_PROTOCOL,
            alpn=(WHOAMI_ALPN,),
            target_kind=WHOAMI_TARGET,
            server_name_prefix=WHOAMI_PREFIX,
            server_name_alpn=WHOAMI_SERVER_NAME_ALPN,
        ),
        ProtocolHandler(name=ABSENT_PROTOCOL, alpn=(ABSENT_ALPN,), target_kind=WHOAMI_TARGET),
        ProtocolHandler(name=GADGET_PROTOCOL, alpn=(GADGET_ALPN,), target_kind=GADGET_TARGET),
    ]


#: Set (with the log) in a node's environment to serve hooktest's node protocol there.
AGENT_ENV = "TETHER_HOOKTEST_AGENT"


class WhoAmI:
    """A node protocol that tells the caller who the agent says they are, in one line."""

    name = AGENT_PROTOCOL
    host_role = "Node"
    needs_identity = True

    def __init__(self) -> None:
        self.agent: AgentContext | None = None

    def addresses(self) -> list[str]:
        return []

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.agent = agent
        record("tether_agent_protocols.run", host_id=agent.host_id, tunnel=agent.tunnel_mode)
        task_status.started()
        await trio.sleep_forever()

    def resources(self) -> list[Resource]:
        assert self.agent is not None  # run() started first
        return [WHOAMI.new(self.agent.host_id, WhoAmISpec(hostname=self.agent.config.nodename))]

    async def serve(self, stream: AgentStream) -> None:
        who = stream.identity
        assert who is not None and stream.roles is not None  # the kernel forwards the user's
        roles = ",".join(stream.roles.names)
        record("tether_agent_protocols.serve", user=who.username, roles=roles)
        line = f"{who.username}@{who.cluster} as {roles} for {stream.target} from {stream.client}"
        await stream.stream.send_all(f"{line}\n".encode())


# --- a host role of hooktest's own: a host serving several gadgets, each named freely ------
#
# A host started with ``--roles=hooktest`` (and GADGETS_ENV set) runs the agent protocol
# ``hooktest-gadgets``, whose host role is ``Hooktest``: it joins with a ``hooktest`` token
# and publishes one ``hooktest_gadget`` entry per gadget, named by the gadget, with its host
# id in the spec, as a database service publishes one entry per database.

#: The name of the gadgets protocol (the tunnel target) and its ALPN id on the proxy.
GADGET_PROTOCOL = "hooktest-gadgets"
GADGET_ALPN = "hooktest-gadgets/1"
#: Set (with the log) in a host's environment to the gadgets it serves, as JSON:
#: ``{"alpha": {"colour": "red"}, ...}`` (name -> labels).
GADGETS_ENV = "TETHER_HOOKTEST_GADGETS"


@attrs.frozen
class GadgetSpec:
    """``spec`` of ``hooktest_gadget``: the host serving the gadget."""

    host_id: str = ""
    hostname: str = ""


def _gadget_host(resource: Resource) -> str:
    spec: GadgetSpec = resource.spec
    return spec.host_id


GADGET = ResourceKind(
    name="hooktest_gadget",
    aliases=("gadgets",),
    versions=("v1",),
    spec_type=GadgetSpec,
    storage_prefix="/hooktest/gadgets/",
    published_by="node",
    publisher_role=TOKEN_TYPE.role,
    publisher=_gadget_host,
    readable_by=("proxy",),
    access_labels="node_labels",
)


def _describe_gadget(resource: Resource) -> Target:
    """A gadget, named by its entry, reached through the tunnel of the host serving it."""
    spec: GadgetSpec = resource.spec
    return Target(
        kind=GADGET.name,
        id=spec.host_id,
        name=resource.metadata.name,
        labels=dict(resource.metadata.labels),
    )


GADGET_TARGET = TargetKind(GADGET, _describe_gadget, list_command="tether hooktest")


class Gadgets:
    """The gadgets this host serves: one stream answers for the gadget routing resolved."""

    name = GADGET_PROTOCOL
    host_role = TOKEN_TYPE.role
    needs_identity = True

    def __init__(self, gadgets: Mapping[str, Mapping[str, str]]) -> None:
        self.gadgets = {name: dict(labels) for name, labels in gadgets.items()}
        self.agent: AgentContext | None = None

    def addresses(self) -> list[str]:
        return []

    async def run(
        self, agent: AgentContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.agent = agent
        task_status.started()
        await trio.sleep_forever()

    def resources(self) -> list[Resource]:
        agent = self.agent
        assert agent is not None  # run() started first
        spec = GadgetSpec(host_id=agent.host_id, hostname=agent.config.nodename)
        return [GADGET.new(name, spec, labels=labels) for name, labels in self.gadgets.items()]

    async def serve(self, stream: AgentStream) -> None:
        agent = self.agent
        assert agent is not None and stream.identity is not None
        record("gadgets.serve", resolved=stream.resolved, target=stream.target)
        if stream.resolved not in self.gadgets:  # routing chose; this host says what it serves
            line = f"refused: this host serves no gadget {stream.resolved!r}"
        else:
            line = (
                f"{stream.resolved} on {agent.config.nodename} ({agent.host_id}) for "
                f"{stream.identity.username}, who asked for {stream.target}"
            )
        await stream.stream.send_all(f"{line}\n".encode())


@hookimpl
def tether_agent_protocols(config: Config) -> list[WhoAmI | Gadgets]:
    if not _active():
        return []
    protocols: list[WhoAmI | Gadgets] = []
    if os.environ.get(AGENT_ENV):
        record("tether_agent_protocols")
        protocols.append(WhoAmI())
    gadgets = os.environ.get(GADGETS_ENV)
    if gadgets and config.section(HooktestSection).enabled:
        protocols.append(Gadgets(json.loads(gadgets)))
    return protocols


@hookimpl
def tether_audit_events(events: Sequence[AuditEvent]) -> None:
    for event in events:
        record("tether_audit_events", type=event.type, user=event.user)


@hookimpl
def tether_audit_search(query: AuditQuery) -> None:
    record("tether_audit_search", type=query.type)
    return None  # let the builtin JSON-lines sink answer


#: Role-map patterns hooktest reads: ``hooktest:<role>`` maps exactly that root role.
MAP_PREFIX = "hooktest:"


@hookimpl
def tether_map_role(rule: RoleMapRule, remote_role: str, cluster: str) -> list[str] | None:
    if not _active():
        return None
    record("tether_map_role", remote=rule.remote, role=remote_role, cluster=cluster)
    if not rule.remote.startswith(MAP_PREFIX):
        return None  # not hooktest's syntax: let the builtin role-maps answer
    return list(rule.local) if remote_role == rule.remote.removeprefix(MAP_PREFIX) else []


def log_path() -> pathlib.Path | None:
    path = os.environ.get(LOG_ENV)
    return pathlib.Path(path) if path else None
