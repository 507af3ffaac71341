"""``tether db`` and ``tether proxy db``: the client side, as tsh's.

``psql`` and ``mysql`` open plaintext connections and upgrade to TLS inside their own
protocol, so they can offer neither ALPN nor a Tether certificate: every way in is a local
listener on 127.0.0.1 (``tether proxy db --tunnel``, which ``tether db connect`` starts for
the client it runs) that opens one front-door stream per connection, presenting the user's
certificate for the program. The database service at the other end reads the database user
and name from the protocol's own startup and checks them against the roles there.

``tether db login NAME`` remembers the database user and name to use with ``NAME`` (tsh
issues a certificate for them; here the user's login certificate already serves every
database, so what is left to remember is the defaults).
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import click
import trio

from tether.api import (
    KindRegistry,
    NotFound,
    Profile,
    TetherError,
    cluster_option,
    completer,
    current_profile,
    emit_table,
    format_option,
    list_targets,
    open_target_stream,
    output,
    profile_ssl_context,
    require_profile,
    resource_from_dict,
    run_async,
    serve_local_listener,
)
from tether_db.kind import DB, DbSpec

__all__ = ["ALPN", "TITLE", "db_group", "proxy_db"]

#: The ALPN id of the database front door on the proxy's one port.
ALPN = "tether-db/1"
#: The protocol's name in messages.
TITLE = "database"

_CLIENTS = {"postgres": ("psql",), "mysql": ("mariadb", "mysql")}
_PROTOCOL_TITLES = {"postgres": "PostgreSQL", "mysql": "MySQL"}


def _cluster(profile: Profile, cluster: str | None) -> str:
    return cluster or profile.cluster


# --- what tether db login remembers ---------------------------------------------------------


@attrs.frozen
class DbLogin:
    """The defaults ``tether db login`` stored for one database of one cluster."""

    cluster: str
    name: str
    db_user: str | None = None
    db_name: str | None = None


def _logins_file(profile: Profile) -> pathlib.Path:
    return profile.directory / "db-logins.json"


def _read_logins(profile: Profile) -> list[DbLogin]:
    try:
        stored = json.loads(_logins_file(profile).read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise TetherError(
            f"{_logins_file(profile)} is not valid JSON: {exc}",
            hint="remove it, then run `tether db login` again",
        ) from None
    return [DbLogin(**entry) for entry in stored]


def _write_logins(profile: Profile, logins: Sequence[DbLogin]) -> None:
    path = _logins_file(profile)
    path.write_text(json.dumps([attrs.asdict(login) for login in logins], indent=2) + "\n")
    os.chmod(path, 0o600)


def _stored(profile: Profile, cluster: str, name: str) -> DbLogin | None:
    for login in _read_logins(profile):
        if (login.cluster, login.name) == (cluster, name):
            return login
    return None


# --- finding a database ---------------------------------------------------------------------


async def _databases(profile: Profile, cluster: str) -> list[tuple[Any, dict[str, Any]]]:
    """The databases of ``cluster`` the user may see: resources and their documents."""
    docs = await list_targets(
        profile.proxy,
        profile_ssl_context(profile, alpn=[ALPN]),
        alpn=ALPN,
        protocol=TITLE,
        cluster=cluster,
    )
    found = [(resource_from_dict(doc, _KINDS, source="db"), doc) for doc in docs]
    return sorted(found, key=lambda pair: pair[0].metadata.name)


_KINDS = KindRegistry([DB], plugin="db")


async def _database(profile: Profile, cluster: str, name: str) -> Any:
    """The database called ``name``, refused as the proxy would refuse it."""
    for resource, _ in await _databases(profile, cluster):
        if resource.metadata.name == name:
            return resource
    listing = "tether db ls" + _cluster_flag(profile, cluster)
    raise NotFound(
        f"database {name!r} not found in cluster {cluster!r}",
        hint=f"run `{listing}` to see the databases you can reach",
    )


async def _names(ctx: click.Context, incomplete: str) -> list[str]:
    profile = current_profile()
    if profile is None:
        return []
    cluster = _cluster(profile, ctx.params.get("cluster"))
    return [resource.metadata.name for resource, _ in await _databases(profile, cluster)]


# --- tether db ------------------------------------------------------------------------------


@click.group("db")
def db_group() -> None:
    """Reach PostgreSQL and MySQL/MariaDB databases through Tether."""


@db_group.command("ls")
@cluster_option("List the databases of this cluster (default: the one logged in to).")
@format_option()
@run_async
async def ls(cluster: str | None, fmt: str) -> None:
    """List the databases you can reach, with the database users your roles allow on each.

    With --format=json or yaml, the db resources themselves.
    """
    profile = require_profile()
    found = await _databases(profile, _cluster(profile, cluster))
    rows = []
    for resource, doc in found:
        spec: DbSpec = resource.spec
        labels = ",".join(f"{k}={v}" for k, v in sorted(resource.metadata.labels.items()))
        allowed = ((doc.get("status") or {}).get("allowed_users")) or []
        rows.append(
            (
                resource.metadata.name,
                spec.description,
                _PROTOCOL_TITLES.get(spec.protocol, spec.protocol),
                labels,
                ", ".join(allowed) or "(none)",
            )
        )
    output(
        [doc for _, doc in found],
        fmt,
        text=lambda: emit_table(
            ["Name", "Description", "Protocol", "Labels", "Allowed Users"], rows
        ),
    )


@db_group.command("login")
@cluster_option("The database's cluster (default: the one logged in to).")
@click.option("--db-user", help="The database user to connect as by default.")
@click.option("--db-name", help="The database name to connect to by default.")
@click.argument("name", shell_complete=completer(_names))
@run_async
async def login(cluster: str | None, db_user: str | None, db_name: str | None, name: str) -> None:
    """Remember the database user and name to use with NAME (as tsh db login)."""
    profile = require_profile()
    where = _cluster(profile, cluster)
    resource = await _database(profile, where, name)
    logins = [
        entry for entry in _read_logins(profile) if (entry.cluster, entry.name) != (where, name)
    ]
    logins.append(DbLogin(cluster=where, name=name, db_user=db_user, db_name=db_name))
    _write_logins(profile, logins)
    spec: DbSpec = resource.spec
    click.echo(
        f"Logged into {_PROTOCOL_TITLES.get(spec.protocol, spec.protocol)} database {name!r}."
    )
    click.echo(f"Connect with: tether db connect {name}" + _cluster_flag(profile, where))
    click.echo(
        f"Or start a local tunnel: tether proxy db --tunnel {name}" + _cluster_flag(profile, where)
    )


@db_group.command("logout")
@cluster_option("The database's cluster (default: the one logged in to).")
@click.argument("name", required=False, shell_complete=completer(_names))
def logout(cluster: str | None, name: str | None) -> None:
    """Forget what tether db login remembered, for NAME or for every database."""
    profile = require_profile()
    where = _cluster(profile, cluster)
    logins = _read_logins(profile)
    kept = [
        entry
        for entry in logins
        if name is not None and (entry.cluster, entry.name) != (where, name)
    ]
    _write_logins(profile, kept)
    for entry in logins:
        if entry not in kept:
            click.echo(f"Logged out of database {entry.name!r} (cluster {entry.cluster!r}).")
    if len(kept) == len(logins):
        click.echo("Not logged into " + (f"database {name!r}." if name else "any database."))


def _cluster_flag(profile: Profile, cluster: str) -> str:
    return f" --cluster={cluster}" if cluster != profile.cluster else ""


def _defaults(
    profile: Profile, cluster: str, name: str, db_user: str | None, db_name: str | None
) -> tuple[str | None, str | None]:
    stored = _stored(profile, cluster, name)
    if stored is not None:
        db_user = db_user or stored.db_user
        db_name = db_name or stored.db_name
    return db_user, db_name


def client_command(protocol: str, port: int, db_user: str | None, db_name: str | None) -> list[str]:
    """The command line of the database's usual client, connected to the local listener on
    ``port`` with no TLS (the listener is on loopback; Tether's TLS starts behind it)."""
    if protocol == "postgres":
        conninfo = f"host=127.0.0.1 port={port} sslmode=disable application_name=tether"
        if db_user:
            conninfo += f" user={db_user}"
        if db_name:
            conninfo += f" dbname={db_name}"
        return ["psql", conninfo]
    program = next((p for p in _CLIENTS["mysql"] if shutil.which(p)), "mysql")
    command = [program, "--protocol=TCP", "-h", "127.0.0.1", "-P", str(port), "--skip-ssl"]
    if db_user:
        command += ["-u", db_user]
    if db_name:
        command.append(db_name)
    return command


@db_group.command("connect")
@cluster_option("The database's cluster (default: the one logged in to).")
@click.option("--db-user", help="The database user (default: the one tether db login set).")
@click.option("--db-name", help="The database name (default: the one tether db login set).")
@click.argument("name", shell_complete=completer(_names))
@run_async
async def connect(cluster: str | None, db_user: str | None, db_name: str | None, name: str) -> None:
    """Start psql or mysql/mariadb connected to database NAME through Tether."""
    profile = require_profile()
    where = _cluster(profile, cluster)
    resource = await _database(profile, where, name)
    spec: DbSpec = resource.spec
    db_user, db_name = _defaults(profile, where, name, db_user, db_name)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    command = client_command(spec.protocol, port, db_user, db_name)
    if shutil.which(command[0]) is None:
        raise TetherError(
            f"{command[0]} is not installed",
            hint=f"install the {_PROTOCOL_TITLES[spec.protocol]} client, or run "
            f"`tether proxy db --tunnel {name}` and connect with yours",
        )
    # Ctrl-C belongs to the client (psql cancels the running query with it), not to this
    # process, which must keep carrying its connections until the client exits
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, profile, where, name, spec.protocol, listeners)
            nursery.start_soon(_ignore, interrupts)
            done = await trio.run_process(command, check=False, stdin=None)
            nursery.cancel_scope.cancel()
    sys.exit(done.returncode)


