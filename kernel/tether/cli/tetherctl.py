"""``tetherctl``: cluster administration (``tctl`` in the guide).

It reaches auth like ``tctl``: on the auth host with ``-c tether.yaml`` (the daemon's config)
and the local admin identity in the data dir; anywhere else through the current ``tether login``
profile, where the proxy forwards to auth and the user's role rules decide.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import click
import trio

import tether
from tether import pki
from tether.audit import AuditQuery
from tether.auth.http_client import AuthClient, admin_client
from tether.cert_authority_types import KERNEL_CA_TYPES, CertAuthorityType, cert_authority_types
from tether.cli._common import (
    complete_var,
    completer,
    completion_command,
    config_path_from_argv,
    configured_disabled,
    emit_table,
    format_option,
    output,
    plugin_manager,
    run_async,
    setup_cli_logging,
    split_csv,
    split_kv,
    version_info,
)
from tether.cli._progress import progress
from tether.client.profile import current_profile, profile_ssl_context
from tether.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigSchema,
    default_config,
    load_config,
    secret_or_file,
)
from tether.datadir import admin_identity_paths
from tether.durations import format_duration, parse_duration
from tether.errors import AccessDenied, CompareFailed, NotFound, TetherError
from tether.resources import (
    CertAuthoritySpec,
    KindRegistry,
    Resource,
    ResourceKind,
    parse_resources,
    resource_from_dict,
    resource_to_dict,
)
from tether.token_types import TokenType, split_type_names, token_types
from tether.yamlio import dump_yaml

__all__ = ["cli", "main"]

CONFIG_ENV = "TETHER_CONFIG"
#: ``tetherctl create`` of this many resources says what it does even off a terminal
BULK = 20
#: ``tetherctl update`` reads and writes again this often when someone else writes between
_UPDATE_ATTEMPTS = 5


class Target:
    """Where this invocation's requests go, and how users and hosts reach the proxy.

    :param proxy: the proxy address to print in commands, None when none is known.
    :param auth: the auth service's address, where a joining proxy goes (``-c`` only).
    :param public_web_cert: the proxy's web certificate is one this machine trusts without
        the cluster's CA (``https_cert_file``, or a login without ``--ca-pin``): printed
        commands need no ``--ca-pin`` then.
    """

    def __init__(
        self,
        client: AuthClient,
        proxy: str | None,
        *,
        auth: str | None = None,
        public_web_cert: bool = False,
    ) -> None:
        self.client = client
        self.proxy = proxy
        self.auth = auth
        self.public_web_cert = public_web_cert

    def trust_flags(self, ca_pin: str) -> list[str]:
        """The flags a printed command needs to trust the cluster: ``--ca-pin``, unless the
        proxy's certificate is publicly trusted."""
        return [] if self.public_web_cert else [f"--ca-pin={ca_pin}"]


def _config_path(ctx: click.Context) -> str | os.PathLike[str] | None:
    """``-c``, else ``$TETHER_CONFIG``, else the auth host's :data:`DEFAULT_CONFIG` when it
    runs an auth service, as tctl reads ``/etc/teleport.yaml``; None when none applies (the
    login's profile is used). Read from the program's own parameters too, as shell completion
    parses them without running the group."""
    found = (ctx.obj or {}).get("config") or ctx.find_root().params.get("config")
    return found or os.environ.get(CONFIG_ENV) or _default_config()


def _started_without_a_file() -> Config | None:
    """The default configuration, when its data directory holds an admin identity this user
    may read: the auth service of a ``tetherd start`` with no file (tctl after ``teleport
    start``)."""
    defaults = default_config()
    cert, _, _ = admin_identity_paths(defaults.data_dir)
    return defaults if os.access(cert, os.R_OK) else None


def _default_config() -> str | None:
    """:data:`DEFAULT_CONFIG` if this user may read it and it enables the auth service (a
    node's or a proxy's configuration gives no admin identity: tctl ignores those too)."""
    path = pathlib.Path(DEFAULT_CONFIG)
    if not os.access(path, os.R_OK) or not path.is_file():
        return None
    return DEFAULT_CONFIG if load_config(path).auth_service.enabled else None


