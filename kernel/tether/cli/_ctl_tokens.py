"""``tetherctl tokens``: join and invitation tokens, and the ``tetherd start`` command a host
joining with one runs.
"""

from __future__ import annotations

import datetime
import os
import shlex
from collections.abc import Mapping
from typing import Any

import click

from tether.cli._common import (
    configured_disabled,
    emit_table,
    format_option,
    output,
    plugin_manager,
    run_async,
    split_kv,
)
from tether.cli._ctl_target import CONFIG_ENV, Target, connect
from tether.config import ConfigSchema
from tether.durations import format_duration, parse_duration
from tether.token_types import TokenType, split_type_names

__all__ = ["describe_token_types", "tokens"]


@click.group()
def tokens() -> None:
    """Manage join and invitation tokens."""


@tokens.command("add")
@click.option(
    "--type",
    "type_name",
    required=True,
    help="The token type: node, proxy, ...; several separated by commas (node,db) for a host "
    "that serves them all.",
)
@click.option("--ttl", default="30m", show_default=True, help="How long the token is valid.")
@click.option("--labels", help="Labels for what joins with it: key=value,...")
@format_option()
@click.pass_context
@run_async
async def tokens_add(
    ctx: click.Context, type_name: str, ttl: str, labels: str | None, fmt: str
) -> None:
    """Create a token; prints it with its expiry and the cluster CA pin.

    With --format=json or yaml, tctl's shape: {token, type, expires, ca_pin, ...}.
    """
    try:
        ttl_delta = parse_duration(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    label_map = {k: v[-1] for k, v in split_kv(labels, "--labels").items()}
    target = connect(ctx)
    async with target.client as client:
        info = await client.add_token(type_name, ttl_delta, label_map)
    if fmt != "text":
        output(info, fmt)
        return
    what = "cluster invite token" if type_name == "trusted_cluster" else "invite token"
    click.echo(f"The {what}: {info['token']}")
    click.echo(f"This token will expire in {format_duration(ttl_delta)}.")
    click.echo(f"CA pin: {info['ca_pin']}")
    joining = _join_command(ctx, target, type_name, info)
    if joining is not None:
        command, server = joining
        click.echo(
            f"\nRun this on the new host to join the cluster:\n\n{shlex.join(command)}\n\n"
            "Please note:\n"
            "  - the token is needed for the first start only, and expires in "
            f"{format_duration(ttl_delta)}\n"
            f"  - {server} must be reachable from the new host\n"
            "  - --token also takes the absolute path of a file holding the token, which keeps "
            "it out of the shell's history"
        )


def _join_command(
    ctx: click.Context, target: Target, type_name: str, info: Mapping[str, Any]
) -> tuple[list[str], str] | None:
    """``tetherd start`` for a host joining with a token of ``type_name`` (as tctl prints
    ``teleport start``), and the address it joins: a proxy joins the auth service, a service
    of a plugin's role (a node) joins through the proxy in tunnel mode. None for other types,
    or when that address is not known here."""
    config_path = ctx.obj.get("config") or os.environ.get(CONFIG_ENV)
    roles = ConfigSchema.from_plugins(plugin_manager(configured_disabled(config_path))).roles
    names = split_type_names(type_name)
    if not names or any(name not in roles or name == "auth" for name in names):
        return None
    if "proxy" in names and len(names) > 1:
        return None  # a proxy joins auth, the others the proxy: no one command does both
    flag, server = (
        ("--auth-server", target.auth) if names == ["proxy"] else ("--proxy", target.proxy)
    )
    if server is None:
        return None
    command = [
        "tetherd",
        "start",
        f"--roles={','.join(names)}",
        f"--token={info['token']}",
        f"{flag}={server}",
        *target.trust_flags(info["ca_pin"]),
    ]
    return command, server


@tokens.command("ls")
@format_option()
@click.pass_context
@run_async
async def tokens_ls(ctx: click.Context, fmt: str) -> None:
    """List tokens that have not expired.

    With --format=json or yaml, each token as a resource, as tctl prints them: kind token,
    metadata.name the token, metadata.expires, spec.roles its type.
    """
    target = connect(ctx)
    async with target.client as client:
        found = await client.list_tokens()
    output([_token_resource(t) for t in found], fmt, text=lambda: _tokens_table(found))


def _token_resource(token: Mapping[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": token["token"], "labels": dict(token.get("labels", {}))}
    if token["expires"]:
        metadata["expires"] = token["expires"]
    return {
        "kind": "token",
        "version": "v2",
        "metadata": metadata,
        "spec": {"roles": split_type_names(token["type"])},  # node,db: both, as tctl's
    }


def _tokens_table(found: list[dict[str, Any]]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for t in found:
        expiry = ""
        if t["expires"]:
            when = datetime.datetime.fromisoformat(t["expires"].replace("Z", "+00:00"))
            expiry = f"{when:%d %b %y %H:%M} UTC ({format_duration(when - now)})"
        labels = ",".join(f"{k}={v}" for k, v in t.get("labels", {}).items())
        rows.append((t["token"], t["type"], labels, expiry))
    emit_table(["Token", "Type", "Labels", "Expiry Time (UTC)"], rows)


@tokens.command("rm")
@click.argument("token")
@click.pass_context
@run_async
async def tokens_rm(ctx: click.Context, token: str) -> None:
    """Delete a token."""
    target = connect(ctx)
    async with target.client as client:
        click.echo(await client.delete_token(token))


def describe_token_types(types: Mapping[str, TokenType]) -> None:
    """List the registered token types in ``tetherctl tokens add --help``; the auth service
    checks the value against its own list."""
    for param in tokens_add.params:
        if param.name == "type_name" and isinstance(param, click.Option):
            param.help = "; ".join(f"{t.name}: {t.description}" for t in types.values()) + "."