async def _ignore(signals: Any) -> None:
    async for _ in signals:
        pass


async def _serve(
    profile: Profile,
    cluster: str,
    name: str,
    protocol: str,
    listeners: Sequence[trio.SocketListener],
) -> None:
    context = profile_ssl_context(profile, alpn=[ALPN])

    async def open_stream() -> trio.abc.Stream:
        stream, _ = await open_target_stream(
            profile.proxy, context, alpn=ALPN, protocol=TITLE, cluster=cluster, target=name
        )
        return stream

    # the wire modules answer a refused client; every tether command loads this module, so
    # they are imported only when a listener runs
    from tether_db.local import refuse_locally

    async def refused(local: trio.abc.Stream, exc: TetherError) -> None:
        click.echo(f"ERROR: {exc}", err=True)
        await refuse_locally(protocol, local, str(exc))

    await serve_local_listener(listeners, open_stream, refused=refused)


@db_group.command("config")
@cluster_option("The database's cluster (default: the one logged in to).")
@format_option()
@click.argument("name", shell_complete=completer(_names))
@run_async
async def config(cluster: str | None, fmt: str, name: str) -> None:
    """How a GUI client or a program connects to database NAME."""
    profile = require_profile()
    where = _cluster(profile, cluster)
    resource = await _database(profile, where, name)
    spec: DbSpec = resource.spec
    db_user, db_name = _defaults(profile, where, name, None, None)
    tunnel = f"tether proxy db --tunnel --port=PORT {name}" + _cluster_flag(profile, where)
    shown = {
        "name": name,
        "cluster": where,
        "protocol": spec.protocol,
        "tunnel": tunnel,
        "host": "127.0.0.1",
        "port": "PORT",
        "user": db_user,
        "database": db_name,
        "tls": "none (the local tunnel listens on loopback only; Tether's TLS starts there)",
    }

    def text() -> None:
        click.echo(f"Start a local tunnel:  {tunnel}")
        click.echo("Then connect to:       host 127.0.0.1, port PORT, without TLS")
        click.echo(f"User:                  {db_user or '(your choice)'}")
        click.echo(f"Database:              {db_name or '(your choice)'}")

    output(shown, fmt, text=text)


