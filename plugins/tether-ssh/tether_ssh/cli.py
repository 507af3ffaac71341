"""``tether ssh``, ``ls``, ``scp``, ``config`` and ``proxy ssh``: the user's side of SSH access.

Every command works from the current login (``tether login``): the X.509 certificate opens
the proxy's front door, the SSH certificate logs in to the node, and the cluster's host CA
(kept in the profile's ``known_hosts``) verifies the node. ``tether config`` writes the same
three facts as an OpenSSH client configuration, so the stock ``ssh``, ``scp`` and ``sftp``
work too, with ``tether proxy ssh`` as their ``ProxyCommand``.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import click
import trio

from tether.api import (
    CLUSTER_ENV,
    HOME_ENV,
    LOGIN_ENV,
    AccessDenied,
    KindRegistry,
    Profile,
    TetherError,
    cluster_host_cas,
    current_profile,
    emit_table,
    known_hosts_ca_line,
    leaf_clusters,
    list_targets,
    load_private_key,
    open_target_stream,
    output,
    profile_ssl_context,
    resource_from_dict,
    run_async,
    run_trio,
    shared_group,
    splice,
)
from tether_ssh.frontdoor import FRONT_DOOR_ALPN, TITLE
from tether_ssh.inventory import NODE, describe_addr

if TYPE_CHECKING:
    from tether_ssh.client import ClientCredentials

__all__ = ["add_commands"]

_NODES = KindRegistry([NODE], plugin="ssh")


def _profile() -> Profile:
    """The current login, refused with a clear message when there is none or it expired."""
    profile = current_profile()
    if profile is None:
        raise TetherError("not logged in", hint="run `tether login --proxy=HOST:PORT` first")
    expires = profile.identity().expires
    if expires <= datetime.datetime.now(datetime.UTC):
        raise AccessDenied(
            f"your certificates expired at {expires:%Y-%m-%d %H:%M:%S} UTC",
            hint=f"run `tether login --proxy={profile.proxy}`",
        )
    return profile


def _cluster(profile: Profile, requested: str | None) -> str:
    """The cluster a command targets: ``--cluster``, else the selected one
    (``tether login --proxy=ROOT LEAF``), else the one logged in to."""
    return requested or profile.cluster


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


# --- tether ls -----------------------------------------------------------------------------


@click.command("ls")
@click.option(
    "--cluster",
    envvar=CLUSTER_ENV,
    show_envvar=True,
    help="List the nodes of this cluster (default: the one logged in to).",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "yaml"]),
    default="text",
    show_default=True,
)
@click.argument("selectors", nargs=-1)
@run_async
async def ls(cluster: str | None, fmt: str, selectors: Sequence[str]) -> None:
    """List the nodes you can reach, optionally only those with label=value."""
    profile = _profile()
    name = _cluster(profile, cluster)
    wanted: dict[str, str] = {}
    for selector in selectors:
        key, sep, value = selector.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{selector!r} is not label=value", param_hint="selectors")
        wanted[key] = value
    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])
    docs = await list_targets(
        profile.proxy, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE, cluster=name
    )
    nodes = [resource_from_dict(doc, _NODES, source="node") for doc in docs]
    nodes = [n for n in nodes if all(n.metadata.labels.get(k) == v for k, v in wanted.items())]
    nodes.sort(key=lambda n: (n.spec.hostname, n.metadata.name))
    if fmt != "text":
        output([_node_json(n) for n in nodes], fmt)
        return
    rows = [
        (
            n.spec.hostname,
            describe_addr(n),
            ",".join(f"{k}={v}" for k, v in sorted(n.metadata.labels.items())),
        )
        for n in nodes
    ]
    emit_table(["Node Name", "Address", "Labels"], rows)


def _node_json(node: Any) -> dict[str, Any]:
    return {
        "id": node.metadata.name,
        "hostname": node.spec.hostname,
        "addr": node.spec.addr,
        "use_tunnel": node.spec.use_tunnel,
        "labels": dict(node.metadata.labels),
    }


# --- tether proxy ssh ----------------------------------------------------------------------


@click.command("ssh")
@click.option(
    "--cluster",
    envvar=CLUSTER_ENV,
    show_envvar=True,
    help="The node's cluster (default: the one logged in to).",
)
@click.argument("target")
@run_async
async def proxy_ssh(cluster: str | None, target: str) -> None:
    """Connect standard input and output to NODE's SSH server ([LOGIN@]NODE[:PORT]).

    For OpenSSH's ProxyCommand; `tether config` writes the line. A NODE ending in
    `.CLUSTER` names its cluster.
    """
    profile = _profile()
    name = _cluster(profile, cluster)
    node = target.rpartition("@")[2]
    port = 0
    host, sep, port_text = node.rpartition(":")
    if sep and port_text.isdigit() and host:
        node = host
    node = node.removesuffix(f".{name}")
    stream, _ = await open_target_stream(
        profile.proxy,
        profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN]),
        alpn=FRONT_DOOR_ALPN,
        protocol=TITLE,
        cluster=name,
        target=node,
        port=port,
    )
    stdio = _StdioStream()
    await splice(stream, stdio)


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
    profile = _profile()
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


def _locale_env() -> dict[str, str]:
    """The variables ssh sends by default (SendEnv LANG LC_*)."""
    return {k: v for k, v in os.environ.items() if k == "LANG" or k.startswith("LC_")}


#: ssh's exit status when the connection, not the command, failed.
SSH_CONNECTION_FAILED = 255


@click.command(
    "ssh",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--cluster",
    envvar=CLUSTER_ENV,
    show_envvar=True,
    help="The node's cluster (default: the one logged in to).",
)
@click.option("-p", "--port", type=click.IntRange(1, 65535), help="The node's SSH port.")
@click.option(
    "-L",
    "forwards",
    multiple=True,
    metavar="[BIND:]PORT:HOST:HOSTPORT",
    help="Forward a local port to HOST:HOSTPORT as seen from the node (repeatable).",
)
@click.option("-A", "forward_agent", is_flag=True, help="Forward the local SSH agent.")
@click.option("-t", "force_tty", is_flag=True, help="Request a terminal even for a command.")
@click.option("-T", "no_tty", is_flag=True, help="Never request a terminal.")
@click.argument("destination")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(
    cluster: str | None,
    port: int | None,
    forwards: Sequence[str],
    forward_agent: bool,
    force_tty: bool,
    no_tty: bool,
    destination: str,
    command: Sequence[str],
) -> None:
    """Run COMMAND (or a shell) on a node as LOGIN: tether ssh [LOGIN@]NODE [COMMAND...].

    LOGIN defaults to $TETHER_LOGIN, else your local user name.

    NODE is a host name, a host id, an address, or labels (env=prod) that select one node.
    The exit status is the remote command's, or 255 when the connection failed.
    """
    # asyncssh is imported by the commands that speak SSH only, not by every `tether` run
    from tether_ssh.client import parse_local_forward, run_command

    try:
        local_forwards = [parse_local_forward(spec) for spec in forwards]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-L") from None
    login, node = _split_target(destination)
    tty = True if force_tty else False if no_tty else None
    line = " ".join(command) if command else None

    async def run() -> int:
        profile = _profile()
        name = _cluster(profile, cluster)
        stream, dialed = await open_target_stream(
            profile.proxy,
            profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN]),
            alpn=FRONT_DOOR_ALPN,
            protocol=TITLE,
            cluster=name,
            target=node,
            port=port or 0,
        )

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
            command=line,
            tty=tty,
            env=_locale_env(),
            forward_agent=forward_agent,
            local_forwards=local_forwards,
        )

    try:
        status = run_trio(run)
    except TetherError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(SSH_CONNECTION_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status)


@click.command("scp")
@click.option(
    "--cluster",
    envvar=CLUSTER_ENV,
    show_envvar=True,
    help="The nodes' cluster (default: the one logged in to).",
)
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.option("-p", "preserve", is_flag=True, help="Keep modification times and modes.")
@click.argument("paths", nargs=-1, required=True)
@run_async
async def scp(cluster: str | None, recursive: bool, preserve: bool, paths: Sequence[str]) -> None:
    """Copy files to or from nodes: tether scp SRC... DEST, remote as [LOGIN@]NODE:PATH."""
    from tether_ssh.client import copy_files

    if len(paths) < 2:
        raise click.UsageError("give at least one source and a destination")
    profile = _profile()
    name = _cluster(profile, cluster)
    context = profile_ssl_context(profile, alpn=[FRONT_DOOR_ALPN])

    async def open_stream_for(host: str) -> trio.abc.Stream:
        stream, _ = await open_target_stream(
            profile.proxy, context, alpn=FRONT_DOOR_ALPN, protocol=TITLE, cluster=name, target=host
        )
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


def add_commands(cli: click.Group) -> None:
    """Add the SSH commands to ``tether``."""
    cli.add_command(ssh)
    cli.add_command(scp)
    cli.add_command(ls)
    shared_group(cli, "proxy").add_command(proxy_ssh)
    cli.add_command(config_command)
