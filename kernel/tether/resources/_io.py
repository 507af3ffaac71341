"""Resources in and out: YAML/JSON documents, API dictionaries and the storage encoding.

Parsing validates every document before returning any, so ``tetherctl create`` of a file with a
mistake in its third document creates nothing. Errors are one line:
``file:line: document N (kind 'name'): field.path: problem``.
"""

from __future__ import annotations

import datetime
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any

import attrs

from tether.errors import ResourceError
from tether.resources._convert import InvalidField, Path, show, structure, unstructure
from tether.resources._kinds import TELEPORT_ONLY_ROLE_FIELDS
from tether.resources._model import KindRegistry, Metadata, Resource, secret_paths_for
from tether.structuring import did_you_mean
from tether.yamlio import Document, dump_yaml, format_path, load_documents

__all__ = [
    "dump_resources",
    "make_resource",
    "parse_resources",
    "resource_from_bytes",
    "resource_from_dict",
    "resource_to_bytes",
    "resource_to_dict",
]

_TOP_LEVEL = ("kind", "version", "metadata", "spec", "status")
# A name becomes part of a storage key and of ``kind/name`` on the command line.
_NAME = re.compile(r"^[^\s/]+$")


def _label(data: Any, registry: KindRegistry, prefix: str) -> str:
    """``document 1 (role 'visitor')``: enough to find the document in a long file."""
    kind = name = None
    if isinstance(data, Mapping):
        raw_kind = data.get("kind")
        if isinstance(raw_kind, str):
            kind = registry.get(raw_kind).name if raw_kind in registry else raw_kind
        metadata = data.get("metadata")
        if isinstance(metadata, Mapping) and isinstance(metadata.get("name"), str):
            name = metadata["name"]
    if kind and name:
        detail = f"{kind} {name!r}"
    elif kind or name:
        detail = kind or repr(name)
    else:
        return prefix or "resource"
    return f"{prefix} ({detail})" if prefix else detail


def _build(data: Any, registry: KindRegistry) -> Resource:
    """Validate one resource mapping; raises InvalidField locating the problem."""
    if not isinstance(data, Mapping):
        raise InvalidField(
            (),
            f"expected a resource (a mapping with kind, version, metadata "
            f"and spec), got {show(data)}",
        )
    for key in data:
        if key not in _TOP_LEVEL:
            guess = did_you_mean(str(key), _TOP_LEVEL)
            raise InvalidField(
                (str(key),),
                f"unknown field (did you mean {guess}?)"
                if guess
                else "unknown field; expected " + ", ".join(_TOP_LEVEL),
            )
    raw_kind = data.get("kind")
    if raw_kind is None:
        raise InvalidField(
            ("kind",),
            "required field missing; every resource names its kind",
            hint="known kinds: " + ", ".join(k.name for k in registry.kinds()),
        )
    if not isinstance(raw_kind, str):
        raise InvalidField(("kind",), f"expected a string, got {show(raw_kind)}")
    try:
        kind = registry.get(raw_kind)
    except ResourceError as exc:
        raise InvalidField(("kind",), exc.message) from None

    version = data.get("version", kind.default_version)
    if version not in kind.versions:
        raise InvalidField(
            ("version",),
            f"unsupported version {show(version)} for kind "
            f"{kind.name}; accepted: {', '.join(kind.versions)}",
        )

    raw_metadata = data.get("metadata")
    if raw_metadata is None:
        raise InvalidField(("metadata", "name"), "required field missing")
    if isinstance(raw_metadata, Mapping) and "id" in raw_metadata:
        # Teleport prints a legacy ``metadata.id``; accept pasted output and drop it.
        raw_metadata = {k: v for k, v in raw_metadata.items() if k != "id"}
    metadata: Metadata = structure(raw_metadata, Metadata, ("metadata",))
    if not _NAME.match(metadata.name) or metadata.name in (".", ".."):
        raise InvalidField(
            ("metadata", "name"),
            f"invalid name {metadata.name!r}: names are non-empty and contain no spaces or '/'",
        )

    if kind.name == "role" and version == "v8":
        _check_role_v8(data.get("spec"))
    unsupported = list(_unsupported(data.get("spec"), kind.spec_type, ("spec",)))
    if unsupported:
        others = ", ".join(format_path(p) for p in unsupported[1:])
        raise InvalidField(
            unsupported[0],
            "not supported by Tether" + (f"; nor are {others}" if others else ""),
            hint="remove " + ("these fields" if others else "the field") + " to load the rest",
        )
    spec = structure(data.get("spec"), kind.spec_type, ("spec",))
    status = None
    if data.get("status") is not None:
        if kind.status_type is None:
            raise InvalidField(("status",), f"kind {kind.name} has no status")
        status = structure(data["status"], kind.status_type, ("status",))

    resource = Resource(
        kind=kind.name, version=str(version), metadata=metadata, spec=spec, status=status
    )
    if kind.validate is not None:
        try:
            kind.validate(resource)
        except InvalidField:
            raise
        except ResourceError as exc:
            raise InvalidField((), str(exc)) from None
    return resource


