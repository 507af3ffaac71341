"""``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``: the user's side of SSH access.

Every command works from the current login (``tether login``): the X.509 certificate opens
the proxy's front door, the SSH certificate logs in to the node, and the cluster's host CA
(kept in the profile's ``known_hosts``) verifies the node. ``tether config`` writes the same
three facts as an OpenSSH client configuration, so the stock ``ssh``, ``scp`` and ``sftp``
work too, with ``tether proxy ssh`` as their ``ProxyCommand``.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs
import click
import trio

from tether.api import (
    HOME_ENV,
    LOGIN_ENV,
    DialedTarget,
    Profile,
    TetherError,
    cluster_option,
    completer,
    emit_table,
    format_option,
    list_targets,
    load_private_key,
    open_target_stream,
    output,
    profile_ssl_context,
    require_profile,
    run_async,
    run_trio,
)
from tether_ssh.forwards import (
    DynamicForward,
    LocalForward,
    RemoteForward,
    parse_dynamic_forward,
    parse_local_forward,
    parse_remote_forward,
)
from tether_ssh.frontdoor import FRONT_DOOR_ALPN, TITLE
from tether_ssh.options import SUPPORTED, OptionError, parse_options

# `tether ssh NODE` reaches one node: what only listings and label selection need (resources,
# node descriptions, leaf clusters) is imported by the commands that use it.
if TYPE_CHECKING:
    from tether.api import KindRegistry, Resource, Target, TargetQuery
    from tether_ssh.client import ClientCredentials, Keepalive

__all__ = ["config_command", "ls", "proxy_ssh", "scp", "ssh"]


@functools.cache
def _nodes() -> KindRegistry:
    """The ``node`` kind, to read the documents the proxy lists."""
    from tether.api import KindRegistry
    from tether_ssh.inventory import NODE

    return KindRegistry([NODE], plugin="ssh")


def _cluster(profile: Profile, requested: str | None) -> str:
    """The cluster a command targets: ``--cluster``, else the selected one
    (``tether login --proxy=ROOT LEAF``), else the one logged in to."""
    return requested or profile.cluster


async def _dial(
    profile: Profile, cluster: str, target: str, port: int = 0
) -> tuple[trio.abc.Stream, DialedTarget]:
    """A stream to *target*'s SSH server through the proxy's front door, and which node it is."""
    return await open_target_stream(
        profile.proxy,
        profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN]),
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster=cluster,
        target=target,
        port=port,
    )


async def _list_nodes(profile: Profile, cluster: str) -> list[Resource]:
    """The nodes of *cluster* the user may reach, as the proxy lists them."""
    from tether.api import resource_from_dict

    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])
    docs = await list_targets(
        profile.proxy, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE, cluster=cluster
    )
    return [resource_from_dict(doc, _nodes(), source="node") for doc in docs]


def host_ca_lines(profile: Profile) -> list[str]:
    """The cluster host CA public keys, from the profile's ``known_hosts``."""
    lines = []
    for line in profile.known_hosts_file.read_text().splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == "@cert-authority":
            lines.append(parts[2])
    return lines


def _split_target(target: str) -> tuple[str, str]:
    """``login@node`` -> (login, node); the login defaults to the local user, as ssh does."""
    login, sep, node = target.rpartition("@")
    if not sep:
        login, node = _local_user(), target
    if not node or not login:
        raise click.BadParameter(f"{target!r} is not LOGIN@NODE", param_hint="destination")
    return login, node


def _local_user() -> str:
    """The login when a command names none: ``$TETHER_LOGIN``, else the local user name."""
    import getpass

    return os.environ.get(LOGIN_ENV) or getpass.getuser()


async def _destinations(ctx: click.Context, incomplete: str) -> list[str]:
    """What Tab offers for ``[LOGIN@]NODE``: the login typed, then each node ``tether ls``
    shows (in ``--cluster`` when typed before)."""
    profile = require_profile()
    login, at, _ = incomplete.rpartition("@")
    docs = await list_targets(
        profile.proxy,
        profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN]),
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster=_cluster(profile, ctx.params.get("cluster")),
    )
    return sorted(f"{login}{at}{doc['spec']['hostname']}" for doc in docs)


# --- tether ls -----------------------------------------------------------------------------