def _connect(ctx: click.Context) -> Target:
    """Act as the local admin when a configuration says where the auth service keeps its
    data, else as the user logged in, else as the local admin of a ``tetherd start`` that ran
    with no file (its data in the default data directory), as tctl falls back to its
    defaults."""
    config_path = _config_path(ctx)
    config = load_config(pathlib.Path(config_path)) if config_path else None
    profile = current_profile() if config is None else None
    if config is None and profile is None:
        config = _started_without_a_file()
    if config is not None:
        client, proxy = admin_client(config)
        public = config.proxy_service.public_addr
        return Target(
            client,
            str(public) if public is not None and public.port else proxy,
            auth=client.base_url.removeprefix("https://"),
            public_web_cert=config.proxy_service.https_cert_file is not None,
        )
    if profile is None:
        raise TetherError(
            f"not logged in, and no configuration given (-c), at {DEFAULT_CONFIG} or in "
            f"{default_config().data_dir}",
            hint="log in with `tether login`, or run tetherctl on the auth host with -c "
            "naming its tether.yaml",
        )
    return Target(
        AuthClient(f"https://{profile.proxy}", profile_ssl_context(profile)),
        profile.proxy,
        public_web_cert=not (profile.ca_pin or profile.insecure),
    )


def _registry(ctx: click.Context) -> KindRegistry:
    return KindRegistry.from_plugins(plugin_manager(configured_disabled(_config_path(ctx))))


async def _resource_refs(ctx: click.Context, incomplete: str) -> list[str]:
    """``KIND`` names while the kind is typed; ``KIND/NAME`` of what the cluster holds after
    the slash (the names the caller may see)."""
    kind_name, slash, _ = incomplete.partition("/")
    registry = _registry(ctx)
    if not slash:
        return [kind.name for kind in registry.kinds()]
    kind = registry.get(kind_name)
    async with _connect(ctx).client as client:
        docs = await client.get_resources(kind.name)
    return [f"{kind_name}/{doc['metadata']['name']}" for doc in docs]


async def _user_names(ctx: click.Context, incomplete: str) -> list[str]:
    async with _connect(ctx).client as client:
        return [doc["metadata"]["name"] for doc in await client.get_resources("user")]