def _unsupported(value: Any, tp: Any, path: Path) -> Iterator[Path]:
    """Every key under ``value`` that no field of ``tp`` has: a Teleport field Tether does not
    implement (a role's ``app_labels``), or a name close to none of Tether's. A misspelling of
    one of Tether's fields is left to the converter, which says "did you mean"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        yield from _unsupported(value, args[0], path)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            if attrs.has(arg):
                yield from _unsupported(value, arg, path)
    elif origin in (tuple, list, Sequence) and args and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unsupported(item, args[0], (*path, i))
    elif attrs.has(tp) and isinstance(value, Mapping):
        fields = attrs.fields_dict(attrs.resolve_types(tp))
        for key, item in value.items():
            if key in fields:
                yield from _unsupported(item, fields[key].type, (*path, key))
            elif key in TELEPORT_ONLY_ROLE_FIELDS or not did_you_mean(str(key), fields):
                yield (*path, str(key))


#: In a v8 role, kubernetes_resources kinds are plural API resource names with an api_group
#: ("pods", "deployments" in "apps"); v7 wrote singular kinds ("pod"). Other fields mean the same.
_V8_CHANGED = ("kubernetes_resources",)


def _check_role_v8(spec: Any) -> None:
    """Refuse what a v8 role means differently from v5-v7; everything else loads as v7 does."""
    if not isinstance(spec, Mapping):
        return
    for side in ("allow", "deny"):
        conditions = spec.get(side)
        if not isinstance(conditions, Mapping):
            continue
        for field in _V8_CHANGED:
            if conditions.get(field):
                raise InvalidField(
                    ("spec", side, field),
                    "in a v8 role this names Kubernetes resources by plural name and "
                    "api_group, which Tether does not read",
                    hint="write the role as version: v7 with singular kinds (pod, deployment)",
                )


def parse_resources(text: str, source: str, registry: KindRegistry) -> list[Resource]:
    """Parse every resource in a multi-document YAML (or JSON) text.

    A document may also be a list of resources (what ``get -f json`` prints for several).
    All documents are validated before anything is returned.

    :param source: the file name shown in errors.
    :raises ResourceError: the first problem, as ``source:line: document N (kind 'name'):
        field: problem``; the hint says how many more problems there are.
    """
    documents = load_documents(text, source, error=ResourceError)
    resources: list[Resource] = []
    problems: list[str] = []
    for doc in documents:
        items: list[tuple[Path, Any, str]]
        if isinstance(doc.data, list):
            items = [
                ((i,), item, f"document {doc.index}, item {i + 1}")
                for i, item in enumerate(doc.data)
            ]
        else:
            items = [((), doc.data, f"document {doc.index}")]
        for prefix, data, position in items:
            try:
                resources.append(_build(data, registry))
            except InvalidField as exc:
                problems.append(_located(doc, prefix, exc, _label(data, registry, position)))
    if problems:
        more = len(problems) - 1
        raise ResourceError(
            problems[0],
            hint=(f"{more} more problem{'s' if more > 1 else ''} found after this one")
            if more
            else None,
        )
    return resources


def _located(doc: Document, prefix: Path, exc: InvalidField, label: str) -> str:
    where = doc.where((*prefix, *exc.path))
    message = f"{where}: {label}: {exc}"
    return message


def resource_from_dict(
    data: Mapping[str, Any], registry: KindRegistry, *, source: str = "<api>"
) -> Resource:
    """Validate a resource that arrived as JSON (API bodies), exactly as a document would be.

    :raises ResourceError: ``source: kind 'name': field: problem``.
    """
    try:
        return _build(data, registry)
    except InvalidField as exc:
        raise ResourceError(f"{source}: {_label(data, registry, '')}: {exc}") from None


def make_resource(
    registry: KindRegistry,
    kind: str,
    name: str,
    spec: Mapping[str, Any],
    *,
    expires: datetime.datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> Resource:
    """Build a resource of ``kind`` (its newest version) through the same validation as
    user input: what the kernel stores on its own account passes the checks admins' does."""
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    if expires is not None:
        metadata["expires"] = expires.isoformat()
    document = {
        "kind": kind,
        "version": registry.get(kind).versions[0],
        "metadata": metadata,
        "spec": dict(spec),
    }
    return resource_from_dict(document, registry)