def _label_query(selectors: Sequence[str]) -> TargetQuery | None:
    """The labels ``tether ls`` was given (``env=prod os=linux`` or ``env=prod,os=linux``) as
    one query, or ``None`` for every node."""
    from tether.api import TargetQuery

    pairs = [pair for selector in selectors for pair in selector.split(",")]
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not label=value", param_hint="selectors")
    return TargetQuery.parse(",".join(pairs)) if pairs else None


@click.command("ls")
@cluster_option("List the nodes of this cluster (default: the one logged in to).")
@format_option()
@click.argument("selectors", nargs=-1)
@run_async
async def ls(cluster: str | None, fmt: str, selectors: Sequence[str]) -> None:
    """List the nodes you can reach, optionally only those with label=value.

    SELECTORS are labels, as `tether ssh` takes them (env=prod, or env=prod,os=linux); each
    value is matched as a role's node_labels value is (`*`, globs such as env=prod-*, or
    ^regex$), so `tether ls` lists exactly the nodes `tether ssh` with the same labels runs on.

    With --format=json or yaml, the node resources themselves, as tsh ls prints them: kind
    node, metadata (name: the node's id, labels), spec (hostname, addr, use_tunnel).
    """
    from tether.api import matching_targets, resource_from_dict
    from tether_ssh.inventory import describe_addr, describe_node

    profile = require_profile()
    name = _cluster(profile, cluster)
    query = _label_query(selectors)
    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])
    docs = await list_targets(
        profile.proxy, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE, cluster=name
    )
    found = [(resource_from_dict(doc, _nodes(), source="node"), doc) for doc in docs]
    if query is not None:
        picked = {t.id for t in matching_targets([describe_node(n) for n, _ in found], query)}
        found = [(n, doc) for n, doc in found if n.metadata.name in picked]
    found.sort(key=lambda pair: (pair[0].spec.hostname, pair[0].metadata.name))
    rows = [
        (
            n.spec.hostname,
            describe_addr(n),
            ",".join(f"{k}={v}" for k, v in sorted(n.metadata.labels.items())),
        )
        for n, _ in found
    ]
    output(
        [doc for _, doc in found],
        fmt,
        text=lambda: emit_table(["Node Name", "Address", "Labels"], rows),
    )


# --- tether proxy ssh ----------------------------------------------------------------------


@click.command("ssh")
@cluster_option("The node's cluster (default: the one logged in to).")
@click.argument("target")
@run_async
async def proxy_ssh(cluster: str | None, target: str) -> None:
    """Connect standard input and output to NODE's SSH server ([LOGIN@]NODE[:PORT]).

    For OpenSSH's ProxyCommand; `tether config` writes the line. A NODE ending in
    `.CLUSTER` names its cluster.
    """
    from tether.api import splice

    profile = require_profile()
    name = _cluster(profile, cluster)
    node = target.rpartition("@")[2]
    port = 0
    host, sep, port_text = node.rpartition(":")
    if sep and port_text.isdigit() and host:
        node = host
    node = node.removesuffix(f".{name}")
    stream, _ = await _dial(profile, name, node, port)
    stdio = _StdioStream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_finish_after_hangup, nursery.cancel_scope)
        await splice(stream, stdio)
        nursery.cancel_scope.cancel()


#: How long ``tether proxy ssh`` goes on after ``ssh`` hangs it up (seconds).
HANGUP_GRACE = 5.0


async def _finish_after_hangup(relay: trio.CancelScope) -> None:
    """Outlive ``ssh``'s SIGHUP long enough to deliver what it wrote last.

    OpenSSH sends its ProxyCommand SIGHUP as it exits, and its last packets (a key exchange
    it gave up on, a channel close, a disconnect) may still be in our standard input: dying
    on the signal would lose them, and the node would see a connection lost instead of what
    the client said. Standard input ends once ``ssh`` is gone, which ends the relay; the
    grace bounds the wait for a writer that holds the pipe open.
    """
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            relay.deadline = min(relay.deadline, trio.current_time() + HANGUP_GRACE)


class _StdioStream(trio.abc.HalfCloseableStream):
    """This process's standard input and output as one stream."""

    def __init__(self) -> None:
        self._in = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._out = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._out.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._out.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._out.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._in.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._in.aclose()
        await self._out.aclose()


# --- tether config -------------------------------------------------------------------------