# --- tether proxy db ------------------------------------------------------------------------


@click.command("db")
@cluster_option("The database's cluster (default: the one logged in to).")
@click.option(
    "--tunnel",
    is_flag=True,
    help="Authenticate the connections for the client (required: as tsh's --tunnel, so that "
    "any client connects to 127.0.0.1 with no certificate of its own).",
)
@click.option(
    "-p", "--port", type=click.IntRange(0, 65535), default=0, help="Local port (0: a free one)."
)
@click.argument("name", shell_complete=completer(_names))
@run_async
async def proxy_db(cluster: str | None, tunnel: bool, port: int, name: str) -> None:
    """Listen on 127.0.0.1 and carry each connection to database NAME, authenticated as you.

    Any unmodified client connects to it without TLS: psql, mysql, pgbench, psycopg,
    SQLAlchemy. Ctrl-C stops it.
    """
    if not tunnel:
        raise click.UsageError(
            "tether proxy db needs --tunnel: the local listener authenticates for the client "
            "(a listener that asks the client for a certificate is not supported)"
        )
    profile = require_profile()
    where = _cluster(profile, cluster)
    resource = await _database(profile, where, name)
    spec: DbSpec = resource.spec
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    db_user, db_name = _defaults(profile, where, name, None, None)
    title = _PROTOCOL_TITLES.get(spec.protocol, spec.protocol)
    click.echo(
        f'Started authenticated tunnel for the {title} database "{name}" in cluster '
        f'"{where}" on 127.0.0.1:{bound}.'
    )
    click.echo("Use the following command to connect to the database:")
    click.echo("  " + " ".join(_quoted(client_command(spec.protocol, bound, db_user, db_name))))
    await _serve(profile, where, name, spec.protocol, listeners)


def _quoted(words: Sequence[str]) -> list[str]:
    return [shlex.quote(word) for word in words]