@click.group()
@click.option(
    "-c",
    "--config",
    type=click.Path(path_type=pathlib.Path),
    help="The daemon's tether.yaml (on the auth host; uses the local admin identity); "
    "default: $TETHER_CONFIG, else the `tether login` profile.",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, config: pathlib.Path | None, debug: bool) -> None:
    """Administer a Tether cluster: resources, users, tokens, CAs, audit."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["debug"] = debug
    setup_cli_logging(debug)


# --- resources -------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.File("r"))
@click.option("-f", "--force", is_flag=True, help="Overwrite resources that exist.")
@click.pass_context
@run_async
async def create(ctx: click.Context, file: Any, force: bool) -> None:
    """Create resources from a YAML file (all documents or none)."""
    source = os.path.basename(file.name) if file.name != "<stdin>" else "<stdin>"
    resources = parse_resources(file.read(), source, _registry(ctx))
    if not resources:
        raise TetherError(f"{source}: no resources found")
    docs = [_read_token_file(resource_to_dict(r, with_secrets=True)) for r in resources]
    target = _connect(ctx)
    joins = [r for r in resources if r.kind == "trusted_cluster" and r.spec.enabled]
    title = (
        f"Creating {len(resources)} resources from {source}"
        if len(resources) > 1
        else f"Creating {resources[0].kind}/{resources[0].metadata.name}"
    )
    if joins:  # auth runs the handshake with each root before it answers
        roots = ", ".join(str(r.spec.web_proxy_addr) for r in joins)
        title += f"; joining the root cluster at {roots}"
    # a join, or a bulk file, takes seconds: say so; one small resource goes by unannounced
    with progress(title, plain=bool(joins) or len(resources) >= BULK) as shown:
        async with target.client as client:
            messages = await client.create_resources(docs, force=force)
        shown.done()
    for message in messages:
        click.echo(message)


def _read_token_file(doc: dict[str, Any]) -> dict[str, Any]:
    """A trusted_cluster's ``spec.token`` may be the absolute path of a file holding it, as
    ``tetherd start --token`` may. It is read here, on the machine of whoever runs ``create``:
    the auth service never reads a file a request names."""
    from tether.trust import TRUSTED_CLUSTER

    spec = doc.get("spec") or {}
    if doc["kind"] == TRUSTED_CLUSTER.name and spec.get("token"):
        name = doc["metadata"]["name"]
        spec["token"] = secret_or_file(spec["token"], f"trusted_cluster {name!r}: spec.token")
    return doc


def _split_ref(ref: str) -> tuple[str, str | None]:
    kind, _, name = ref.partition("/")
    return kind, (name or None)


@cli.command()
@click.argument("ref", metavar="KIND[/NAME]", shell_complete=completer(_resource_refs))
@format_option(
    "yaml",
    "json",
    "text",
    default="yaml",
    help="yaml and json round-trip through create; text is a table.",
)
@click.option("--with-secrets", is_flag=True, help="Include secret fields.")
@click.pass_context
@run_async
async def get(ctx: click.Context, ref: str, fmt: str, with_secrets: bool) -> None:
    """Show resources: tetherctl get role/visitor > visitor.yaml round-trips.

    --format=json prints a list, even for one KIND/NAME, as tctl does.

    ``tetherctl get all`` shows every resource of every kind.

    ``tetherctl get connectors`` lists every way to log in (password connectors and the
    single sign-on connector resources of every kind), by name and type.
    """
    kind_name, name = _split_ref(ref)
    if kind_name in ("connectors", "connector") and not name:
        await _get_connectors(ctx, fmt)
        return
    target = _connect(ctx)
    if kind_name == "all" and not name:
        # as ``tctl get all``: every resource of every kind, in one file ``create`` accepts
        async with target.client as client:
            docs = [
                doc
                for kind in _registry(ctx).kinds()
                for doc in await client.get_resources(kind.name, with_secrets=with_secrets)
            ]
    else:
        kind = _registry(ctx).get(kind_name)
        async with target.client as client:
            docs = await client.get_resources(kind.name, name, with_secrets=with_secrets)
    if fmt == "json":
        # a list even for one KIND/NAME, as tctl prints it: scripts read ``.[0]`` either way
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "yaml":
        click.echo("---\n".join(dump_yaml(d) for d in docs), nl=False)
    else:
        rows = []
        for d in docs:
            labels = ",".join(f"{k}={v}" for k, v in d["metadata"].get("labels", {}).items())
            rows.append(
                (d["kind"], d["metadata"]["name"], labels, d["metadata"].get("expires", ""))
            )
        emit_table(["Kind", "Name", "Labels", "Expires"], rows)


async def _get_connectors(ctx: click.Context, fmt: str) -> None:
    async with _connect(ctx).client as client:
        found = (await client.call("GET", "/v1/connectors"))["connectors"]
    output(
        found,
        fmt,
        text=lambda: emit_table(["Name", "Type"], [(c["name"], c["type"]) for c in found]),
    )


@cli.command()
@click.argument("ref", metavar="KIND/NAME", shell_complete=completer(_resource_refs))
@click.option(
    "--set-labels",
    "labels",
    required=True,
    metavar="K=V,...",
    help="Replace the resource's labels (an empty value removes them all).",
)
@click.pass_context
@run_async
async def update(ctx: click.Context, ref: str, labels: str) -> None:
    """Change a resource's labels, e.g. tetherctl update rc/leaf --set-labels=env=prod."""
    kind_name, name = _split_ref(ref)
    if not name:
        raise TetherError(f"{ref!r} names no resource", hint="use KIND/NAME, e.g. rc/leaf")
    new_labels = {key: values[0] for key, values in split_kv(labels, "--set-labels").items()}
    kind = _registry(ctx).get(kind_name)
    target = _connect(ctx)
    async with target.client as client:
        for attempt in range(_UPDATE_ATTEMPTS):
            [doc] = await client.get_resources(kind.name, name, with_secrets=True)
            doc["metadata"]["labels"] = new_labels
            revision = doc["metadata"].pop("revision", None)
            try:
                await client.create_resources([doc], force=True, expected_revision=revision)
            except CompareFailed:
                # changed between the read and the write: set the labels on what is there now
                if attempt == _UPDATE_ATTEMPTS - 1:
                    raise
                continue
            break
    shown = ",".join(f"{k}={v}" for k, v in sorted(new_labels.items())) or "(none)"
    click.echo(f'{kind.name} "{name}" labels set to {shown}')


