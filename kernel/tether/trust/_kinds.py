"""The two resources of a trust: ``trusted_cluster`` on the leaf, ``remote_cluster`` on the root.

The guide's ``trusted_cluster.yaml`` and the ``tctl get rc`` output parse unchanged, so the
field names, nesting and versions are Teleport's. Both kinds are registered by the builtin
``core-kinds``.

- ``trusted_cluster`` (``tc``) is written by the leaf's administrator: where the root is, the
  invitation token for the first handshake, and how root roles map to leaf roles. The token is a
  secret path: ``get`` hides it unless ``--with-secrets``. It is optional here because it is
  needed only until the clusters have exchanged CAs; editing the output of ``get`` (to change
  ``enabled`` or ``role_map``) must not require it. Without one, the root refuses the first
  handshake.
- ``remote_cluster`` (``rc``) is the root's record of a leaf. The root's auth service creates it
  when the leaf's handshake succeeds and reports ``status`` (``online``/``offline`` and the
  last heartbeat); administrators only set ``metadata.labels`` on it (``update rc/NAME
  --set-labels``), to decide who sees the leaf. Creating one by hand is refused by the auth
  service: a remote_cluster without a handshake would be a leaf nobody can verify.
"""

from __future__ import annotations

import datetime
import re
from typing import Literal

import attrs

from tether.config import HostPort
from tether.resources import InvalidField, Resource, ResourceKind
from tether.trust._rolemap import RoleMapRule, parse_role_map

__all__ = [
    "REMOTE_CLUSTER",
    "TRUSTED_CLUSTER",
    "RemoteClusterSpec",
    "RemoteClusterStatus",
    "TrustedClusterSpec",
]

# -- trusted_cluster (leaf) -------------------------------------------------------------------

_CA_PIN = re.compile(r"^sha256:[0-9a-fA-F]{64}$")


@attrs.frozen(kw_only=True)
class TrustedClusterSpec:
    """``spec`` of a trusted_cluster: the root to trust and how its roles map to this leaf's.

    :param enabled: false closes the tunnel and stops trusting the root's CA, keeping the
        resource to turn it back on (the guide's "temporarily disable").
    :param token: the invitation token of ``tokens add --type=trusted_cluster`` on the root;
        needed for the first handshake only.
    :param tunnel_addr: where the leaf's agents dial the root's reverse tunnel, ``host:port``;
        empty means ``web_proxy_addr``, since a Tether proxy serves tunnels on its one port.
    :param web_proxy_addr: the root proxy's public address, ``host:port``.
    :param role_map: how root roles map to this leaf's roles (:func:`tether.trust.map_roles`).
    :param ca_pin: ``sha256:<hex>`` of the root's CA key, to verify the root proxy even when its
        web certificate is self-signed; without it the system's trust store decides.
    """

    enabled: bool = True
    token: str = ""
    tunnel_addr: str = ""
    web_proxy_addr: str
    role_map: tuple[RoleMapRule, ...] = ()
    ca_pin: str | None = None

    @property
    def tunnel_dial_addr(self) -> str:
        """The address the leaf's agents dial: ``tunnel_addr``, else ``web_proxy_addr``."""
        return self.tunnel_addr or self.web_proxy_addr


def _check_dial_addr(path: tuple[str, ...], text: str) -> None:
    """A root address the leaf dials: host:port, a real port, not a listen-anywhere host."""
    hint = "write the root proxy's public address as host:port, e.g. rootcluster.example.com:443"
    try:
        addr = HostPort.parse(text)
    except ValueError as exc:
        raise InvalidField(path, str(exc), hint=hint) from None
    if addr.port == 0:
        raise InvalidField(path, f"{text!r}: port 0 cannot be dialled", hint=hint)
    if addr.is_unspecified:
        raise InvalidField(
            path, f"{text!r} is a listen-on-every-interface address, not one to dial", hint=hint
        )


def _validate_trusted_cluster(resource: Resource) -> None:
    spec: TrustedClusterSpec = resource.spec
    _check_dial_addr(("spec", "web_proxy_addr"), spec.web_proxy_addr)
    if spec.tunnel_addr:
        _check_dial_addr(("spec", "tunnel_addr"), spec.tunnel_addr)
    if spec.ca_pin is not None and not _CA_PIN.match(spec.ca_pin):
        raise InvalidField(
            ("spec", "ca_pin"),
            f"{spec.ca_pin!r} is not a CA pin: expected sha256: and 64 hex digits",
            hint="copy the pin that `tetherctl tokens add` printed on the root",
        )
    if not spec.role_map:
        # Teleport's open-source edition maps admin to admin when role_map is left out; a
        # silent administrator mapping is not a default to copy, nor is a trust no one can use.
        raise InvalidField(
            ("spec", "role_map"),
            "a trusted cluster needs at least one role_map rule, or no root user gets a role "
            "on this cluster",
            hint='role_map: [{remote: access, local: [visitor]}]; "*" maps every root role',
        )
    parse_role_map(spec.role_map, path=("spec", "role_map"))


TRUSTED_CLUSTER = ResourceKind(
    name="trusted_cluster",
    aliases=("trusted_clusters", "tc"),
    versions=("v2",),
    spec_type=TrustedClusterSpec,
    storage_prefix="/trusted_clusters/",
    secret_paths=(("spec", "token"),),
    validate=_validate_trusted_cluster,
    # nodes map root users' roles with the role_map; the token stays hidden (no secrets)
    readable_by=("node", "proxy"),
)


# -- remote_cluster (root) --------------------------------------------------------------------


@attrs.frozen
class RemoteClusterSpec:
    """``spec`` of a remote_cluster: empty. A leaf is its name, labels and status."""


@attrs.frozen
class RemoteClusterStatus:
    """What the root reports about a leaf; the root's auth service writes it, not people.

    :param connection: ``online`` while a tunnel from the leaf is up and heartbeating.
    :param last_heartbeat: when the root last heard from the leaf; None before the first.
    :param proxies: the root's proxies the leaf holds a live tunnel to (high availability:
        every one of them, once the leaf has learned of them).
    """

    connection: Literal["online", "offline"] = "offline"
    last_heartbeat: datetime.datetime | None = None
    proxies: tuple[str, ...] = ()


REMOTE_CLUSTER = ResourceKind(
    name="remote_cluster",
    aliases=("remote_clusters", "rc"),
    versions=("v3",),
    spec_type=RemoteClusterSpec,
    status_type=RemoteClusterStatus,
    storage_prefix="/remote_clusters/",
    readable_by=("proxy",),
    # users see the leaves their roles' cluster_labels select (unlabelled: everyone)
    access_labels="cluster_labels",
)
