"""The JSON bodies the auth API accepts, one attrs class each, structured by the strict cattrs
converter resources and ``tether.yaml`` are read with (:mod:`tether.structuring`).

Kept apart from the routes (:mod:`tether.auth.http_api`) so that what each endpoint accepts is
read in one place, declared rather than checked field by field. A body that does not fit is
refused with one line naming the first field that is wrong, in declaration order, with the
same words as :mod:`tether.wire`'s field readers (``request field 'token' must be a non-empty
string``): a missing field reads as a null one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import BaseValidationError
from starlette.requests import Request

from tether.errors import TetherError
from tether.structuring import MissingField, failures, strict_converter
from tether.wire import read_json_object

__all__ = [
    "AddToken",
    "AddUser",
    "AuditBatch",
    "BeginSSO",
    "CollectSSO",
    "CompleteSSO",
    "CreateResources",
    "Heartbeats",
    "HostEvent",
    "Join",
    "LoginPassword",
    "Publish",
    "PublishRelayed",
    "RelayedPublish",
    "RenewHost",
    "SignCertificate",
    "Signup",
    "UpdateUser",
    "read_body",
    "structure_body",
    "structure_each",
]

T = TypeVar("T")

#: shapes of fields, each with the hook that reads it
Strings = tuple[str, ...]
#: an object of arbitrary JSON values (a published resource, an audit event's fields)
JSONObject = dict[str, Any]
Objects = tuple[JSONObject, ...]
Labels = Mapping[str, str]
Traits = Mapping[str, Strings]


class _Refused(ValueError):
    """What is wrong with one field, as the words after ``request field 'NAME'``."""


def _non_empty_string(value: object, _: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Refused(" must be a non-empty string")
    return value


def _finite_number(value: object, _: object) -> float:
    # true is no number, and NaN and 1e999 (which Python's JSON parser accepts) would
    # overflow any duration built from them
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Refused(" must be a finite number")
    return float(value)


def _strings(value: object, _: object) -> Strings:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused(" must be a list of strings")
    return tuple(value)


def _list(value: object, _: object) -> list[Any]:
    if not isinstance(value, list):
        raise _Refused(" must be a list")
    return value


def _object(value: object, _: object) -> JSONObject:
    if not isinstance(value, dict):
        raise _Refused(" must be an object")
    return value


def _objects(value: object, _: object) -> Objects:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Refused(" must be a list of objects")
    return tuple(value)


def _string_map(lists: bool) -> Callable[[object, object], Any]:
    what = "lists of strings" if lists else "strings"

    def structure(value: object, _: object) -> Any:
        if not isinstance(value, dict):
            raise _Refused(f" must be an object mapping names to {what}")
        for name, item in value.items():
            ok = (
                isinstance(item, list) and all(isinstance(v, str) for v in item)
                if lists
                else isinstance(item, str)
            )
            if not ok:
                raise _Refused(f": {name!r} must map to {what}")
        return {k: tuple(v) for k, v in value.items()} if lists else dict(value)

    return structure


def _is(shape: object) -> Callable[[object], bool]:
    return lambda target: target == shape


def _wrong_kind(cl: Any, value: object) -> Exception:
    # Only a body's own class gets here (every field's shape has a hook above), and
    # read_json_object has refused a body that is not an object: anything else is a class here
    # whose field has no hook.
    if attrs.has(cl):
        return _Refused(" must be an object")
    return TypeError(f"no hook reads {cl!r} in a request body")


def _make_converter() -> cattrs.Converter:
    # Keys a body's class has no field for are ignored, as JSON APIs do.
    converter = strict_converter(_wrong_kind, forbid_extra_keys=False)
    converter.register_structure_hook(str, _non_empty_string)
    converter.register_structure_hook(float, _finite_number)
    for shape, hook in (
        (Strings, _strings),
        (list[Any], _list),
        (JSONObject, _object),
        (Objects, _objects),
        (Labels, _string_map(lists=False)),
        (Traits, _string_map(lists=True)),
    ):
        converter.register_structure_hook_func(_is(shape), hook)
    return converter


_converter = _make_converter()


async def read_body(request: Request, cls: type[T]) -> T:
    """The request's JSON body as ``cls``.

    :raises TetherError: the body is not a JSON object, or a field of it does not fit,
        naming the first such field.
    """
    data = await read_json_object(request)
    try:
        return _converter.structure(data, cls)
    except BaseValidationError as exc:
        raise _refusal(exc) from None


def structure_body(data: Mapping[str, Any], cls: type[T]) -> T:
    """A JSON object already read (one element of a batch) as ``cls``, refused as
    :func:`read_body` refuses a body."""
    try:
        return _converter.structure(dict(data), cls)
    except BaseValidationError as exc:
        raise _refusal(exc) from None


def structure_each(items: Sequence[Mapping[str, Any]], cls: type[T], what: str) -> list[T]:
    """Each element of a batch as ``cls``; a refusal names the element (``what 3 of 5``)."""
    structured = []
    for i, data in enumerate(items, start=1):
        try:
            structured.append(structure_body(data, cls))
        except TetherError as exc:
            raise TetherError(f"{what} {i} of {len(items)}: {exc.message}") from None
    return structured


def _refusal(exc: BaseValidationError) -> TetherError:
    for failure in failures(exc):
        problem = failure.error
        if isinstance(problem, MissingField):  # refused as a null would be
            try:
                _converter.structure(None, problem.type)
            except _Refused as null:
                problem = null
        if isinstance(problem, _Refused):
            return TetherError(f"request field {failure.path[0]!r}{problem}")
    raise exc  # a bug in a class here, not in the request


# Fields are declared in the order they are checked, so the first wrong one is named.


@attrs.frozen(kw_only=True)
class CreateResources:
    resources: list[Any]
    force: Any = False
    expected_revision: int | None = None


@attrs.frozen(kw_only=True)
class AddUser:
    name: str
    roles: Strings | None = None
    traits: Traits | None = None
    password: str | None = None


@attrs.frozen(kw_only=True)
class UpdateUser:
    roles: Strings | None = None
    traits: Traits | None = None


@attrs.frozen(kw_only=True)
class AddToken:
    ttl_seconds: float
    type: str
    labels: Labels | None = None


@attrs.frozen(kw_only=True)
class LoginPassword:
    ttl_seconds: float | None = None
    username: str
    password: str
    ssh_public_key: str
    tls_public_key: str
    connector: str | None = None


@attrs.frozen(kw_only=True)
class Join:
    addresses: Strings | None = None
    #: the host roles a node asks for (its protocols'); absent from agents before host roles
    roles: Strings | None = None
    token: str
    role: str
    host_id: str
    hostname: str
    ssh_public_key: str
    tls_public_key: str


@attrs.frozen(kw_only=True)
class RenewHost:
    hostname: str
    addresses: Strings | None = None
    #: the host roles a node asks for, when it now serves more than its certificate allows
    #: (with ``token``, which must carry every one); absent: the certificate's
    roles: Strings | None = None
    token: str | None = None
    ssh_public_key: str
    tls_public_key: str


@attrs.frozen(kw_only=True)
class Publish:
    resource: JSONObject
    ttl_seconds: float


@attrs.frozen(kw_only=True)
class RelayedPublish:
    """One entry of ``PUT /v1/presence/relayed``: the host's certificate (base64 DER), the
    entry and its TTL."""

    cert: str
    resource: JSONObject
    ttl_seconds: float
    #: the host's tunnel closed: remove the entry the proxy relayed this many seconds ago
    removed_relayed_ago: float | None = None


@attrs.frozen(kw_only=True)
class PublishRelayed:
    entries: Objects


@attrs.frozen(kw_only=True)
class HostEvent:
    """One audit event a host reports; ``id`` and ``time`` (seconds since the epoch) are the
    host's, absent from hosts of older releases (then auth names and dates it)."""

    fields: JSONObject | None = None
    type: str
    user: str | None = None
    success: Any = True
    id: str | None = None
    time: float | None = None


@attrs.frozen(kw_only=True)
class AuditBatch:
    """Events a host records in one call, each a :class:`HostEvent`, in order; checked one
    by one with :func:`structure_body` so that a refusal names the event."""

    events: Objects


@attrs.frozen(kw_only=True)
class SignCertificate:
    """A certificate to sign with a declared CA (see :mod:`tether.auth.signing`)."""

    ca_type: str
    public_key: str
    common_name: str
    usage: str
    ttl_seconds: float
    dns_names: Strings | None = None
    ip_addresses: Strings | None = None


@attrs.frozen(kw_only=True)
class Heartbeats:
    heartbeats: Objects


@attrs.frozen(kw_only=True)
class BeginSSO:
    ttl_seconds: float | None = None
    connector: str
    client_redirect_url: str
    client_secret_hash: str
    ssh_public_key: str
    tls_public_key: str


@attrs.frozen(kw_only=True)
class CompleteSSO:
    params: Labels | None = None


@attrs.frozen(kw_only=True)
class CollectSSO:
    request_id: str
    client_secret: str
    # optional here so that a client without it is refused, and audited, by auth
    code: str | None = None


@attrs.frozen(kw_only=True)
class Signup:
    token: str
    password: str
