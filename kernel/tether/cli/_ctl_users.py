"""``tetherctl users``: the cluster's local users, and the sign-up command a new one runs."""

from __future__ import annotations

import datetime
import shlex
import sys

import click

from tether.cli._common import (
    completer,
    emit_table,
    format_option,
    output,
    run_async,
    split_csv,
    split_kv,
)
from tether.cli._ctl_target import connect
from tether.durations import format_duration
from tether.errors import TetherError

__all__ = ["users"]


async def _user_names(ctx: click.Context, incomplete: str) -> list[str]:
    async with connect(ctx).client as client:
        return [doc["metadata"]["name"] for doc in await client.get_resources("user")]


@click.group()
def users() -> None:
    """Manage local users."""


def _read_stdin_password() -> str:
    line = sys.stdin.readline()
    if not line:
        raise TetherError("no password on standard input")
    return line.rstrip("\r\n")


@users.command("add")
@click.argument("name")
@click.option("--roles", required=True, help="Comma-separated roles, e.g. access,editor.")
@click.option("--logins", help="Comma-separated OS logins (the `logins` trait).")
@click.option("--traits", help="More traits: key=value,key=value2.")
@click.option("--password-stdin", is_flag=True, help="Set the password from standard input.")
@click.pass_context
@run_async
async def users_add(
    ctx: click.Context,
    name: str,
    roles: str,
    logins: str | None,
    traits: str | None,
    password_stdin: bool,
) -> None:
    """Add a local user; prints a one-time sign-up token unless --password-stdin."""
    all_traits = split_kv(traits, "--traits")
    if logins is not None:
        all_traits["logins"] = split_csv(logins)
    password = _read_stdin_password() if password_stdin else None
    target = connect(ctx)
    async with target.client as client:
        token = await client.add_user(
            name, roles=split_csv(roles), traits=all_traits, password=password
        )
        ca_pin = None if token is None else (await client.cluster())["ca_pin"]
    if token is None or ca_pin is None:
        click.echo(f'User "{name}" has been created.')
        return
    expires = datetime.datetime.fromisoformat(token["expires"].replace("Z", "+00:00"))
    left = format_duration(expires - datetime.datetime.now(datetime.UTC))
    command = [
        "tether",
        "signup",
        f"--proxy={target.proxy or 'PROXY:PORT'}",
        f"--token={token['token']}",
        *target.trust_flags(ca_pin),
    ]
    click.echo(
        f'User "{name}" has been created but requires a password. Share this command with the '
        f"user to choose one; the token is valid for {left}:\n\n{shlex.join(command)}\n"
    )


@users.command("ls")
@format_option()
@click.pass_context
@run_async
async def users_ls(ctx: click.Context, fmt: str) -> None:
    """List users."""
    target = connect(ctx)
    async with target.client as client:
        docs = await client.get_resources("user")
    output(
        docs,
        fmt,
        text=lambda: emit_table(
            ["User", "Roles"],
            [(d["metadata"]["name"], ",".join(d["spec"].get("roles", []))) for d in docs],
        ),
    )


@users.command("rm")
@click.argument("name", shell_complete=completer(_user_names))
@click.pass_context
@run_async
async def users_rm(ctx: click.Context, name: str) -> None:
    """Delete a user."""
    target = connect(ctx)
    async with target.client as client:
        click.echo(await client.delete_resource("user", name))


@users.command("update")
@click.argument("name", shell_complete=completer(_user_names))
@click.option("--set-roles", help="Replace the user's roles (comma-separated).")
@click.option("--set-logins", help="Replace the user's logins trait (comma-separated).")
@click.option("--set-traits", help="Replace these traits: key=value,...")
@click.pass_context
@run_async
async def users_update(
    ctx: click.Context,
    name: str,
    set_roles: str | None,
    set_logins: str | None,
    set_traits: str | None,
) -> None:
    """Change a user's roles or traits."""
    traits = split_kv(set_traits, "--set-traits") if set_traits else {}
    if set_logins is not None:
        traits["logins"] = split_csv(set_logins)
    if set_roles is None and not traits:
        raise TetherError(
            "nothing to update", hint="pass --set-roles, --set-logins or --set-traits"
        )
    target = connect(ctx)
    async with target.client as client:
        click.echo(
            await client.update_user(
                name,
                roles=split_csv(set_roles) if set_roles is not None else None,
                traits=traits or None,
            )
        )
