"""``tetherd demo``: the trusted-clusters guide's whole setup, throw-away, on 127.0.0.1.

It runs two daemons in this process, each with its own configuration and data directory in one
temporary directory: the root cluster ``root`` (auth and proxy) with the user ``demo`` (role
``access``, the local user's name as login, a random password), and the leaf cluster ``leaf``
(auth and proxy, and with the SSH plugin installed the node ``leaf-node``) with the role
``visitor``. Then it does what the guide's administrators do, through each cluster's local
admin identity as ``tetherctl -c`` would: an invitation token on the root, a ``trusted_cluster``
on the leaf mapping ``access`` to ``visitor``, and waits until the root sees the leaf online.
It prints the commands to try; Ctrl-C stops both daemons and removes the directory.
"""

from __future__ import annotations

import datetime
import getpass
import pathlib
import secrets
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import trio

from tether.auth.http_client import admin_client
from tether.config import (
    Config,
    ConfigSchema,
    config_from_dict,
    config_to_dict,
    installed_schema,
)
from tether.daemon import run_daemon, wait_for_stop_signal
from tether.errors import TetherError
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry
from tether.yamlio import dump_yaml

if TYPE_CHECKING:
    from tether.cli import Progress

__all__ = [
    "DEMO_ROLES",
    "DEMO_USER",
    "LEAF_CLUSTER",
    "LEAF_NODE",
    "ROOT_CLUSTER",
    "demo_config",
    "run_demo",
]

DEMO_USER = "demo"
DEMO_ROLES = ("access",)
ROOT_CLUSTER = "root"
LEAF_CLUSTER = "leaf"
LEAF_NODE = "leaf-node"
#: the leaf's role for root users. There is no ``visitor`` OS account here, so the role lets
#: them in as the logins the root gave them (the local user's name).
VISITOR_ROLE: dict[str, Any] = {
    "kind": "role",
    "version": "v7",
    "metadata": {"name": "visitor"},
    "spec": {"allow": {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}}},
}
INVITATION_TTL = datetime.timedelta(minutes=5)
#: the leaf dials at once, and the root says online at its next heartbeat flush (5 s);
#: this only bounds a broken setup
ONLINE_TIMEOUT = 30.0


def demo_config(
    directory: pathlib.Path,
    cluster_name: str,
    *,
    nodename: str,
    with_node: bool = False,
    schema: ConfigSchema | None = None,
) -> Config:
    """One cluster: auth and proxy on free loopback ports, data in ``directory/data``, and
    with ``with_node`` this host as its node ``nodename`` labelled ``env=demo`` (the section
    of the plugin that registers the ``node`` role, ``ssh_service``).

    :param schema: the plugins' sections and roles; default: the installed plugins'.
    """
    data: dict[str, Any] = {
        "cluster_name": cluster_name,
        "nodename": nodename,
        "data_dir": str(directory / "data"),
        "auth_service": {"listen_addr": "127.0.0.1:0"},
        "proxy_service": {"listen_addr": "127.0.0.1:0"},
    }
    if with_node:
        schema = schema or installed_schema()
        node = {"enabled": True, "listen_addr": "127.0.0.1:0", "labels": {"env": "demo"}}
        data[schema.roles["node"].section] = node
    return config_from_dict(data, schema)


