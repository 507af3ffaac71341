"""``tether``'s commands about the login: ``login``, ``signup``, ``clusters``, ``status`` and
``logout`` (``tsh``'s). :mod:`tether.cli.tether` imports this module when one of them is named."""

from __future__ import annotations

import datetime
import getpass
import shlex
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click
from click.decorators import FC

from tether import pki
from tether.auth.http_client import AuthClient
from tether.cli._common import (
    complete_clusters,
    emit_table,
    format_option,
    output,
    plugin_manager,
    run_async,
)
from tether.client.env import CLUSTER_ENV, PROXY_ENV, USER_ENV
from tether.client.profile import (
    Profile,
    clear_profiles,
    current_profile,
    find_profile,
    not_logged_in,
    profile_ssl_context,
    require_profile,
    save_profile,
    select_cluster,
)
from tether.client.web import find_proxy, proxy_call
from tether.durations import parse_duration
from tether.errors import NotFound, TetherError

__all__ = ["clusters", "login", "logout", "signup", "status"]


def _read_password(password_stdin: bool, prompt: str = "Password") -> str:
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise TetherError("no password on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise TetherError("no terminal to ask for the password", hint="use --password-stdin")
    return getpass.getpass(f"{prompt}: ")


def _ttl(value: str | None) -> datetime.timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None


def _proxy_option(what: str) -> Callable[[FC], FC]:
    return click.option(
        "--proxy",
        envvar=PROXY_ENV,
        show_envvar=True,
        help=f"Proxy address, HOST[:PORT]; without a port, 443 and 3080 are tried at once. {what}",
    )


def _still_valid(profile: Profile) -> bool:
    return profile.identity().expires > datetime.datetime.now(datetime.UTC)


@click.command()
@_proxy_option("Default: the current login's.")
@click.option(
    "--user",
    envvar=USER_ENV,
    show_envvar=True,
    help="Tether user name (default: the stored login's, else your local user name).",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", is_flag=True, help="Do not verify the proxy (testing only).")
@click.option(
    "--ca-pin",
    help="Trust the proxy whose cluster CA has this sha256 pin (default: the stored login's).",
)
@click.option("--ttl", help="Certificate lifetime (capped by your roles), e.g. 8h.")
@click.option(
    "--auth",
    "connector",
    default="local",
    show_default=True,
    help="Identity connector to log in with.",
)
@click.option(
    "--browser/--no-browser",
    default=True,
    show_default=True,
    help="Open the identity provider's page in a browser (single sign-on connectors).",
)
@click.argument("cluster", required=False, envvar=CLUSTER_ENV, shell_complete=complete_clusters)
@run_async
async def login(
    cluster: str | None,
    proxy: str | None,
    user: str | None,
    password_stdin: bool,
    insecure: bool,
    ca_pin: str | None,
    ttl: str | None,
    connector: str,
    browser: bool,
) -> None:
    """Log in and store short-lived certificates.

    CLUSTER (default: $TETHER_CLUSTER) selects a leaf cluster, as `tether clusters` lists
    them, for later commands. A login to the proxy that is still valid is reused: switching
    clusters asks for no password. A proxy logged in to before keeps its CA pin.
    """
    ttl_delta = _ttl(ttl)
    ttl_seconds = ttl_delta.total_seconds() if ttl_delta else None
    stored = find_profile(proxy) if proxy else current_profile()
    if stored is not None:
        proxy = stored.proxy
        if not insecure and ca_pin is None:
            insecure, ca_pin = stored.insecure, stored.ca_pin
    elif proxy is None:
        raise TetherError(
            "no proxy to log in to",
            hint=f"pass --proxy=HOST[:PORT], or set {PROXY_ENV}",
        )
    if (
        cluster
        and stored is not None
        and _still_valid(stored)
        and user in (None, stored.identity().username)
    ):
        # tsh's `tsh login LEAF` on a valid login: the certificates serve every cluster
        await _select(stored, cluster)
        _print_status(_status_json(), sys.stdout)
        return
    proxy, context = await find_proxy(proxy, insecure=insecure, ca_pin=ca_pin)
    if user is None:
        user = stored.identity().username if stored is not None else getpass.getuser()
    key = pki.generate_private_key()
    if connector != "local" and await _connector_type(proxy, context, connector) != "password":
        from tether.client.sso_login import sso_login  # only single sign-on needs its listener

        result = await sso_login(
            proxy,
            context,
            connector,
            key,
            ttl_seconds=ttl_seconds,
            show_url=lambda url: click.echo(
                f"Log in with {connector} in your browser, then approve the login there:\n  {url}",
                err=True,
            ),
            open_browser=browser,
        )
    else:
        result = await proxy_call(
            proxy,
            "POST",
            "/webapi/login",
            context,
            json={
                "user": user,
                "password": _read_password(password_stdin),
                "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
                "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
                "ttl_seconds": ttl_seconds,
                "connector": connector,
            },
        )
    identity = pki.Identity.from_json(result["identity"])
    profile = save_profile(
        proxy,
        private_key=key,
        ssh_cert=result["ssh_cert"],
        tls_cert_pem=result["tls_cert"],
        tls_ca_pems=list(result["tls_ca_certs"]),
        ssh_host_ca_lines=list(result["ssh_host_ca"]),
        cluster=identity.cluster,
        insecure=insecure,
        ca_pin=ca_pin,
    )
    if cluster:
        # the guide's `tsh login --proxy=ROOT LEAF`: later commands default to the leaf
        await _select(profile, cluster)
    _tell_plugins(profile)
    _print_status(_status_json(), sys.stdout)


def _tell_plugins(profile: Profile) -> None:
    """``tether_client_logged_in``: each plugin updates what it wrote for this proxy; one
    that fails is a warning, never a failed login."""
    hook = plugin_manager().hook.tether_client_logged_in
    for impl in hook.get_hookimpls():
        try:
            impl.function(profile=profile)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not undo the login
            click.echo(
                f"warning: plugin {impl.plugin_name!r} could not update its files for this "
                f"login: {exc}",
                err=True,
            )


async def _select(profile: Profile, cluster: str) -> None:
    """Make ``cluster`` (the login's own, or a leaf the user may see) the default target."""
    if cluster == profile.identity().cluster:
        select_cluster(profile, None)
        return
    await _check_visible(profile, cluster)
    select_cluster(profile, cluster)


async def _connector_type(proxy: str, context: ssl.SSLContext, name: str) -> str:
    """``password`` or the kind of single sign-on connector ``name`` is, as the cluster says."""
    body = await proxy_call(proxy, "GET", "/webapi/connectors", context)
    types = {c["name"]: c["type"] for c in body["connectors"]}
    if name not in types:
        raise NotFound(
            f"cluster has no connector {name!r}",
            hint=f"choose one of: {', '.join(sorted(types)) or 'none'}",
        )
    return str(types[name])


async def _remote_clusters(profile: Profile, name: str | None = None) -> list[dict[str, Any]]:
    """The leaf clusters this user may see (cluster_labels), as documents."""
    async with AuthClient(f"https://{profile.proxy}", profile_ssl_context(profile)) as auth:
        return await auth.get_resources("remote_cluster", name)


async def _check_visible(profile: Profile, cluster: str) -> None:
    try:
        await _remote_clusters(profile, cluster)
    except NotFound:
        raise NotFound(
            f"cluster {cluster!r} not found", hint="run `tether clusters` to see them"
        ) from None


@click.command()
@format_option()
@run_async
async def clusters(fmt: str) -> None:
    """List the root cluster and the leaf clusters you can reach.

    With --format=json or yaml, one object per cluster with tsh's keys: cluster_name, status,
    cluster_type (root or leaf), labels and selected.
    """
    profile = require_profile()
    root = profile.identity().cluster
    rows: list[dict[str, Any]] = [
        {"cluster_name": root, "status": "online", "cluster_type": "root", "labels": {}}
    ]
    for doc in sorted(await _remote_clusters(profile), key=lambda d: d["metadata"]["name"]):
        rows.append(
            {
                "cluster_name": doc["metadata"]["name"],
                "status": (doc.get("status") or {}).get("connection", "offline"),
                "cluster_type": "leaf",
                "labels": doc["metadata"].get("labels", {}),
            }
        )
    # read once: profile.cluster parses the certificate file, once per row was a thousand
    # parses for a root with a thousand leaves
    selected = profile.selected_cluster or root
    for row in rows:
        row["selected"] = row["cluster_name"] == selected
    output(
        rows,
        fmt,
        text=lambda: emit_table(
            ["Cluster Name", "Status", "Cluster Type", "Labels", "Selected"],
            [
                (
                    r["cluster_name"],
                    r["status"],
                    r["cluster_type"],
                    ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())),
                    "*" if r["selected"] else "",
                )
                for r in rows
            ],
        ),
    )