@cli.command()
@click.argument("ref", metavar="KIND/NAME", shell_complete=completer(_resource_refs))
@click.pass_context
@run_async
async def edit(ctx: click.Context, ref: str) -> None:
    """Edit a resource in $VISUAL or $EDITOR and apply it when saved, as kubectl edit does.

    A document that does not validate is opened again with the error at the top; saving it
    unchanged gives up with that error. Closing the editor without changes changes nothing.
    """
    kind_name, name = _split_ref(ref)
    if not name:
        raise TetherError(f"{ref!r} names no resource", hint="use KIND/NAME, e.g. role/visitor")
    registry = _registry(ctx)
    kind = registry.get(kind_name)
    target = _connect(ctx)
    async with target.client as client:
        [doc] = await client.get_resources(kind.name, name, with_secrets=True)
        revision = doc["metadata"].pop("revision", None)
        original = text = dump_yaml(doc)
        while True:
            edited = await trio.to_thread.run_sync(_open_editor, text)
            if edited is None or edited == original:
                click.echo("Edit cancelled, no changes made.")
                return
            try:
                [resource] = _edited_resource(edited, f"{kind.name}/{name}", registry)
            except TetherError as exc:
                if edited == text:  # saved again as it was shown: the user gives up
                    raise
                text = "".join(f"# {line}\n" for line in _edit_error(exc)) + _uncommented(edited)
                continue
            try:
                messages = await client.create_resources(
                    [_read_token_file(resource_to_dict(resource, with_secrets=True))],
                    force=True,
                    expected_revision=revision,
                )
            except (CompareFailed, NotFound) as exc:
                kept = _keep_edit(edited, kind.name, name)
                raise TetherError(
                    f"{exc.message}; your edit was not applied and is kept in {kept}",
                    hint=f"run `tetherctl edit {kind.name}/{name}` again to edit what is "
                    f"there now, or `tetherctl create -f {kept}` to replace it with yours",
                ) from None
            for message in messages:
                click.echo(message)
            return


def _keep_edit(text: str, kind: str, name: str) -> pathlib.Path:
    """Save an edit that could not be applied, as kubectl edit does, and say where."""
    fd, path = tempfile.mkstemp(prefix=f"tetherctl-edit-{kind}-{name}-", suffix=".yaml")
    with os.fdopen(fd, "w") as file:
        file.write(_uncommented(text))
    return pathlib.Path(path)


def _open_editor(text: str) -> str | None:
    """``text`` as the user saved it from $VISUAL or $EDITOR (vi when neither is set)."""
    return click.edit(text, extension=".yaml", require_save=False)


def _edited_resource(text: str, ref: str, registry: KindRegistry) -> list[Resource]:
    """The one resource an edit may save: the same kind and name it opened."""
    resources = parse_resources(text, ref, registry)
    if [(r.kind, r.name) for r in resources] != [tuple(ref.split("/", 1))]:
        raise TetherError(
            f"{ref}: the edited file must hold {ref} alone; edit neither renames nor adds",
            hint="create other resources with tetherctl create -f FILE",
        )
    return resources


def _edit_error(exc: TetherError) -> list[str]:
    return ["Please edit the resource below; lines starting with '#' are ignored.", str(exc)]


