"""``tetherd demo``: a throw-away cluster on 127.0.0.1 with a user to log in as.

It runs the same daemon as ``tetherd start`` with a generated configuration in a temporary
directory, creates the user ``demo`` (roles ``access`` and ``editor``, the local user's name as
login) with a random password through the local admin identity, and prints the commands to
try. With the SSH plugin installed, this host is also a node of the cluster. Ctrl-C stops it
and removes the directory.
"""

from __future__ import annotations

import getpass
import pathlib
import secrets
import shutil
import tempfile
from typing import TextIO

import trio

from tether.auth.client import admin_client
from tether.config import (
    AuthServiceConfig,
    Config,
    HostPort,
    ProxyServiceConfig,
    SshServiceConfig,
    config_to_dict,
    default_config,
)
from tether.daemon import run_daemon
from tether.plugins import TetherPluginManager
from tether.resources import KindRegistry
from tether.yamlio import dump_yaml

__all__ = ["DEMO_ROLES", "DEMO_USER", "demo_config", "run_demo"]

DEMO_USER = "demo"
DEMO_ROLES = ("access", "editor")


def demo_config(directory: pathlib.Path, *, with_node: bool = False) -> Config:
    """A single cluster named ``demo``: auth and proxy on free loopback ports, and with
    ``with_node`` this host as a node labelled ``env=demo``."""
    return default_config(
        cluster_name="demo",
        nodename="localhost",
        data_dir=directory / "data",
        auth_service=AuthServiceConfig(listen_addr=HostPort("127.0.0.1", 0)),
        proxy_service=ProxyServiceConfig(listen_addr=HostPort("127.0.0.1", 0)),
        ssh_service=SshServiceConfig(
            enabled=with_node, listen_addr=HostPort("127.0.0.1", 0), labels={"env": "demo"}
        ),
    )


def _has_nodes(pm: TetherPluginManager) -> bool:
    """Whether a protocol plugin that serves nodes (``tether-ssh``) is installed."""
    return "node" in KindRegistry.from_plugins(pm)


async def _run_daemon_then_stop(
    config: Config,
    pm: TetherPluginManager,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # the daemon returns when SIGTERM or SIGHUP stops it; the demo ends with it
    await run_daemon(config, pm, task_status=task_status)
    scope.cancel()


async def run_demo(
    pm: TetherPluginManager,
    out: TextIO,
    *,
    directory: pathlib.Path | None = None,
    task_status: trio.TaskStatus[dict[str, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the demo until cancelled; reports the proxy address, CA pin and password."""
    owned = directory is None
    base = pathlib.Path(tempfile.mkdtemp(prefix="tether-demo-")) if owned else directory
    assert base is not None
    try:
        with_node = _has_nodes(pm)
        config = demo_config(base, with_node=with_node)
        config_path = base / "tether.yaml"
        config_path.write_text(dump_yaml(config_to_dict(config)))
        async with trio.open_nursery() as nursery:
            info = await nursery.start(_run_daemon_then_stop, config, pm, nursery.cancel_scope)
            password = secrets.token_urlsafe(12)
            login = getpass.getuser()
            client, proxy = admin_client(config)
            async with client:
                await client.add_user(
                    DEMO_USER,
                    roles=DEMO_ROLES,
                    traits={"logins": [login]},
                    password=password,
                )
            pin = info["ca_pin"]
            out.write(
                f'Tether demo cluster "{config.cluster_name}" is running; Ctrl-C stops it.\n\n'
                f"  proxy      {proxy}\n"
                f"  CA pin     {pin}\n"
                f"  user       {DEMO_USER} (roles {', '.join(DEMO_ROLES)})\n"
                f"  password   {password}\n"
                f"  config     {config_path}\n\n"
                "Try, in another terminal:\n\n"
                f"  echo {password} | tether login --proxy={proxy} --user={DEMO_USER} "
                f"--password-stdin --ca-pin={pin}\n"
                "  tether status\n"
                + (
                    f"  tether ls\n  tether ssh {login}@localhost 'whoami; uname -a'\n"
                    if with_node
                    else "  (install plugins/tether-ssh for a node to `tether ssh` into)\n"
                )
                + "  tetherctl get role/access\n"
                f"  tetherctl -c {config_path} users ls\n"
                "  tetherctl audit search\n"
                "  tether logout\n"
            )
            out.flush()
            task_status.started(
                {
                    "proxy": str(proxy),
                    "ca_pin": pin,
                    "password": password,
                    "config": str(config_path),
                }
            )
            await trio.sleep_forever()
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