@click.command()
@_proxy_option("")
@click.option("--token", required=True, help="The sign-up token from `tetherctl users add`.")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.option("--insecure", is_flag=True, help="Do not verify the proxy (testing only).")
@click.option("--ca-pin", help="Trust the proxy whose cluster CA has this sha256 pin.")
@run_async
async def signup(
    proxy: str | None, token: str, password_stdin: bool, insecure: bool, ca_pin: str | None
) -> None:
    """Choose the password of a new user with a one-time sign-up token.

    Prints the `tether login` command that logs the user in.
    """
    if proxy is None:
        raise TetherError(
            "no proxy to sign up at", hint=f"pass --proxy=HOST[:PORT], or set {PROXY_ENV}"
        )
    proxy, context = await find_proxy(proxy, insecure=insecure, ca_pin=ca_pin)
    password = _read_password(password_stdin, "New password")
    body = await proxy_call(
        proxy, "POST", "/webapi/signup", context, json={"token": token, "password": password}
    )
    command = ["tether", "login", f"--proxy={proxy}", f"--user={body['user']}"]
    if ca_pin:
        command.append(f"--ca-pin={ca_pin}")
    if insecure:
        command.append("--insecure")
    click.echo(f"User {body['user']!r} is ready; log in with:\n\n{shlex.join(command)}\n")