def _uncommented(text: str) -> str:
    """``text`` without the error header a previous attempt added."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


@cli.command()
@click.argument("ref", metavar="KIND/NAME", shell_complete=completer(_resource_refs))
@click.pass_context
@run_async
async def rm(ctx: click.Context, ref: str) -> None:
    """Delete a resource."""
    kind_name, name = _split_ref(ref)
    if not name:
        raise TetherError(f"{ref!r} names no resource", hint="use KIND/NAME, e.g. role/visitor")
    kind = _registry(ctx).get(kind_name)
    target = _connect(ctx)
    async with target.client as client:
        click.echo(await client.delete_resource(kind.name, name))


# --- role maps -------------------------------------------------------------------------------


@cli.group()
def rolemap() -> None:
    """Inspect how a trusted root cluster's roles map to this cluster's roles."""


@rolemap.command("test")
@click.option("--cluster", required=True, help="The trusted root cluster (trusted_cluster name).")
@click.option("--roles", required=True, help="Root roles to map, comma-separated.")
@format_option()
@click.pass_context
@run_async
async def rolemap_test(ctx: click.Context, cluster: str, roles: str, fmt: str) -> None:
    """Show which local roles each root role maps to, and which rule matched."""
    from tether.trust import map_roles, parse_role_map

    target = _connect(ctx)
    async with target.client as client:
        [doc] = await client.get_resources("trusted_cluster", cluster)
    rules = parse_role_map(doc["spec"].get("role_map", []))
    pm = plugin_manager(configured_disabled(_config_path(ctx)))
    mappings = map_roles(pm, rules, split_csv(roles), cluster)
    rows = [
        {
            "remote_role": m.remote_role,
            "local_roles": list(m.local_roles),
            "rule": m.rule.remote if m.rule is not None else None,
        }
        for m in mappings
    ]
    output(
        rows,
        fmt,
        text=lambda: emit_table(
            ["Remote Role", "Local Roles", "Matched Rule"],
            [
                (
                    m.remote_role,
                    ", ".join(m.local_roles) or "-",
                    m.rule.remote if m.rule is not None else "(unmapped)",
                )
                for m in mappings
            ],
        ),
    )


# --- users -----------------------------------------------------------------------------------


@cli.group()
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
    target = _connect(ctx)
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
    target = _connect(ctx)
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
    target = _connect(ctx)
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
    target = _connect(ctx)
    async with target.client as client:
        click.echo(
            await client.update_user(
                name,
                roles=split_csv(set_roles) if set_roles is not None else None,
                traits=traits or None,
            )
        )


# --- tokens ----------------------------------------------------------------------------------


@cli.group()
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
    target = _connect(ctx)
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
    target = _connect(ctx)
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
    target = _connect(ctx)
    async with target.client as client:
        click.echo(await client.delete_token(token))


# --- audit and status ------------------------------------------------------------------------


@cli.group()
def audit() -> None:
    """Read the audit log."""


@audit.command("search")
@click.option("--type", "type_name", help="Event type, e.g. user.login.failed (prefixes match).")
@click.option("--since", help="How far back, e.g. 1h (default: everything).")
@click.option("--limit", default=1000, show_default=True, help="Show at most this many events.")
@format_option()
@click.pass_context
@run_async
async def audit_search(
    ctx: click.Context, type_name: str | None, since: str | None, limit: int, fmt: str
) -> None:
    """Search audit events, oldest first."""
    since_time = None
    if since:
        try:
            since_time = datetime.datetime.now(datetime.UTC) - parse_duration(since)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    target = _connect(ctx)
    async with target.client as client:
        events = await client.search_audit(
            AuditQuery(type=type_name, since=since_time, limit=limit)
        )
    rows = [
        (
            f"{e.time:%Y-%m-%d %H:%M:%S}",
            e.type,
            e.user,
            "yes" if e.success else "no",
            ", ".join(f"{k}={v}" for k, v in e.fields.items()),
        )
        for e in events
    ]
    output(
        [e.to_json() for e in events],
        fmt,
        text=lambda: emit_table(["Time (UTC)", "Type", "User", "Success", "Details"], rows),
    )


# --- certificate authorities -----------------------------------------------------------------


@cli.group("auth")
def auth_group() -> None:
    """The cluster's certificate authorities: export their public keys, sign servers'
    certificates with the CAs plugins declare."""


# `tetherctl auth` is the kernel's, so that several plugins can each add a subcommand beside
# `export` with tether.api.shared_group, as with `tether proxy`.

#: The kernel's CA types of ``auth export --type``, in the order it prints them without one;
#: the types plugins declare (``tether_cert_authorities``) are added to the choices by
#: :func:`main`.
CA_TYPES = KERNEL_CA_TYPES


def _ca_types(ctx: click.Context) -> Mapping[str, CertAuthorityType]:
    """The CA types the plugins installed here declare."""
    return cert_authority_types(plugin_manager(configured_disabled(_config_path(ctx))))


@auth_group.command("export")
@click.option(
    "--type",
    "ca_type",
    type=click.Choice(CA_TYPES),
    help="user: lines for the file sshd_config's TrustedUserCAKeys names; host: "
    "@cert-authority lines for known_hosts; tls: the X.509 CA certificate in PEM (one CA "
    "signs hosts' and users' TLS certificates, so there is no tls-host or tls-user); a type "
    "a plugin declares: its X.509 CA certificate in PEM. Default: user, host and tls.",
)
@click.option(
    "--cluster",
    help="Whose CAs: this cluster (default), or a trusted root or leaf whose CAs it holds.",
)
@click.option(
    "--fingerprint",
    is_flag=True,
    help="Print each key's SHA256 fingerprint instead: OpenSSH's for user and host "
    "(what ssh-keygen -l shows), the CA pin for tls (what --ca-pin takes).",
)
@click.pass_context
@run_async
async def auth_export(
    ctx: click.Context, ca_type: str | None, cluster: str | None, fingerprint: bool
) -> None:
    """Print the CAs' public keys for OpenSSH and TLS tools (tctl auth export).

    \b
    tetherctl auth export --type=user > /etc/ssh/tether_user_ca.pub
        and in sshd_config: TrustedUserCAKeys /etc/ssh/tether_user_ca.pub
        (sshd then accepts the SSH certificates `tether login` issues)
    tetherctl auth export --type=host >> ~/.ssh/known_hosts
        (ssh then trusts the host certificates of the cluster's nodes)
    tetherctl auth export --type=tls > tether-ca.pem

    The keys a CA signs with and, during a rotation, the keys it still trusts
    (additional_trusted_keys) are all printed.
    """
    registry = _registry(ctx)
    async with _connect(ctx).client as client:
        own = str((await client.cluster())["name"])
        cluster = cluster or own
        docs = await client.get_resources("cert_authority")
        cas = [resource_from_dict(doc, registry) for doc in docs]
        held = {ca.spec.cluster_name for ca in cas}
        if cluster not in held:
            raise TetherError(
                f"cluster {cluster!r} is neither this cluster nor one whose CAs it holds; "
                f"known clusters: {', '.join(sorted(held | {own}))}"
            )
        if cluster != own:
            await _check_trust_enabled(client, registry, cluster)
    specs = {ca.spec.type: ca.spec for ca in cas if ca.spec.cluster_name == cluster}
    wanted = (ca_type,) if ca_type else CA_TYPES
    if ca_type and ca_type not in specs:
        raise TetherError(
            f"this cluster holds no {ca_type} CA of cluster {cluster!r}; it holds: "
            f"{', '.join(specs)}"
        )
    for name in wanted:
        if name in specs:
            click.echo(_export_lines(specs[name], fingerprint), nl=False)


@auth_group.command("sign")
@click.option(
    "--format",
    "fmt",
    required=True,
    help="What the files are for; the formats come from the CA types plugins declare.",
)
@click.option(
    "--host",
    required=True,
    help="The server's names and IP addresses, comma-separated, as its clients reach it; "
    "the first is also its common name.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=pathlib.Path),
    help="Prefix of the files written: PREFIX.crt, PREFIX.key (mode 0600), PREFIX.cas.",
)
@click.option("--ttl", help="How long the certificate is valid; default: the most the CA signs.")
@click.pass_context
@run_async
async def auth_sign(
    ctx: click.Context, fmt: str, host: str, out: pathlib.Path, ttl: str | None
) -> None:
    """Sign a server's certificate with a CA a plugin declares (tctl auth sign).

    \b
    tetherctl auth sign --format=db --host=db.example.com --out=server --ttl=2190h
        writes server.crt (signed by the cluster's db CA), server.key, and server.cas
        (the CA certificates the server trusts for its clients), for the server's
        TLS settings.

    A new key is generated here and never leaves this machine; auth signs its public half.
    """
    types = _ca_types(ctx)
    by_format = {t.sign_format: t for t in types.values() if t.sign_format}
    ca_type = by_format.get(fmt)
    if ca_type is None:  # with formats declared, click refused it already
        raise click.BadParameter(
            f"no plugin installed here declares the format {fmt!r} (declared: "
            f"{', '.join(by_format) or 'none'}); install the plugin that does",
            param_hint="--format",
        )
    try:
        ttl_delta = parse_duration(ttl) if ttl else ca_type.max_ttl
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    if not hosts:
        raise click.BadParameter("name at least one host name or address", param_hint="--host")
    if not out.parent.is_dir():
        raise TetherError(
            f"cannot write {out}.crt: directory {out.parent} does not exist",
            hint="create it, or pass another --out",
        )
    ips, names = pki.split_host_addresses(hosts)
    key = pki.generate_private_key(pki.WEB_ALGORITHM)
    async with _connect(ctx).client as client:
        cluster = str((await client.cluster())["name"])
        signed = await client.sign_certificate(
            ca_type.name,
            key.public_key(),
            hosts[0],
            usage="server",
            ttl=ttl_delta,
            dns_names=names,
            ip_addresses=ips,
        )
        trusted: list[str] = []
        for name in ca_type.format_trusts:
            trusted += await client.authority_certificates(name, cluster)
    paths = {suffix: out.with_name(f"{out.name}.{suffix}") for suffix in ("crt", "key", "cas")}
    pki.write_secret_file(paths["key"], pki.private_key_to_pem(key))
    pki.write_secret_file(paths["crt"], signed.certificate.encode(), mode=0o644)
    cas = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in trusted)
    pki.write_secret_file(paths["cas"], cas.encode(), mode=0o644)
    click.echo(
        f"Wrote {paths['crt']} (signed by the {ca_type.name} CA of {cluster}, valid "
        f"{format_duration(ttl_delta)}), {paths['key']} and {paths['cas']}"
        + (f" (the {', '.join(ca_type.format_trusts)} CA)" if ca_type.format_trusts else "")
        + "."
    )


async def _check_trust_enabled(client: AuthClient, registry: KindRegistry, cluster: str) -> None:
    """:raises TetherError: ``cluster`` is a root whose trusted_cluster is disabled, which
    deactivates its CAs here."""
    for doc in await client.get_resources("trusted_cluster"):
        trusted = resource_from_dict(doc, registry)
        if trusted.metadata.name == cluster and not trusted.spec.enabled:
            raise TetherError(
                f"the trust in root cluster {cluster!r} is disabled, so its CAs are not "
                f"active here; set enabled: true in trusted_cluster/{cluster} to export them"
            )


def _export_lines(spec: CertAuthoritySpec, fingerprint: bool) -> str:
    """One CA's active and additional trusted keys, in the form its users' tools read."""
    if spec.type not in ("user", "host"):  # tls, and the X.509 CAs plugins declare
        pems = dict.fromkeys((*spec.active_keys.tls, *spec.additional_trusted_keys.tls))
        if fingerprint:
            return "".join(
                f"{spec.type} {pki.ca_pin(pki.load_cert(pem.encode()))}\n" for pem in pems
            )
        return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems)
    lines = dict.fromkeys(
        line.strip() for line in (*spec.active_keys.ssh, *spec.additional_trusted_keys.ssh)
    )
    if fingerprint:
        return "".join(f"{spec.type} {pki.ssh_fingerprint(line)}\n" for line in lines)
    if spec.type == "host":
        return "".join(pki.known_hosts_ca_line(line, spec.cluster_name) + "\n" for line in lines)
    # TrustedUserCAKeys takes bare key lines, one per line (sshd_config(5)), not the
    # authorized_keys form `cert-authority KEY` that tctl prints for --type=user
    return "".join(line + "\n" for line in lines)


#: How many names of a kind ``tetherctl status`` prints before "and N more".
_STATUS_NAMES = 10


@cli.command()
@format_option()
@click.pass_context
@run_async
async def status(ctx: click.Context, fmt: str) -> None:
    """Show the cluster's CA pins and what is connected to it.

    The CA pin is what `tetherd start --ca-pin` and `tether login --ca-pin` take; the SSH CAs'
    fingerprints are as `ssh-keygen -l` prints them. Connected are the proxies and the hosts
    that heartbeat (nodes, other agents), the leaf clusters whose tunnels are up here and the
    root clusters this cluster's proxies hold tunnels to. Kinds your roles may not list are
    named under "Not shown".
    """
    registry = _registry(ctx)
    published = [k for k in registry.kinds() if k.published_by and k.name != "proxy"]
    target = _connect(ctx)
    listed: dict[str, list[dict[str, Any]] | None] = {}
    async with target.client as client:
        info = await client.cluster()
        for kind in ("proxy", *(k.name for k in published), "remote_cluster", "trusted_cluster"):
            try:
                listed[kind] = await client.get_resources(kind)
            except (AccessDenied, NotFound):
                listed[kind] = None
    report = _status_report(info, listed, [k.name for k in published])
    if fmt != "text":
        output(report, fmt)
        return
    labels = {k.name: _plural(k) for k in published}
    _print_status(report, labels)


def _plural(kind: ResourceKind) -> str:
    return next((a for a in kind.aliases if a.startswith(kind.name)), kind.name).capitalize()


def _status_report(
    info: Mapping[str, Any],
    listed: Mapping[str, list[dict[str, Any]] | None],
    published: list[str],
) -> dict[str, Any]:
    """What ``tetherctl status --format=json`` prints; a kind the caller may not list is
    None (its key) or left out (``hosts``), and named in ``not_shown``."""
    proxies, trusted, remote = listed["proxy"], listed["trusted_cluster"], listed["remote_cluster"]
    tunnels: dict[str, set[str]] = {}
    for proxy in proxies or []:
        for root, root_proxies in (proxy.get("status") or {}).get("root_tunnels", {}).items():
            tunnels.setdefault(root, set()).update(root_proxies)

    def root_connection(tc: Mapping[str, Any]) -> str:
        if not tc["spec"].get("enabled", True):
            return "disabled"
        if proxies is None:
            return "unknown"
        return "online" if tunnels.get(tc["metadata"]["name"]) else "offline"

    return {
        "cluster": info["name"],
        "version": info.get("version"),
        "ca_pin": info["ca_pin"],
        "fingerprints": info.get("fingerprints", {}),
        "proxies": None
        if proxies is None
        else [
            {
                "name": p["metadata"]["name"],
                "public_addr": p["spec"].get("public_addr"),
                "version": p["spec"].get("version"),
            }
            for p in proxies
        ],
        "hosts": {
            kind: sorted(d["spec"].get("hostname") or d["metadata"]["name"] for d in docs)
            for kind in published
            if (docs := listed[kind]) is not None
        },
        "root_clusters": None
        if trusted is None
        else [
            {
                "name": tc["metadata"]["name"],
                "connection": root_connection(tc),
                "proxies": sorted(tunnels.get(tc["metadata"]["name"], ())),
            }
            for tc in trusted
        ],
        "leaf_clusters": None
        if remote is None
        else [
            {
                "name": rc["metadata"]["name"],
                "connection": (rc.get("status") or {}).get("connection", "offline"),
                "last_heartbeat": (rc.get("status") or {}).get("last_heartbeat"),
            }
            for rc in remote
        ],
        "not_shown": sorted(kind for kind, docs in listed.items() if docs is None),
    }


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_STATUS_NAMES])
    more = len(names) - _STATUS_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def _online(names: list[str]) -> str:
    return f"{len(names)} online: {_names(names)}" if names else "none"


def _print_status(report: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """Two blocks, each aligned: the cluster and its CAs (as ``tctl status``), then what is
    connected."""
    prints = report["fingerprints"]
    cluster = [
        ("Cluster", report["cluster"]),
        ("Version", report["version"] or "unknown"),
        ("CA pin", f"{report['ca_pin']}  (the X.509 CA's: what --ca-pin takes)"),
    ]
    cluster += [(f"{t.capitalize()} CA", prints[t]) for t in ("user", "host") if t in prints]
    connected = []
    if report["proxies"] is not None:
        addrs = [f"{p['name']} ({p['public_addr']})" for p in report["proxies"]]
        connected.append(("Proxies", _online(addrs)))
    connected += [(labels[kind], _online(names)) for kind, names in report["hosts"].items()]
    for key, title in (("root_clusters", "Root clusters"), ("leaf_clusters", "Leaf clusters")):
        if report[key] is not None:
            clusters = [f"{c['name']} ({c['connection']})" for c in report[key]]
            connected.append((title, ", ".join(clusters) or "none"))
    if report["not_shown"]:
        not_shown = f"{', '.join(report['not_shown'])} (your roles may not list)"
        connected.append(("Not shown", not_shown))
    click.echo("\n\n".join(_aligned(block) for block in (cluster, connected)))


def _aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


@cli.command()
@format_option()
def version(fmt: str) -> None:
    """Print the version."""
    output(version_info(), fmt, text=lambda: click.echo(f"Tether v{tether.__version__}"))


cli.add_command(completion_command("tetherctl"))


def main() -> None:
    try:
        disabled = configured_disabled(config_path_from_argv(sys.argv[1:], CONFIG_ENV))
        pm = plugin_manager(disabled)
        pm.hook.tether_cli_commands(program="tetherctl", cli=cli)
        _describe_token_types(token_types(pm))
        _describe_ca_types(cert_authority_types(pm))
    except TetherError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        sys.exit(1)
    cli(obj={}, prog_name="tetherctl", complete_var=complete_var("tetherctl"))


def _describe_ca_types(types: Mapping[str, CertAuthorityType]) -> None:
    """Offer the CA types plugins declare to ``auth export --type`` and their formats to
    ``auth sign --format``; auth checks them against its own list."""
    for param in auth_export.params:
        if param.name == "ca_type" and isinstance(param, click.Option):
            param.type = click.Choice((*CA_TYPES, *types))
    formats = {t.sign_format: t for t in types.values() if t.sign_format}
    for param in auth_sign.params:
        if param.name == "fmt" and isinstance(param, click.Option):
            if formats:  # else the command says that no plugin declares one
                param.type = click.Choice(tuple(formats))
            described = "; ".join(
                f"{name}: a server's certificate signed by the {t.name} CA ({t.description})"
                for name, t in formats.items()
            )
            param.help = f"What the files are for: {described or 'no plugin declares a format'}."


def _describe_token_types(types: Mapping[str, TokenType]) -> None:
    """List the registered token types in ``tetherctl tokens add --help``; the auth service
    checks the value against its own list."""
    for param in tokens_add.params:
        if param.name == "type_name" and isinstance(param, click.Option):
            param.help = "; ".join(f"{t.name}: {t.description}" for t in types.values()) + "."


if __name__ == "__main__":
    main()