def _hide(tree: Any, path: Sequence[str]) -> None:
    """Delete the value at ``path`` ("*" matches every key or item) from plain data."""
    if not path:
        return
    head, rest = path[0], path[1:]
    children: list[Any]
    if isinstance(tree, dict):
        keys = list(tree) if head == "*" else [head] if head in tree else []
        if not rest:
            for key in keys:
                del tree[key]
            return
        children = [tree[key] for key in keys]
    elif isinstance(tree, list) and head == "*":
        children = tree
    else:
        return
    for child in children:
        _hide(child, rest)


def resource_to_dict(resource: Resource, *, with_secrets: bool = False) -> dict[str, Any]:
    """Plain data for ``resource`` in the order people read it: kind, version, metadata, spec,
    status. Empty optional fields are omitted; the result parses back to an equal resource.

    :param with_secrets: include fields the kind marks secret (``--with-secrets``).
    """
    out: dict[str, Any] = {
        "kind": resource.kind,
        "version": resource.version,
        "metadata": unstructure(resource.metadata),
    }
    spec = unstructure(resource.spec)
    if spec not in (None, {}):
        out["spec"] = spec
    if resource.status is not None:
        out["status"] = unstructure(resource.status)
    if not with_secrets:
        for path in secret_paths_for(type(resource.spec)):
            _hide(out, path)
    return out


def dump_resources(
    resources: Sequence[Resource], fmt: str = "yaml", *, with_secrets: bool = False
) -> str:
    """Render resources for ``tetherctl get``.

    ``yaml``: one document per resource separated by ``---``, so the output of ``get`` for one
    resource is a file ``create`` accepts. ``json``: an object for one resource, a list for
    several (or none).

    :raises ResourceError: unknown format.
    """
    dicts = [resource_to_dict(r, with_secrets=with_secrets) for r in resources]
    if fmt == "yaml":
        return "---\n".join(dump_yaml(d) for d in dicts)
    if fmt == "json":
        payload: Any = dicts[0] if len(dicts) == 1 else dicts
        return json.dumps(payload, indent=2) + "\n"
    raise ResourceError(f"unknown output format {fmt!r}; expected yaml or json")


def resource_to_bytes(resource: Resource) -> bytes:
    """The storage encoding: compact JSON, secrets included, without the revision (the
    backend owns revisions and reports them on read)."""
    data = resource_to_dict(resource, with_secrets=True)
    data["metadata"].pop("revision", None)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def resource_from_bytes(
    data: bytes, registry: KindRegistry, *, revision: int | None = None
) -> Resource:
    """Decode what :func:`resource_to_bytes` stored, validating it like any input.

    :param revision: the backend's revision of this value, recorded in ``metadata.revision``.
    :raises ResourceError: the stored value is not valid JSON or not a valid resource.
    """
    try:
        plain = json.loads(data)
    except ValueError as exc:
        raise ResourceError(f"<storage>: stored resource is not valid JSON: {exc}") from None
    if not isinstance(plain, Mapping):
        raise ResourceError(f"<storage>: stored resource is {show(plain)}, not a mapping")
    resource = resource_from_dict(plain, registry, source="<storage>")
    if revision is not None:
        resource = attrs.evolve(
            resource, metadata=attrs.evolve(resource.metadata, revision=revision)
        )
    return resource
