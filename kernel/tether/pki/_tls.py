"""TLS contexts for Tether's mutual-TLS connections, and reading the peer's identity.

Built on the stdlib ``ssl`` module, which the proxy's own TLS stream class and
``trio.SSLStream`` both drive. Only TLS 1.2 and later are offered; TLS 1.3 is preferred by
OpenSSL on its own. Key material is handed to OpenSSL through an anonymous in-memory file
where the platform has one, because ``ssl`` can only load certificate chains from paths and a
private key should not touch the disk just to be loaded.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from cryptography import x509

from ._authority import X509CertAuthority
from ._identity import Identity
from ._keys import PrivateKey, cert_to_pem, private_key_to_pem
from ._x509 import X509TrustAnchor, X509TrustedCAs, verify_x509_cert

__all__ = [
    "CLIENT_AUTH_MODES",
    "PeerCertificateSource",
    "client_ssl_context",
    "identity_from_peer",
    "present_certificate",
    "server_ssl_context",
]

CLIENT_AUTH_MODES: dict[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class PeerCertificateSource(Protocol):
    """Anything with ``getpeercert``: ``ssl.SSLObject``, ``ssl.SSLSocket``, ``trio.SSLStream``."""

    def getpeercert(self, binary_form: bool) -> Any:
        """Return the peer certificate (DER when *binary_form*), or ``None``."""


def _ca_bundle(cas: Sequence[X509TrustAnchor]) -> str:
    certs = [ca.certificate if isinstance(ca, X509CertAuthority) else ca for ca in cas]
    return "".join(cert_to_pem(cert).decode() for cert in certs)


@contextlib.contextmanager
def _pem_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read *data* from, gone when the block exits."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("tether-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="tether-tls-") as tmp:  # created 0700
        path = pathlib.Path(tmp) / "chain.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield str(path)


def present_certificate(ctx: ssl.SSLContext, cert: x509.Certificate, key: PrivateKey) -> None:
    """Make *ctx* present *cert* (with *key*) in its handshakes from now on.

    Connections already made keep the certificate they presented; a host that renews its
    certificate calls this on the contexts it holds instead of rebuilding every client.
    """
    with _pem_path(cert_to_pem(cert) + private_key_to_pem(key)) as path:
        ctx.load_cert_chain(path)


def _base_context(*, server: bool, alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_ssl_context(
    cert: x509.Certificate,
    key: PrivateKey,
    *,
    client_cas: Sequence[X509TrustAnchor] = (),
    client_auth: str = "none",
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """A server context presenting *cert*; *client_auth* is ``"none"``, ``"optional"`` or
    ``"required"``, with client certificates checked against *client_cas*.

    ``"optional"`` serves the proxy's public port, where browsers and ``/webapi/ping`` come
    without certificates; the caller then reads the identity with :func:`identity_from_peer`.
    """
    if client_auth not in CLIENT_AUTH_MODES:
        raise ValueError(
            f"client_auth must be one of {', '.join(CLIENT_AUTH_MODES)}, not {client_auth!r}"
        )
    if client_auth != "none" and not client_cas:
        raise ValueError(f"client_auth={client_auth!r} needs at least one client CA")
    ctx = _base_context(server=True, alpn=alpn)
    present_certificate(ctx, cert, key)
    if client_cas:
        ctx.load_verify_locations(cadata=_ca_bundle(client_cas))
    ctx.verify_mode = CLIENT_AUTH_MODES[client_auth]
    return ctx


def client_ssl_context(
    *,
    trusted_cas: Sequence[X509TrustAnchor] | None,
    cert: x509.Certificate | None = None,
    key: PrivateKey | None = None,
    alpn: Sequence[str] = (),
    insecure: bool = False,
) -> ssl.SSLContext:
    """A client context that verifies the server against *trusted_cas* (``None``: the system
    trust store, for a proxy with a public certificate) and presents *cert* if given.

    *insecure* turns verification off entirely; it exists for tests and ``--insecure`` against
    a throwaway cluster, never as a default.
    """
    if (cert is None) != (key is None):
        raise ValueError("pass both cert and key, or neither")
    if trusted_cas is not None and not trusted_cas and not insecure:
        raise ValueError("trusted_cas is empty; pass None for the system trust store")
    ctx = _base_context(server=False, alpn=alpn)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif trusted_cas is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cadata=_ca_bundle(trusted_cas))
    if cert is not None and key is not None:
        present_certificate(ctx, cert, key)
    return ctx


def identity_from_peer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | PeerCertificateSource,
    trusted_cas: X509TrustedCAs,
    *,
    now: datetime.datetime | None = None,
) -> Identity | None:
    """The verified identity of the peer of a completed handshake, or ``None`` without a cert.

    The handshake already checked the chain; this re-verifies through
    :func:`verify_x509_cert` so that the identity rules (cluster binding, validity, decoding)
    are the same as for every other door; *trusted_cas* by cluster name binds the peer to the
    CAs stored under the cluster it claims. Raises a ``TrustError`` if the certificate fails.
    """
    der = ssl_object.getpeercert(True)
    if not der:
        return None
    return verify_x509_cert(bytes(der), trusted_cas=trusted_cas, now=now)
