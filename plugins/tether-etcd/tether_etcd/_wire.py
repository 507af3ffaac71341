"""etcd's v3 JSON gateway as data: the requests the backend sends and what their answers
mean, with no I/O (the driver is :mod:`tether_etcd.backend`).

The gateway speaks etcd's protobuf messages as JSON: bytes are base64, 64-bit integers are
strings, and fields at their default value (a revision of 0, an event type of PUT, a
transaction that did not succeed) are left out.

Every key Tether stores lives under the URL's prefix (``/tether`` by default), so that
several clusters, or other programs, share one etcd. Every value carries the time its TTL
ends, which etcd's leases do not say on a read: one byte of format, then for a key with a
TTL the end as an IEEE double (seconds since the epoch), then the value.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from tether.api import ConfigError, Event, Item

__all__ = [
    "EtcdSettings",
    "decode_item",
    "decode_watch_event",
    "encode",
    "parse_url",
    "prefix_end",
    "unwrap",
    "wrap",
]

_PLAIN = b"\x00"
_WITH_EXPIRY = b"\x01"
_EXPIRY = struct.Struct(">d")


@attrs.frozen
class EtcdSettings:
    """What an ``etcd://`` URL says.

    :param endpoints: base URLs of the members to ask, in order (``http://host:port``).
    :param prefix: under which every key is stored.
    :param ca_file: the CA that signs the members' certificates (``etcd+https`` only).
    :param cert_file: this client's certificate, when the members require one.
    :param key_file: its key.
    """

    endpoints: tuple[str, ...]
    prefix: str = "/tether"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def parse_url(url: str) -> EtcdSettings:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` (``etcd+https://`` for TLS, with
    ``?ca_file=&cert_file=&key_file=``).

    :raises ConfigError: no member named, a member without a port, or an unknown parameter.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "etcd+https"):
        raise ConfigError(f"{url!r} is not an etcd:// URL")
    scheme = "https" if parts.scheme == "etcd+https" else "http"
    members = [m.strip() for m in parts.netloc.split(",") if m.strip()]
    if not members:
        raise ConfigError(
            f"storage URL {url!r} names no etcd member",
            hint="for example etcd://10.0.0.1:2379,10.0.0.2:2379/tether",
        )
    for member in members:
        host, sep, port = member.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"etcd member {member!r} in {url!r} has no port",
                hint="name each member as HOST:PORT (etcd clients listen on 2379)",
            )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"ca_file", "cert_file", "key_file"})
    if unknown:
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} in storage URL {url!r}",
            hint="etcd+https:// URLs take ca_file, cert_file and key_file",
        )
    if query and scheme == "http":
        raise ConfigError(
            f"storage URL {url!r} gives TLS files to a plain etcd:// URL",
            hint="use etcd+https:// to reach members over TLS",
        )
    prefix = parts.path.rstrip("/") or "/tether"
    return EtcdSettings(
        endpoints=tuple(f"{scheme}://{member}" for member in members),
        prefix=prefix,
        ca_file=query.get("ca_file", [None])[-1],
        cert_file=query.get("cert_file", [None])[-1],
        key_file=query.get("key_file", [None])[-1],
    )


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decode(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's ``range_end``)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\x00"  # every key
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def wrap(value: bytes, expires: float | None) -> bytes:
    """The stored form of ``value``: its TTL's end travels with it."""
    if expires is None:
        return _PLAIN + value
    return _WITH_EXPIRY + _EXPIRY.pack(expires) + value


def unwrap(stored: bytes) -> tuple[bytes, float | None]:
    """``(value, expires)`` of a stored value; a value some other program wrote under the
    prefix (no format byte Tether knows) is returned as it is."""
    if stored[:1] == _PLAIN:
        return stored[1:], None
    if stored[:1] == _WITH_EXPIRY and len(stored) >= 1 + _EXPIRY.size:
        (expires,) = _EXPIRY.unpack_from(stored, 1)
        return stored[1 + _EXPIRY.size :], expires
    return stored, None


def decode_item(kv: Mapping[str, Any], prefix: bytes) -> Item:
    """A ``KeyValue`` of a range answer as an :class:`Item` (key without the prefix)."""
    value, expires = unwrap(_decode(kv.get("value")))
    return Item(
        key=_decode(kv["key"])[len(prefix) :].decode(),
        value=value,
        revision=int(kv.get("mod_revision", 0)),
        expires=expires,
    )


def decode_watch_event(event: Mapping[str, Any], prefix: bytes) -> Event:
    """One event of a watch answer: a put with its item, or a delete (also a lease's expiry)
    with the key, ``b""`` and the revision of the delete."""
    kv = event["kv"]
    if event.get("type") == "DELETE":
        key = _decode(kv["key"])[len(prefix) :].decode()
        return Event(
            type="delete",
            item=Item(key=key, value=b"", revision=int(kv.get("mod_revision", 0))),
        )
    return Event(type="put", item=decode_item(kv, prefix))


def header_revision(answer: Mapping[str, Any]) -> int:
    """The store's revision when it answered."""
    return int(answer.get("header", {}).get("revision", 0))


def compare_revision(key: bytes, expected: int) -> dict[str, Any]:
    """A transaction condition: ``key`` is absent (``expected`` 0), or last written at
    revision ``expected``."""
    if expected == 0:
        return {"key": encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    return {
        "key": encode(key),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": str(expected),
    }


def put_request(key: bytes, value: bytes, lease: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": encode(key), "value": encode(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_request(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": encode(key)}}


def range_request(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": encode(key)}}


def txn_responses(answer: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    return list(answer.get("responses", []))