def _tether_command() -> str:
    """How OpenSSH should start this program: its absolute path, with TETHER_HOME if set."""
    argv0 = pathlib.Path(sys.argv[0])
    if argv0.suffix == ".py" or argv0.name == "__main__.py":  # python -m tether.cli.tether
        program = f"{shlex.quote(sys.executable)} -m tether.cli.tether"
    elif argv0.is_file() and os.access(argv0, os.X_OK):
        program = shlex.quote(str(argv0.resolve()))
    else:
        program = shlex.quote(shutil.which("tether") or "tether")
    home = os.environ.get(HOME_ENV)
    prefix = f"env {HOME_ENV}={shlex.quote(home)} " if home else ""
    return prefix + program


def openssh_config(profile: Profile, host_cas: Mapping[str, Sequence[str]]) -> str:
    """An OpenSSH client configuration for the login's cluster and the leaves it reaches.

    :param host_cas: cluster name -> its SSH host CA lines (the login's own first); each
        cluster gets ``Host *.CLUSTER`` and a ``@cert-authority *.CLUSTER,CLUSTER`` line.
    """
    from tether.api import known_hosts_ca_line

    proxy_host = profile.proxy.rpartition(":")[0].strip("[]")
    known_hosts = profile.directory / "openssh_known_hosts"
    known_hosts.write_text(
        "".join(
            known_hosts_ca_line(line, cluster) + "\n"
            for cluster, lines in host_cas.items()
            for line in lines
        )
    )
    known_hosts.chmod(0o600)
    patterns = " ".join(f"*.{cluster}" for cluster in host_cas)
    lines = [
        f"# Tether: OpenSSH configuration for clusters {', '.join(host_cas)} through "
        f"{profile.proxy}.",
        "# Use: ssh -F FILE LOGIN@NODE.CLUSTER (scp and sftp take -F too).",
        "",
        f"Host {patterns} {proxy_host}",
        f'    UserKnownHostsFile "{known_hosts}"',
        f'    IdentityFile "{profile.private_key_file}"',
        f'    CertificateFile "{profile.ssh_cert_file}"',
        "    IdentitiesOnly yes",
        "    PubkeyAuthentication yes",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        "    HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com,"
        "ecdsa-sha2-nistp256-cert-v01@openssh.com,rsa-sha2-512-cert-v01@openssh.com",
    ]
    for cluster in host_cas:
        lines += [
            "",
            f"Host *.{cluster} !{proxy_host}",
            f"    ProxyCommand {_tether_command()} proxy ssh --cluster={cluster} %r@%h",
        ]
    return "\n".join([*lines, ""])


@click.command("config")
@run_async
async def config_command() -> None:
    """Print an OpenSSH client configuration for the current login and its leaf clusters.

    Save it and run `ssh -F FILE LOGIN@NODE.CLUSTER`.
    """
    from tether.api import cluster_host_cas, leaf_clusters

    profile = require_profile()
    own = profile.identity().cluster
    host_cas: dict[str, Sequence[str]] = {own: host_ca_lines(profile)}
    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])
    for leaf in await leaf_clusters(profile):
        host_cas[leaf] = await cluster_host_cas(
            profile.proxy, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE, cluster=leaf
        )
    click.echo(openssh_config(profile, host_cas), nl=False)


# --- tether ssh and tether scp -------------------------------------------------------------


def _credentials(profile: Profile) -> ClientCredentials:
    from tether_ssh.client import ClientCredentials

    return ClientCredentials(
        private_key=load_private_key(profile.tls_key_file.read_bytes()),
        ssh_cert=profile.ssh_cert_file.read_text().strip(),
        host_ca_lines=host_ca_lines(profile),
    )


#: ssh's exit status when the connection, not the command, failed.
SSH_CONNECTION_FAILED = 255


_F = TypeVar("_F", LocalForward, RemoteForward, DynamicForward)


def _forwards(parse: Callable[[str], _F], specs: Sequence[str], flag: str) -> list[_F]:
    try:
        return [parse(spec) for spec in specs]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


def _request_tty(force_tty: int, no_tty: bool, option: str | None) -> bool | None:
    """``-T``, ``-t`` (``yes``), ``-tt`` (``force``) or ``RequestTTY``, as ssh decides: True
    to ask for a terminal, False never, None when a shell starts on a local terminal."""
    wanted = "no" if no_tty else "force" if force_tty > 1 else "yes" if force_tty else option
    if wanted == "force":
        return True
    if wanted == "yes":
        if sys.stdin.isatty():
            return True
        click.echo(
            "Pseudo-terminal will not be allocated because stdin is not a terminal.", err=True
        )
        return False
    return False if wanted == "no" else None


