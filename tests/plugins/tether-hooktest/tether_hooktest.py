"""A plugin that implements every Tether hook and records each call.

Installed into the test environment through the ``tether`` entry-point group, exactly like a
third-party plugin, so tests prove that the kernel calls each hook in a real daemon. It does
nothing unless ``TETHER_HOOKTEST_LOG`` names a file, so other tests are unaffected.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import click
import trio

from tether.audit import AuditEvent, AuditQuery
from tether.auth.connectors import LoginIdentity
from tether.backend import Backend, BackendType, open_sqlite
from tether.config import Config
from tether.errors import AccessDenied, TetherError
from tether.hookspecs import hookimpl
from tether.protocols import ProtocolHandler, ProxyConnection
from tether.resources import ResourceKind
from tether.services import Service, ServiceContext
from tether.trust import RoleMapRule

LOG_ENV = "TETHER_HOOKTEST_LOG"


def _active() -> bool:
    return bool(os.environ.get(LOG_ENV))


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


@hookimpl
def tether_configure(config: Config) -> None:
    record("tether_configure", cluster=config.cluster_name)


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    if not _active():
        return []
    record("tether_resource_kinds")
    return [WIDGET]


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

    async def authenticate_password(self, auth: Any, username: str, password: str) -> LoginIdentity:
        record("tether_identity_connectors.authenticate", user=username)
        if password != f"hooktest-{username}":
            raise AccessDenied("invalid user name or password")
        return LoginIdentity(username=username, roles=("access",), traits={"logins": (username,)})


@hookimpl
def tether_identity_connectors() -> list[HooktestConnector]:
    if not _active():
        return []
    record("tether_identity_connectors")
    return [HooktestConnector()]


@hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    if not _active():
        return

    @cli.command("hooktest")
    def hooktest() -> None:
        """Prove that plugins can add commands."""
        click.echo(f"hooktest command in {program}")


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


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    if not _active():
        return []
    record("tether_protocols")
    return [ProtocolHandler(name="hooktest-greeter", alpn=(GREETER_ALPN,), serve=_greet)]


@hookimpl
def tether_audit_event(event: AuditEvent) -> None:
    record("tether_audit_event", type=event.type, user=event.user)


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
