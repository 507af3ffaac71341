"""A client of a running cluster's auth API as one of its hosts, minted in the test.

Auth issues host identities at a join; a test that needs a host of a given kind and roles
(a node carrying ``Hooktest``) mints one with the cluster's own X.509 CA, read from its data
directory, exactly as auth would sign it.
"""

from __future__ import annotations

import datetime

from tether import pki
from tether.auth.http_client import AuthClient
from tether.testing.certificates import ClusterAuthorities
from tether.testing.cluster import RunningCluster


def host_client(
    cluster: RunningCluster,
    roles: tuple[str, ...] = (),
    *,
    name: str = "gadget-host",
    kind: str = "node",
    addr: str | None = None,
) -> AuthClient:
    """A client of ``cluster``'s auth (at ``addr``, default its own address) presenting a
    host certificate of ``kind`` named ``name`` with ``roles``."""
    cas = ClusterAuthorities.load_or_create(cluster.data_dir / "keys", cluster.name)
    key = pki.generate_private_key()
    identity = pki.Identity(
        username=name,
        cluster=cluster.name,
        roles=roles,
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind=kind,
    )
    cert = pki.issue_x509_cert(cas.tls, key.public_key(), identity)
    context = pki.client_ssl_context(
        trusted_cas=[cas.tls.certificate], cert=cert, key=key, peer_kinds=("auth",)
    )
    return AuthClient(f"https://{addr or cluster.auth_addr}", context)