@attrs.frozen(kw_only=True)
class _Session:
    """What one `tether ssh` asks of each node it reaches."""

    command: str | None
    session: bool
    tty: bool | None
    env: Mapping[str, str]
    forward_agent: bool
    local_forwards: Sequence[LocalForward]
    remote_forwards: Sequence[RemoteForward]
    dynamic_forwards: Sequence[DynamicForward]
    keepalive: Keepalive

    @property
    def single_node_only(self) -> str | None:
        """What this session does that makes no sense on several nodes at once, if anything."""
        if not self.session:
            return "-N"
        if self.command is None:
            return "an interactive shell"
        if self.tty:
            return "a terminal (-t)"
        if self.local_forwards or self.remote_forwards or self.dynamic_forwards:
            return "port forwarding"
        return None


async def _run_on(
    profile: Profile,
    cluster: str,
    target: str,
    *,
    port: int,
    login: str,
    session: _Session,
    stdin: int = 0,
    output_prefix: bytes = b"",
) -> int:
    from tether_ssh.client import run_command

    stream, dialed = await _dial(profile, cluster, target, port)

    async def opened() -> trio.abc.Stream:
        return stream

    creds = _credentials(profile)
    if dialed.host_cas:  # the node's cluster's host CAs, from the authenticated proxy
        creds = attrs.evolve(creds, host_ca_lines=dialed.host_cas)
    return await run_command(
        opened,
        creds,
        login=login,
        host_name=dialed.id,
        node_name=dialed.name,
        command=session.command,
        session=session.session,
        tty=session.tty,
        env=session.env,
        forward_agent=session.forward_agent,
        local_forwards=session.local_forwards,
        remote_forwards=session.remote_forwards,
        dynamic_forwards=session.dynamic_forwards,
        keepalive=session.keepalive,
        stdin=stdin,
        output_prefix=output_prefix,
    )


async def _selected_nodes(profile: Profile, cluster: str, node: str) -> list[Target]:
    """The nodes a label selector (``env=prod``) picks, as the proxy would match them; none
    for a node named by its name, id or address, which the proxy resolves alone."""
    if "=" not in node:
        return []
    from tether.api import TargetQuery, matching_targets
    from tether_ssh.inventory import describe_node

    nodes = [describe_node(n) for n in await _list_nodes(profile, cluster)]
    return matching_targets(nodes, TargetQuery.parse(node))


async def _run_on_each(
    profile: Profile,
    cluster: str,
    nodes: Sequence[Target],
    *,
    port: int,
    login: str,
    session: _Session,
) -> int:
    """Run the command on every node at once, each line of output after ``[NODE] ``, as tsh
    does; the exit status is the highest of them (255 for a node that was not reached)."""
    statuses: list[int] = []

    async def one(node: Target, stdin: int) -> None:
        prefix = f"[{node.name}] "
        try:
            status = await _run_on(
                profile,
                cluster,
                node.id,
                port=port,
                login=login,
                session=session,
                stdin=stdin,
                output_prefix=prefix.encode(),
            )
        except TetherError as exc:
            click.echo(f"{prefix}ERROR: {exc}", err=True)
            status = SSH_CONNECTION_FAILED
        statuses.append(status)

    stdin = os.open(os.devnull, os.O_RDONLY)  # one input cannot go to several commands
    try:
        async with trio.open_nursery() as nursery:
            for node in sorted(nodes, key=lambda n: (n.name, n.id)):
                nursery.start_soon(one, node, stdin)
    finally:
        os.close(stdin)
    return max(statuses)


