"""A leaf that trusts a root, set up as the guide's admins do it, for tests that cross clusters.

The root admin's invitation (``tetherctl tokens add --type=trusted_cluster``), the leaf admin's
``trusted_cluster`` document and ``tetherctl create``, and the ``remote_cluster`` status the
root shows, each written once here so that the tests of every protocol plugin join clusters the
same way and wait on the same signal.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence

from tether.testing.cluster import RunningCluster

__all__ = [
    "connection",
    "create_trusted_cluster",
    "invite",
    "remote_status",
    "trusted_cluster_yaml",
]


def invite(root: RunningCluster, *, ttl: str | None = None) -> str:
    """A new invitation token from ``root`` (``tokens add --type=trusted_cluster``), checking
    that it comes with the root's CA pin as the guide's admin would pass it on.

    :param ttl: how long the token lasts (``5m``); the cluster's default otherwise.
    """
    args = ["tokens", "add", "--type=trusted_cluster", "--format=json"]
    if ttl is not None:
        args.append(f"--ttl={ttl}")
    invitation = json.loads(root.tetherctl(*args).stdout)
    assert invitation["ca_pin"] == root.ca_pin
    return str(invitation["token"])


def trusted_cluster_yaml(
    root: RunningCluster,
    token: str,
    *,
    enabled: bool = True,
    proxy_addr: str | None = None,
    role_map: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The guide's trusted_cluster for a leaf of ``root``: ``access`` maps to ``visitor``.

    :param proxy_addr: the address the leaf dials (a load balancer); the root's proxy otherwise.
    :param role_map: another mapping, root role -> local roles, in this order.
    """
    addr = proxy_addr or root.proxy_addr
    rules = ""
    for remote, local in (role_map or {"access": ["visitor"]}).items():
        names = ", ".join(json.dumps(name) for name in local)
        rules += f"    - remote: {json.dumps(remote)}\n      local: [{names}]\n"
    return f"""
kind: trusted_cluster
version: v2
metadata:
  name: {root.name}
spec:
  enabled: {"true" if enabled else "false"}
  token: "{token}"
  tunnel_addr: {addr}
  web_proxy_addr: {addr}
  ca_pin: {root.ca_pin}
  role_map:
{rules}"""


def create_trusted_cluster(
    leaf: RunningCluster, text: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``tetherctl create [ARGS] trusted_cluster.yaml`` on ``leaf`` with the document ``text``
    (``--force`` to change the trust in place)."""
    path = leaf.directory / "trusted_cluster.yaml"
    path.write_text(text)
    created: subprocess.CompletedProcess[str] = leaf.tetherctl(
        "create", *args, str(path), check=check
    )
    return created


def remote_status(root: RunningCluster, leaf: str = "leaf") -> dict[str, object]:
    """The ``status`` of the remote_cluster ``leaf`` on ``root`` (``tetherctl get rc``); empty
    while there is none, before the handshake or after ``tetherctl rm rc/LEAF``."""
    found = json.loads(root.tetherctl("get", "rc", "--format=json").stdout)
    statuses = {doc["metadata"]["name"]: doc.get("status") or {} for doc in found}
    return dict(statuses.get(leaf, {}))


def connection(root: RunningCluster, leaf: str = "leaf") -> str:
    """``online`` or ``offline`` (``None`` while there is no remote_cluster): whether
    ``root`` holds a live tunnel from ``leaf``."""
    return str(remote_status(root, leaf).get("connection"))
