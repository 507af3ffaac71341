"""Who a certificate speaks for: the identity both certificate formats carry.

Login issues an SSH certificate and an X.509 certificate for the same person; both embed the
same compact JSON (:meth:`Identity.to_json`), so every service decodes identities one way
whichever door the request came through.
"""

from __future__ import annotations

import datetime
import json
import types
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["IDENTITY_KINDS", "HostIdentity", "Identity", "NewerIdentity", "format_time"]

#: Built-in identity kinds: people, and the system components that hold certificates.
IDENTITY_KINDS: tuple[str, ...] = ("user", "admin", "proxy", "node", "auth")

#: Bumped when the encoding changes incompatibly; readers refuse versions they do not know.
_ENCODING_VERSION = 1


class NewerIdentity(ValueError):
    """An identity in an encoding version or with fields this release does not know: its
    issuer runs a newer Tether."""


def format_time(when: datetime.datetime) -> str:
    """Format an aware time as ``2026-01-02T03:04:05Z``, the form every message uses."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_seconds(value: datetime.datetime) -> datetime.datetime:
    """Normalise to UTC and whole seconds: both certificate formats store whole seconds, and an
    identity must survive a round trip through either unchanged. Truncation errs early."""
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"expires must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("expires must be timezone-aware (use datetime.UTC)")
    return value.astimezone(datetime.UTC).replace(microsecond=0)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise TypeError(f"expected a sequence of strings, not a single {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"expected strings, found {type(item).__name__}")
    return items


def _freeze_traits(value: Mapping[str, Iterable[str]]) -> Mapping[str, tuple[str, ...]]:
    """Copy traits into a read-only, key-sorted mapping of tuples.

    Identities are shared between tasks and cached; a mutable mapping inside a frozen object
    would let one caller change what another believes about a user.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"traits must be a mapping, not {type(value).__name__}")
    frozen: dict[str, tuple[str, ...]] = {}
    for key in sorted(value):
        if not isinstance(key, str):
            raise TypeError(f"trait names must be strings, found {type(key).__name__}")
        frozen[key] = _str_tuple(value[key])
    return types.MappingProxyType(frozen)


def _single_line_name(what: str) -> Any:
    def check(_instance: object, _attribute: object, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string")
        if any(ch.isspace() for ch in value):
            raise ValueError(f"{what} must not contain whitespace: {value!r}")

    return check


def _check_kind(_instance: object, _attribute: object, value: Any) -> None:
    if value not in IDENTITY_KINDS:
        raise ValueError(f"unknown identity kind {value!r}; use one of {', '.join(IDENTITY_KINDS)}")


def _check_route(_instance: object, _attribute: object, value: Any) -> None:
    if value is not None:
        _single_line_name("route_to_cluster")(_instance, _attribute, value)


@attrs.frozen
class Identity:
    """A verified (or about to be certified) user or system component of one cluster.

    ``traits`` is excluded from hashing (a read-only mapping is not hashable) but not from
    equality, so equal identities still hash equally.
    """

    username: str = attrs.field(validator=_single_line_name("username"))
    cluster: str = attrs.field(validator=_single_line_name("cluster"))
    roles: tuple[str, ...] = attrs.field(converter=_str_tuple)
    traits: Mapping[str, tuple[str, ...]] = attrs.field(converter=_freeze_traits, hash=False)
    logins: tuple[str, ...] = attrs.field(converter=_str_tuple)
    expires: datetime.datetime = attrs.field(converter=_utc_seconds)
    kind: str = attrs.field(default="user", validator=_check_kind)
    route_to_cluster: str | None = attrs.field(default=None, validator=_check_route)

    @property
    def label(self) -> str:
        """``user@cluster``, how messages and certificate comments name this identity."""
        return f"{self.username}@{self.cluster}"

    def to_json(self) -> dict[str, Any]:
        """Encode as a JSON-ready dict with a version tag and stable key names."""
        return {
            "v": _ENCODING_VERSION,
            "username": self.username,
            "cluster": self.cluster,
            "kind": self.kind,
            "roles": list(self.roles),
            "traits": {name: list(values) for name, values in self.traits.items()},
            "logins": list(self.logins),
            "expires": format_time(self.expires),
            "route_to_cluster": self.route_to_cluster,
        }

    def to_json_bytes(self) -> bytes:
        """Compact, key-sorted JSON: what the certificates embed."""
        return json.dumps(
            self.to_json(), separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes) -> Identity:
        """Decode what :meth:`to_json` produced (a dict, or its JSON text).

        Unknown fields and versions are refused rather than ignored: a newer issuer may have
        added a restriction, and silently dropping it would grant more than was meant.
        """
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"identity is not valid JSON: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ValueError("identity must be a JSON object")
        if data.get("v") != _ENCODING_VERSION:
            raise NewerIdentity(
                f"identity encoding version {data.get('v')!r} is not supported "
                f"(this Tether reads version {_ENCODING_VERSION}; upgrade it)"
            )
        expected = {
            "v", "username", "cluster", "kind", "roles", "traits", "logins", "expires",
            "route_to_cluster",
        }  # fmt: skip
        unknown = set(data) - expected
        missing = expected - {"route_to_cluster"} - set(data)
        if unknown or missing:
            problems = [f"unknown field {name!r}" for name in sorted(unknown)]
            problems += [f"missing field {name!r}" for name in sorted(missing)]
            newer = unknown and not missing
            raise (NewerIdentity if newer else ValueError)(f"identity has {', '.join(problems)}")
        try:
            expires = datetime.datetime.strptime(data["expires"], "%Y-%m-%dT%H:%M:%SZ")
            return cls(
                username=data["username"],
                cluster=data["cluster"],
                roles=data["roles"],
                traits=data["traits"],
                logins=data["logins"],
                expires=expires.replace(tzinfo=datetime.UTC),
                kind=data["kind"],
                route_to_cluster=data.get("route_to_cluster"),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"identity is invalid: {exc}") from exc


@attrs.frozen
class HostIdentity:
    """What a verified SSH host certificate says about a server."""

    host_id: str
    cluster: str
    principals: tuple[str, ...]
    expires: datetime.datetime

    @property
    def label(self) -> str:
        """``host_id@cluster``, how messages name this host."""
        return f"{self.host_id}@{self.cluster}"
