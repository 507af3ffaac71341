"""Join a cluster with a token through its proxy, and keep the identity that results.

A node (or a proxy joining another's auth) generates its key locally; only the public halves
travel. The proxy is trusted the way ``tether login`` trusts it: by the cluster CA pin printed
by ``tetherctl tokens add``, by the system trust store, or (testing only) not at all.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import attrs
from cryptography import x509

from tether import pki
from tether.client.web import establish_trust, proxy_call

__all__ = ["JoinedIdentity", "join_cluster", "load_identity", "save_identity"]


@attrs.frozen
class JoinedIdentity:
    """A joined host's key, certificates and the cluster CAs it trusts."""

    identity: pki.Identity
    private_key: pki.PrivateKey
    ssh_host_cert: str
    tls_cert: x509.Certificate
    tls_cas: tuple[x509.Certificate, ...]
    ssh_user_ca_lines: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]

    @classmethod
    def from_json(cls, body: dict[str, Any], key: pki.PrivateKey) -> JoinedIdentity:
        """From a join answer (``/webapi/join``) and the key whose public halves were sent."""
        return _from_json(body, key)


async def join_cluster(
    proxy: str,
    token: str,
    *,
    host_id: str,
    hostname: str,
    role: str = "node",
    addresses: Sequence[str] = (),
    ca_pin: str | None = None,
    insecure: bool = False,
) -> JoinedIdentity:
    """Join through ``proxy`` with ``token``.

    :raises AccessDenied: the token is unknown, expired or of another kind.
    :raises TrustError: the proxy cannot be verified (see ``ca_pin``).
    """
    context = await establish_trust(proxy, insecure=insecure, ca_pin=ca_pin)
    key = pki.generate_private_key()
    body = await proxy_call(
        proxy,
        "POST",
        "/webapi/join",
        context,
        json={
            "token": token,
            "role": role,
            "host_id": host_id,
            "hostname": hostname,
            "addresses": list(addresses),
            "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
            "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
        },
    )
    return JoinedIdentity.from_json(body, key)


def _from_json(body: dict[str, Any], key: pki.PrivateKey) -> JoinedIdentity:
    return JoinedIdentity(
        identity=pki.Identity.from_json(body["identity"]),
        private_key=key,
        ssh_host_cert=str(body["ssh_host_cert"]),
        tls_cert=pki.load_cert(str(body["tls_cert"]).encode()),
        tls_cas=tuple(pki.load_cert(str(p).encode()) for p in body["tls_ca_certs"]),
        ssh_user_ca_lines=tuple(str(line) for line in body["ssh_user_ca"]),
        ssh_host_ca_lines=tuple(str(line) for line in body["ssh_host_ca"]),
    )


_FILES = {
    "key": "key.pem",
    "ssh_host_cert": "ssh_host_cert.pub",
    "tls_cert": "tls.crt",
    "tls_cas": "cas.pem",
    "meta": "identity.json",
}


def save_identity(directory: pathlib.Path, joined: JoinedIdentity) -> None:
    """Write the identity under ``directory`` (0700, files 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(directory / _FILES["key"], pki.private_key_to_pem(joined.private_key))
    pki.write_secret_file(directory / _FILES["ssh_host_cert"], joined.ssh_host_cert.encode())
    pki.write_secret_file(directory / _FILES["tls_cert"], pki.cert_to_pem(joined.tls_cert))
    pki.write_secret_file(directory / _FILES["tls_cas"], pki.certs_to_pem(joined.tls_cas))
    meta = {
        "identity": joined.identity.to_json(),
        "ssh_user_ca": list(joined.ssh_user_ca_lines),
        "ssh_host_ca": list(joined.ssh_host_ca_lines),
    }
    pki.write_secret_file(directory / _FILES["meta"], json.dumps(meta, indent=2).encode())


def load_identity(directory: pathlib.Path) -> JoinedIdentity | None:
    """The identity saved by :func:`save_identity`, or None when this host has not joined."""
    try:
        meta = json.loads((directory / _FILES["meta"]).read_text())
        key = pki.load_private_key((directory / _FILES["key"]).read_bytes())
        ssh_cert = (directory / _FILES["ssh_host_cert"]).read_text()
        tls_cert = pki.load_cert((directory / _FILES["tls_cert"]).read_bytes())
        cas = tuple(pki.load_certs((directory / _FILES["tls_cas"]).read_bytes()))
    except FileNotFoundError:
        return None
    return JoinedIdentity(
        identity=pki.Identity.from_json(meta["identity"]),
        private_key=key,
        ssh_host_cert=ssh_cert,
        tls_cert=tls_cert,
        tls_cas=cas,
        ssh_user_ca_lines=tuple(meta["ssh_user_ca"]),
        ssh_host_ca_lines=tuple(meta["ssh_host_ca"]),
    )
