"""Route names: TLS server names that say which protocol, cluster and target a connection is
for, so that a client that can set only a server name (kubectl's ``tls-server-name``) reaches a
target through the proxy's one port without an ALPN id or a first line.

A route name is ONE DNS label under :data:`ROUTE_NAME_SUFFIX`::

    <prefix>-<hex(utf8 cluster)>-<hex(utf8 target)>.tether.cluster.local

One label, so that the single wildcard name every proxy's certificate carries
(:data:`ROUTE_NAME_WILDCARD`) covers every route of every protocol; hex, because cluster and
target names may hold upper case, dots and underscores, which a DNS label may not (and a dot
would put the name out of the wildcard's reach). The suffix is no domain of anyone's: a
client reaches the proxy at its own address and only *asks* for this name, the way a
kubeconfig's ``tls-server-name`` is asked for at the cluster's ``server`` URL.

Sans-IO: names in, names out.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "MAX_SERVER_NAME",
    "PREFIX",
    "ROUTE_NAME_SUFFIX",
    "ROUTE_NAME_WILDCARD",
    "RouteName",
    "is_route_domain",
    "parse_route_server_name",
    "route_server_name",
]

#: The DNS suffix of every route name.
ROUTE_NAME_SUFFIX = "tether.cluster.local"

#: The one name in a proxy's certificate that covers every route name.
ROUTE_NAME_WILDCARD = f"*.{ROUTE_NAME_SUFFIX}"

#: What a protocol's prefix may be: the part of a DNS label before the first ``-``.
PREFIX = re.compile(r"[a-z0-9]+")

#: The longest name DNS (and so SNI) allows, in characters, without a trailing dot.
MAX_SERVER_NAME = 253

_HEX = re.compile(r"(?:[0-9a-f]{2})+")


@attrs.frozen
class RouteName:
    """What a route name selects.

    :param prefix: the protocol's ``server_name_prefix`` (``"kube"``).
    :param cluster: the cluster the target is in, as Tether names it (``"leaf"``).
    :param target: the target as a user would type it: a name, an id or labels.
    """

    prefix: str
    cluster: str
    target: str


def _encoded(text: str, what: str) -> str:
    if not text or not text.isprintable():
        raise ValueError(f"a route name needs a {what} of printable text, not {text!r}")
    return text.encode().hex()


def route_server_name(prefix: str, cluster: str, target: str) -> str:
    """The TLS server name that routes to ``target`` of ``cluster`` with the protocol whose
    ``server_name_prefix`` is ``prefix``: ``route_server_name("kube", "leaf", "prod")`` is
    ``"kube-6c656166-70726f64.tether.cluster.local"``.

    The first label may be longer than the 63 characters DNS allows a label: the name is
    never looked up, only sent as SNI and checked against the certificate's wildcard, and Go's
    TLS client (kubectl) and OpenSSL accept it. Python's ``ssl`` refuses such a label in a
    ``str`` ``server_hostname`` (its IDNA codec checks lengths): pass it as ASCII bytes.

    :raises ValueError: ``prefix`` is not lower-case letters and digits, ``cluster`` or
        ``target`` is empty or not printable, or the whole name would be longer than the 253
        characters a server name may have (a shorter target does it: a name or an id rather
        than many labels).
    """
    if not PREFIX.fullmatch(prefix):
        raise ValueError(f"a route name's prefix is lower-case letters and digits, not {prefix!r}")
    name = f"{prefix}-{_encoded(cluster, 'cluster')}-{_encoded(target, 'target')}"
    name = f"{name}.{ROUTE_NAME_SUFFIX}"
    if len(name) > MAX_SERVER_NAME:
        raise ValueError(
            f"the route name for {target!r} in cluster {cluster!r} would be {len(name)} "
            f"characters, more than the {MAX_SERVER_NAME} a TLS server name may have; name "
            "the target by a shorter name or its id"
        )
    return name


def parse_route_server_name(name: str) -> RouteName | None:
    """What the route name ``name`` selects (any letter case), or None when ``name`` is no
    well-formed route name: another suffix, more than one label before it, a prefix that is
    not letters and digits, hex that is odd, empty or not UTF-8 text, a name longer than 253
    characters. Never raises: a server name comes from anyone."""
    if len(name) > MAX_SERVER_NAME or not name.isascii():
        return None
    label, _, suffix = name.lower().partition(".")
    if suffix != ROUTE_NAME_SUFFIX:
        return None
    parts = label.split("-")
    if len(parts) != 3:
        return None
    prefix, *hexes = parts
    if not PREFIX.fullmatch(prefix) or not all(_HEX.fullmatch(part) for part in hexes):
        return None
    try:
        cluster, target = (bytes.fromhex(part).decode() for part in hexes)
    except UnicodeDecodeError:
        return None
    if not (cluster.isprintable() and target.isprintable()):
        return None
    return RouteName(prefix=prefix, cluster=cluster, target=target)


def is_route_domain(name: str) -> bool:
    """Whether a certificate name ``name`` is the route domain or within it (a route name,
    the wildcard): names only proxies may hold, since any route name's client trusts them."""
    lowered = name.lower().rstrip(".")
    return lowered == ROUTE_NAME_SUFFIX or lowered.endswith(f".{ROUTE_NAME_SUFFIX}")
