"""``tetherctl create``, ``get``, ``update``, ``edit`` and ``rm``: the resources a cluster holds,
read and written as the YAML documents ``create`` takes.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import click
import trio

from tether.cli._common import completer, emit_table, format_option, output, run_async, split_kv
from tether.cli._ctl_target import connect, kind_registry
from tether.cli._progress import progress
from tether.config import secret_or_file
from tether.errors import CompareFailed, NotFound, TetherError
from tether.resources import KindRegistry, Resource, parse_resources, resource_to_dict
from tether.yamlio import dump_yaml

__all__ = ["create", "edit", "get", "rm", "update"]


#: ``tetherctl create`` of this many resources says what it does even off a terminal
BULK = 20
#: ``tetherctl update`` reads and writes again this often when someone else writes between
_UPDATE_ATTEMPTS = 5


async def _resource_refs(ctx: click.Context, incomplete: str) -> list[str]:
    """``KIND`` names while the kind is typed; ``KIND/NAME`` of what the cluster holds after
    the slash (the names the caller may see)."""
    kind_name, slash, _ = incomplete.partition("/")
    registry = kind_registry(ctx)
    if not slash:
        return [kind.name for kind in registry.kinds()]
    kind = registry.get(kind_name)
    async with connect(ctx).client as client:
        docs = await client.get_resources(kind.name)
    return [f"{kind_name}/{doc['metadata']['name']}" for doc in docs]


@click.command()
@click.argument("file", type=click.File("r"))
@click.option("-f", "--force", is_flag=True, help="Overwrite resources that exist.")
@click.pass_context
@run_async
async def create(ctx: click.Context, file: Any, force: bool) -> None:
    """Create resources from a YAML file (all documents or none)."""
    source = os.path.basename(file.name) if file.name != "<stdin>" else "<stdin>"
    resources = parse_resources(file.read(), source, kind_registry(ctx))
    if not resources:
        raise TetherError(f"{source}: no resources found")
    docs = [_read_token_file(resource_to_dict(r, with_secrets=True)) for r in resources]
    target = connect(ctx)
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


@click.command()
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
    target = connect(ctx)
    if kind_name == "all" and not name:
        # as ``tctl get all``: every resource of every kind, in one file ``create`` accepts
        async with target.client as client:
            docs = [
                doc
                for kind in kind_registry(ctx).kinds()
                for doc in await client.get_resources(kind.name, with_secrets=with_secrets)
            ]
    else:
        kind = kind_registry(ctx).get(kind_name)
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
    async with connect(ctx).client as client:
        found = (await client.call("GET", "/v1/connectors"))["connectors"]
    output(
        found,
        fmt,
        text=lambda: emit_table(["Name", "Type"], [(c["name"], c["type"]) for c in found]),
    )


@click.command()
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
    kind = kind_registry(ctx).get(kind_name)
    target = connect(ctx)
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


@click.command()
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
    registry = kind_registry(ctx)
    kind = registry.get(kind_name)
    target = connect(ctx)
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


@click.command()
@click.argument("ref", metavar="KIND/NAME", shell_complete=completer(_resource_refs))
@click.pass_context
@run_async
async def rm(ctx: click.Context, ref: str) -> None:
    """Delete a resource."""
    kind_name, name = _split_ref(ref)
    if not name:
        raise TetherError(f"{ref!r} names no resource", hint="use KIND/NAME, e.g. role/visitor")
    kind = kind_registry(ctx).get(kind_name)
    target = connect(ctx)
    async with target.client as client:
        click.echo(await client.delete_resource(kind.name, name))
