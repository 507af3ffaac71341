"""Certificates for tests, minted by a cluster's real certificate authorities.

A protocol plugin's server verifies users' certificates and presents a host certificate; its
client verifies the node's. Tests of those parts in one process need a cluster's CAs without
a running cluster: :class:`ClusterAuthorities` makes them (``generate`` in memory,
``load_or_create`` in a directory), and the issuing functions are the ones the auth service
itself signs with, so what a test mints is what a cluster would. The key, certificate and
identity types, and reading and writing keys (``load_private_key``,
``private_key_to_openssh``), are in :mod:`tether.api`.

For a running cluster, :func:`login_context` presents a user's login (``tether login``) to a
cluster that login did not go to: a root user's certificate at a leaf's own proxy.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from tether.client.profile import Profile
from tether.datadir import admin_identity_paths
from tether.pki import (
    ClusterAuthorities,
    SSHCertAuthority,
    X509CertAuthority,
    client_ssl_context,
    generate_private_key,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    issue_x509_cert,
    load_cert,
    load_certs,
    load_private_key,
    ssh_public_key_line,
    write_secret_file,
)
from tether.testing.cluster import RunningCluster

__all__ = [
    "ClusterAuthorities",
    "SSHCertAuthority",
    "X509CertAuthority",
    "generate_private_key",
    "issue_ssh_host_cert",
    "issue_ssh_user_cert",
    "issue_x509_cert",
    "login_context",
    "ssh_public_key_line",
    "write_secret_file",
]


def login_context(
    profile: Profile, cluster: RunningCluster, *, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """A TLS client context presenting ``profile``'s certificate to ``cluster``'s proxy and
    trusting the CAs ``cluster`` trusts, whichever cluster the login was made at.

    :param alpn: the protocols to offer (a plugin's front door, such as ``tether-ssh/1``).
    """
    trusted = admin_identity_paths(cluster.data_dir)[2]
    return client_ssl_context(
        trusted_cas=load_certs(trusted.read_bytes()),
        cert=load_cert(profile.tls_cert_file.read_bytes()),
        key=load_private_key(profile.tls_key_file.read_bytes()),
        alpn=alpn,
    )