def _write_config(config: Config, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(dump_yaml(config_to_dict(config)))
    return path


def _has_nodes(pm: TetherPluginManager) -> bool:
    """Whether a protocol plugin that serves nodes (``tether-ssh``) is installed."""
    return "node" in KindRegistry.from_plugins(pm)


async def _run_daemon_then_stop(
    config: Config,
    pm: TetherPluginManager,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # both daemons stop together, each with its graceful steps, whichever way one stops
    try:
        await run_daemon(config, pm, stop=stop, task_status=task_status)
    finally:
        stop.set()


async def _stop_on_signal(stop: trio.Event, scope: trio.CancelScope) -> None:
    with scope:  # cancelled once the daemons stop some other way
        await wait_for_stop_signal()
        stop.set()


def _trusted_cluster(token: str, root_proxy: str, ca_pin: str) -> dict[str, Any]:
    """The guide's ``trusted_cluster`` for the leaf: root users with ``access`` are visitors."""
    return {
        "kind": "trusted_cluster",
        "version": "v2",
        "metadata": {"name": ROOT_CLUSTER},
        "spec": {
            "enabled": True,
            "token": token,
            "web_proxy_addr": root_proxy,
            "tunnel_addr": root_proxy,
            "ca_pin": ca_pin,
            "role_map": [{"remote": "access", "local": ["visitor"]}],
        },
    }


async def _add_demo_user(root: Config, login: str) -> str:
    """The root's user ``demo`` with a random password, which is returned."""
    password = secrets.token_urlsafe(12)
    client, _ = admin_client(root)
    async with client:
        await client.add_user(
            DEMO_USER, roles=DEMO_ROLES, traits={"logins": [login]}, password=password
        )
    return password


async def _invite_leaf(root: Config) -> tuple[str, str]:
    """The guide's ``tctl tokens add --type=trusted_cluster`` on the root: the invitation
    token and the root's CA pin."""
    client, _ = admin_client(root)
    async with client:
        invitation = await client.add_token("trusted_cluster", INVITATION_TTL)
    return str(invitation["token"]), str(invitation["ca_pin"])


async def _trust_root(leaf: Config, token: str, root_proxy: str, ca_pin: str) -> None:
    """The guide's ``tctl create`` of the role ``visitor`` and the ``trusted_cluster`` on the
    leaf; creating the latter runs the handshake with the root."""
    client, _ = admin_client(leaf)
    async with client:
        await client.create_resources([VISITOR_ROLE])
        await client.create_resources([_trusted_cluster(token, root_proxy, ca_pin)])


async def _wait_leaf_online(root: Config) -> None:
    """Until the root's ``remote_cluster`` for the leaf says ``connection: online``."""
    client, _ = admin_client(root)
    async with client:
        with trio.move_on_after(ONLINE_TIMEOUT):
            while True:
                found = await client.get_resources("remote_cluster", LEAF_CLUSTER)
                if (found[0].get("status") or {}).get("connection") == "online":
                    return
                await trio.sleep(0.25)
    raise TetherError(
        f"the leaf cluster did not reach the root within {ONLINE_TIMEOUT:.0f}s",
        hint="run `tetherd --debug demo` to see the tunnel's logs",
    )


async def run_demo(
    plugin_manager: Callable[[], TetherPluginManager],
    out: TextIO,
    *,
    directory: pathlib.Path | None = None,
    progress: Progress | None = None,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until cancelled; reports the root proxy address, the root's CA pin, the
    password and both configuration paths.

    :param plugin_manager: builds a plugin manager; each daemon gets one of its own.
    :param directory: where the clusters live (kept); default: a temporary one, removed.
    :param progress: shows each step of the start-up (a few seconds), done before the
        commands are printed.
    """

    def step(text: str) -> None:
        if progress is not None:
            progress.step(text)

    owned = directory is None
    base = pathlib.Path(tempfile.mkdtemp(prefix="tether-demo-")) if owned else directory
    assert base is not None
    try:
        root_pm, leaf_pm = plugin_manager(), plugin_manager()
        with_node = _has_nodes(leaf_pm)
        root = demo_config(base / ROOT_CLUSTER, ROOT_CLUSTER, nodename="localhost")
        leaf = demo_config(
            base / LEAF_CLUSTER,
            LEAF_CLUSTER,
            nodename=LEAF_NODE,
            with_node=with_node,
            schema=ConfigSchema.from_plugins(leaf_pm),
        )
        root_path = _write_config(root, base / ROOT_CLUSTER / "tether.yaml")
        leaf_path = _write_config(leaf, base / LEAF_CLUSTER / "tether.yaml")
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            watching = trio.CancelScope()
            nursery.start_soon(_stop_on_signal, stop, watching)
            step(f'Starting the leaf cluster "{LEAF_CLUSTER}"')
            await nursery.start(_run_daemon_then_stop, leaf, leaf_pm, stop)
            step(f'Starting the root cluster "{ROOT_CLUSTER}"')
            info = await nursery.start(_run_daemon_then_stop, root, root_pm, stop)
            proxy = str(info["proxy_addr"])
            login = getpass.getuser()
            step(f'Adding the user "{DEMO_USER}" to the root')
            password = await _add_demo_user(root, login)
            step("Inviting the leaf: a trusted_cluster token on the root")
            token, pin = await _invite_leaf(root)
            step("The leaf joins the root: trusted_cluster and role visitor")
            await _trust_root(leaf, token, proxy, pin)
            step("Waiting for the leaf's tunnel to the root")
            await _wait_leaf_online(root)
            if progress is not None:
                progress.done("The leaf trusts the root and its tunnel is up")
            _print_commands(
                out,
                proxy=proxy,
                pin=pin,
                password=password,
                login=login,
                with_node=with_node,
                root_path=root_path,
                leaf_path=leaf_path,
            )
            task_status.started(
                {
                    "proxy": proxy,
                    "ca_pin": pin,
                    "password": password,
                    "root_config": str(root_path),
                    "leaf_config": str(leaf_path),
                }
            )
            await stop.wait()
            watching.cancel()
        # stopped by SIGTERM, SIGHUP or Ctrl-C (one before the daemons watch is a KeyboardInterrupt,
        # reported by `tetherd demo` with the same line)
        out.write("\nDemo stopped.\n")
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)


def _print_commands(
    out: TextIO,
    *,
    proxy: str,
    pin: str,
    password: str,
    login: str,
    with_node: bool,
    root_path: pathlib.Path,
    leaf_path: pathlib.Path,
) -> None:
    roles = ", ".join(DEMO_ROLES)
    lines = [
        f'Tether demo: root cluster "{ROOT_CLUSTER}" and leaf cluster "{LEAF_CLUSTER}" on '
        "127.0.0.1, the leaf trusting the root; Ctrl-C stops them.",
        "",
        f"  root proxy    {proxy}",
        f"  CA pin        {pin}",
        f"  user          {DEMO_USER} (role {roles}, login {login}; mapped to visitor on the leaf)",
        f"  password      {password}",
        *([f"  leaf node     {LEAF_NODE} (env=demo)"] if with_node else []),
        f"  root config   {root_path}",
        f"  leaf config   {leaf_path}",
        "",
        f"Try, in another terminal, as the user {DEMO_USER}:",
        "",
        f"  echo {password} | tether login --proxy={proxy} --user={DEMO_USER} "
        f"--password-stdin --ca-pin={pin}",
        "  tether clusters",
        *(
            [
                f"  tether ls --cluster={LEAF_CLUSTER}",
                f"  tether ssh --cluster={LEAF_CLUSTER} {login}@{LEAF_NODE} 'whoami'",
            ]
            if with_node
            else ["  (install plugins/tether-ssh for a leaf node to `tether ssh` into)"]
        ),
        "  tether logout",
        "",
        "and as each cluster's admin (the local admin identity of its configuration):",
        "",
        f"  tetherctl -c {root_path} get rc",
        f"  tetherctl -c {leaf_path} get trusted_cluster/{ROOT_CLUSTER}",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()