def _status_json() -> dict[str, Any] | None:
    profile = current_profile()
    if profile is None:
        return None
    identity = profile.identity()
    now = datetime.datetime.now(datetime.UTC)
    return {
        "active": {
            "profile_url": f"https://{profile.proxy}",
            "username": identity.username,
            "cluster": profile.selected_cluster or identity.route_to_cluster or identity.cluster,
            "root_cluster": identity.cluster,
            "roles": list(identity.roles),
            "logins": list(identity.logins),
            "traits": {k: list(v) for k, v in identity.traits.items()},
            "valid_until": identity.expires.isoformat().replace("+00:00", "Z"),
            "expired": identity.expires <= now,
            "ssh_cert_file": str(profile.ssh_cert_file),
            "tls_cert_file": str(profile.tls_cert_file),
            "tls_ca_file": str(profile.tls_ca_file),
            "private_key_file": str(profile.private_key_file),
            "tls_key_file": str(profile.tls_key_file),
            "known_hosts_file": str(profile.known_hosts_file),
        }
    }


def _print_status(status: dict[str, Any] | None, stream: Any) -> None:
    if status is None:
        raise not_logged_in()
    a = status["active"]
    now = datetime.datetime.now(datetime.UTC)
    until = datetime.datetime.fromisoformat(a["valid_until"].replace("Z", "+00:00"))
    left = "EXPIRED" if a["expired"] else f"valid for {_human(until - now)}"
    lines = [
        f"> Profile URL:        {a['profile_url']}",
        f"  Logged in as:       {a['username']}",
        f"  Cluster:            {a['cluster']}",
        f"  Roles:              {', '.join(a['roles'])}",
        f"  Logins:             {', '.join(a['logins'])}",
        f"  Valid until:        {until:%Y-%m-%d %H:%M:%S} UTC [{left}]",
    ]
    click.echo("\n".join(lines), file=stream)


def _human(delta: datetime.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60}m"


@click.command()
@format_option()
def status(fmt: str) -> None:
    """Show the current login: proxy, user, cluster, roles, logins, expiry.

    With --format=json or yaml, tsh's shape: {"active": {profile_url, username, cluster,
    roles, logins, traits, valid_until, ...}}.
    """
    data = _status_json()
    try:
        if data is None:
            _print_status(data, sys.stdout)
        output(data, fmt, text=lambda: _print_status(data, sys.stdout))
    except TetherError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)


@click.command()
def logout() -> None:
    """Remove every stored key and certificate."""
    removed = clear_profiles()
    if removed:
        for proxy in removed:
            click.echo(f"Logged out of {proxy}.")
    else:
        click.echo("Not logged in.")