@click.command(
    "ssh",
    context_settings={"allow_interspersed_args": False},
)
@cluster_option("The node's cluster (default: the one logged in to).")
@click.option("-l", "login_option", metavar="LOGIN", help="Log in as LOGIN (over LOGIN@NODE).")
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="The node's SSH port.")
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="OPTION=VALUE",
    help=f"An OpenSSH option: {', '.join(SUPPORTED)} (repeatable; others are refused).",
)
@click.option(
    "-L",
    "forwards",
    multiple=True,
    metavar="[BIND:]PORT:HOST:HOSTPORT",
    help="Forward a local port to HOST:HOSTPORT as seen from the node (repeatable).",
)
@click.option(
    "-R",
    "remote_forwards",
    multiple=True,
    metavar="[BIND:]PORT:HOST:HOSTPORT",
    help="Forward the node's loopback PORT (0: any) to HOST:HOSTPORT as seen from here "
    "(repeatable).",
)
@click.option(
    "-D",
    "dynamic_forwards",
    multiple=True,
    metavar="[BIND:]PORT",
    help="A local SOCKS4/5 proxy whose connections leave from the node (repeatable).",
)
@click.option("-A", "forward_agent", is_flag=True, help="Forward the local SSH agent.")
@click.option("-N", "no_command", is_flag=True, help="Run no command: forward ports only.")
@click.option(
    "-t",
    "force_tty",
    count=True,
    help="Request a terminal for a command; -tt even without a local terminal.",
)
@click.option("-T", "no_tty", is_flag=True, help="Never request a terminal.")
@click.argument("destination", shell_complete=completer(_destinations))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(
    cluster: str | None,
    login_option: str | None,
    port: int | None,
    options: Sequence[str],
    forwards: Sequence[str],
    remote_forwards: Sequence[str],
    dynamic_forwards: Sequence[str],
    forward_agent: bool,
    no_command: bool,
    force_tty: int,
    no_tty: bool,
    destination: str,
    command: Sequence[str],
) -> None:
    """Run COMMAND (or a shell) on a node as LOGIN: tether ssh [LOGIN@]NODE [COMMAND...].

    NODE is a host name, a host id, an address, or labels (env=prod); labels that select
    several nodes run COMMAND on each, every line of output after [NODE]. Options go before
    NODE, as with ssh. The exit status is the remote command's (the highest of several), 255
    when a connection or login failed, 2 for a command line that cannot be used.

    LOGIN (from -l, -o User or LOGIN@) defaults to $TETHER_LOGIN, else your local user name.
    """
    # asyncssh is imported by the commands that speak SSH only, not by every `tether` run
    from tether_ssh.client import Keepalive

    try:
        given = parse_options(options)
    except OptionError as exc:
        raise click.BadParameter(str(exc), param_hint="-o") from None
    if no_command and command:
        raise click.UsageError("-N runs no command: drop the command, or -N")
    target_login, node = _split_target(destination)
    login = login_option or given.user or target_login
    session = _Session(
        command=" ".join(command) if command else None,
        session=not no_command,
        tty=_request_tty(force_tty, no_tty, given.request_tty),
        env=given.environment(os.environ),
        forward_agent=forward_agent or bool(given.forward_agent),
        local_forwards=[*_forwards(parse_local_forward, forwards, "-L"), *given.local_forwards],
        remote_forwards=[
            *_forwards(parse_remote_forward, remote_forwards, "-R"),
            *given.remote_forwards,
        ],
        dynamic_forwards=[
            *_forwards(parse_dynamic_forward, dynamic_forwards, "-D"),
            *given.dynamic_forwards,
        ],
        keepalive=Keepalive(
            interval=given.server_alive_interval or 0,
            count_max=given.server_alive_count_max or 3,
        ),
    )
    node_port = port or given.port or 0

    async def run() -> int:
        profile = require_profile()
        name = _cluster(profile, cluster)
        several = await _selected_nodes(profile, name, node)
        if len(several) > 1:
            if session.single_node_only:
                listed = ", ".join(sorted(n.name for n in several))
                raise click.UsageError(
                    f"{node} selects {len(several)} nodes ({listed}): "
                    f"{session.single_node_only} needs one; name it, or give a command "
                    "to run on each"
                )
            return await _run_on_each(
                profile, name, several, port=node_port, login=login, session=session
            )
        return await _run_on(profile, name, node, port=node_port, login=login, session=session)

    try:
        status = run_trio(run)
    except TetherError as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger(__name__).error("tether ssh failed", exc_info=exc)
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(SSH_CONNECTION_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status)


@click.command("scp")
@cluster_option("The nodes' cluster (default: the one logged in to).")
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.option("-p", "preserve", is_flag=True, help="Keep modification times and modes.")
@click.argument("paths", nargs=-1, required=True)
@run_async
async def scp(cluster: str | None, recursive: bool, preserve: bool, paths: Sequence[str]) -> None:
    """Copy files to or from nodes: tether scp SRC... DEST, remote as [LOGIN@]NODE:PATH."""
    from tether_ssh.client import copy_files

    if len(paths) < 2:
        raise click.UsageError("give at least one source and a destination")
    profile = require_profile()
    name = _cluster(profile, cluster)

    async def open_stream_for(host: str) -> trio.abc.Stream:
        stream, _ = await _dial(profile, name, host)
        return stream

    await copy_files(
        open_stream_for,
        _credentials(profile),
        sources=list(paths[:-1]),
        destination=paths[-1],
        recursive=recursive,
        preserve=preserve,
        default_login=_local_user(),
    )
