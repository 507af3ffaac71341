"""TLS contexts for Tether's mutual-TLS connections, and reading the peer's identity.

Built on the stdlib ``ssl`` module, which the proxy's own TLS stream class and
``trio.SSLStream`` both drive. Every context follows Mozilla's "intermediate" profile, which
browsers and scanners such as ``sslyze`` check a public port against: TLS 1.2 and later (1.3
preferred by OpenSSL on its own), forward-secret AEAD cipher suites only, in the profile's
order (AES-128-GCM first, in TLS 1.3 too), and the key exchange groups X25519, P-256 and
P-384. Key material is handed to OpenSSL through an anonymous in-memory file where the
platform has one, because ``ssl`` can only load certificate chains from paths and a private
key should not touch the disk just to be loaded.
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import datetime
import functools
import logging
import os
import pathlib
import ssl
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, Protocol

from cryptography import x509

from tether.errors import TrustError

from ._authority import X509CertAuthority
from ._errors import MalformedCertificate
from ._identity import Identity
from ._keys import PrivateKey, cert_to_pem, private_key_to_pem
from ._x509 import X509TrustAnchor, X509TrustedCAs, read_x509_identity, verify_x509_cert

__all__ = [
    "CLIENT_AUTH_MODES",
    "GROUPS",
    "TLS12_CIPHERS",
    "TLS13_CIPHERSUITES",
    "PeerCertificateSource",
    "UnexpectedPeerKind",
    "check_peer_kind",
    "client_ssl_context",
    "identity_from_peer",
    "present_certificate",
    "server_ssl_context",
]

log = logging.getLogger(__name__)

#: TLS 1.2 cipher suites: Mozilla's "intermediate" list, ECDHE with AES-GCM or ChaCha20-Poly1305.
#: Its DHE suites are left out: no DH parameters are loaded, so they could never be chosen.
#: Python's default list adds CBC suites with SHA-2 MACs, which the profile rejects.
TLS12_CIPHERS = ":".join(
    f"ECDHE-{auth}-{cipher}"
    for cipher in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305")
    for auth in ("ECDSA", "RSA")
)

#: TLS 1.3 cipher suites in the profile's order. OpenSSL's default has the same three with
#: AES-256-GCM first, and a server of ``ssl`` picks by its own order: AES-128-GCM costs less
#: CPU per byte for the same forward secrecy (and is what the OpenSSH baseline is pinned to).
TLS13_CIPHERSUITES: tuple[str, ...] = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

#: Key exchange groups, preferred first: the profile's. OpenSSL also offers X448 and P-521,
#: which the profile, and so ``sslyze``, rejects.
GROUPS: tuple[str, ...] = ("X25519", "P-256", "P-384")

#: ``SSL_CTX_set1_groups_list`` is a macro over this ``SSL_CTX_ctrl`` command (``ssl.h``).
_SSL_CTRL_SET_GROUPS_LIST = 92

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


class _OpenSSLCalls:
    """The ``SSL_CTX`` setters ``ssl`` lacks on this Python, called through ctypes."""

    def __init__(self, lib: ctypes.CDLL, ssl_ctx: Callable[[ssl.SSLContext], int | None]) -> None:
        self._ssl_ctx = ssl_ctx
        self._ctrl = lib.SSL_CTX_ctrl
        self._ctrl.restype = ctypes.c_long
        self._ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        # OpenSSL 1.1.1 and later; LibreSSL has it from 3.4
        self._ciphersuites = getattr(lib, "SSL_CTX_set_ciphersuites", None)
        if self._ciphersuites is not None:
            self._ciphersuites.restype = ctypes.c_int
            self._ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def set_groups(self, ctx: ssl.SSLContext, groups: bytes) -> bool:
        """``SSL_CTX_set1_groups_list``; False where OpenSSL refuses the list."""
        return bool(self._ctrl(self._ssl_ctx(ctx), _SSL_CTRL_SET_GROUPS_LIST, 0, groups) == 1)

    def set_ciphersuites(self, ctx: ssl.SSLContext, suites: bytes) -> bool:
        """``SSL_CTX_set_ciphersuites`` (TLS 1.3); False where it is missing or refuses."""
        if self._ciphersuites is None:
            return False
        return bool(self._ciphersuites(self._ssl_ctx(ctx), suites) == 1)


@functools.cache
def _openssl_calls() -> _OpenSSLCalls | None:
    """The setters of the OpenSSL the ``ssl`` module runs on, or None where none can be had.

    Python 3.11 can set one group only (``set_ecdh_curve``; ``SSLContext.set_groups`` is
    CPython issue 136306, used where it exists) and no TLS 1.3 suites at all, so these call
    OpenSSL, found through the ``_ssl`` extension's own symbols, on the ``SSL_CTX`` pointer
    that CPython keeps right after the object header of every ``SSLContext``. The pointer is
    trusted only once ``SSL_CTX_get_options`` through it reads back the options ``ssl``
    reports.
    """
    if sys.implementation.name != "cpython":
        return None

    def ssl_ctx(ctx: ssl.SSLContext) -> int | None:
        return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value

    try:
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        get_options = lib.SSL_CTX_get_options
        calls = _OpenSSLCalls(lib, ssl_ctx)
    except (OSError, AttributeError):
        return None
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.options |= ssl.OP_NO_TICKET  # set through ssl, so reading it back proves the pointer
    pointer = ssl_ctx(probe)
    if not pointer or get_options(pointer) != probe.options:
        return None
    return calls


def _restrict_groups(ctx: ssl.SSLContext) -> None:
    """Offer and accept only :data:`GROUPS` for key exchange on *ctx*."""
    groups = ":".join(GROUPS)
    set_groups = getattr(ctx, "set_groups", None)  # a later Python's own way
    if set_groups is not None:
        set_groups(groups)
        return
    calls = _openssl_calls()
    if calls is not None and calls.set_groups(ctx, groups.encode()):
        return
    # Elsewhere one group, the one every TLS stack has; still within the profile.
    log.warning("cannot set TLS key exchange groups here; offering P-256 only")
    ctx.set_ecdh_curve("prime256v1")


def _order_tls13_suites(ctx: ssl.SSLContext) -> None:
    """Prefer :data:`TLS13_CIPHERSUITES` in their order on *ctx*; where OpenSSL cannot be
    reached, its default (the same three suites, AES-256-GCM first) stays, within the profile."""
    calls = _openssl_calls()
    if calls is None or not calls.set_ciphersuites(ctx, ":".join(TLS13_CIPHERSUITES).encode()):
        log.debug("cannot order TLS 1.3 cipher suites here; OpenSSL's default order stays")


class UnexpectedPeerKind(ssl.SSLCertVerificationError, TrustError):
    """The server's certificate chain verified, but the identity it carries is of another
    kind than the connection expects: a node's where only a proxy may answer.

    Every host certificate of a cluster names ``localhost`` and the loopback addresses, so a
    host name check cannot tell a node from the proxy; the identity's kind can. Also an
    ``ssl.SSLError``, so that TLS streams (the kernel's, trio's, httpx's) treat it as the
    failed handshake it is.
    """

    def __init__(self, message: str) -> None:
        ssl.SSLCertVerificationError.__init__(self, message)
        self.message = message
        self.hint = None

    def __str__(self) -> str:  # ssl.SSLError would show its args as a tuple
        return self.message


def check_peer_kind(der: bytes | None, kinds: Collection[str]) -> Identity:
    """The identity in a server's certificate, which the handshake verified, if its kind is
    one of ``kinds``.

    :raises UnexpectedPeerKind: no certificate, no Tether identity in it, or another kind.
    """
    expected = " or ".join(
        f"{'an' if kind[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {kind}'s"
        for kind in sorted(kinds)
    )
    if not der:
        raise UnexpectedPeerKind(f"the server presented no certificate, where {expected} belongs")
    try:
        identity = read_x509_identity(der)
    except MalformedCertificate:
        raise UnexpectedPeerKind(
            f"the server presented a certificate without a Tether identity, where {expected} "
            "belongs"
        ) from None
    if identity.kind not in kinds:
        raise UnexpectedPeerKind(
            f"the server presented the certificate of {identity.kind} {identity.username!r} "
            f"of cluster {identity.cluster!r}, where only {expected} is accepted"
        )
    return identity


class _KindCheckingContext(ssl.SSLContext):
    """A client context whose connections accept only servers of :attr:`peer_kinds`."""

    peer_kinds: frozenset[str] = frozenset()


class _KindCheckedObject(ssl.SSLObject):
    """The memory-BIO TLS object (trio's and httpx's streams) of a :class:`_KindCheckingContext`."""

    context: _KindCheckingContext

    def do_handshake(self) -> None:
        super().do_handshake()
        check_peer_kind(self.getpeercert(True), self.context.peer_kinds)


class _KindCheckedSocket(ssl.SSLSocket):
    """The socket TLS object (:class:`tether.tlsstream.TLSStream`) of a
    :class:`_KindCheckingContext`."""

    context: _KindCheckingContext

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        check_peer_kind(self.getpeercert(True), self.context.peer_kinds)


_KindCheckingContext.sslobject_class = _KindCheckedObject
_KindCheckingContext.sslsocket_class = _KindCheckedSocket


def _base_context(
    *, server: bool, alpn: Sequence[str], peer_kinds: Collection[str] = ()
) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    ctx = _KindCheckingContext(protocol) if peer_kinds else ssl.SSLContext(protocol)
    if isinstance(ctx, _KindCheckingContext):
        ctx.peer_kinds = frozenset(peer_kinds)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(TLS12_CIPHERS)
    _order_tls13_suites(ctx)
    _restrict_groups(ctx)
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
    peer_kinds: Collection[str] = (),
) -> ssl.SSLContext:
    """A client context that verifies the server against *trusted_cas* (``None``: the system
    trust store, for a proxy with a public certificate) and presents *cert* if given.

    *insecure* turns verification off entirely; it exists for tests and ``--insecure`` against
    a throwaway cluster, never as a default.

    *peer_kinds*: the identity kinds the server's certificate may carry (``{"proxy"}`` where
    the cluster's proxy is expected); any other fails the handshake with
    :class:`UnexpectedPeerKind`. Only for *trusted_cas* that are clusters' CAs, whose every
    certificate carries an identity.
    """
    if (cert is None) != (key is None):
        raise ValueError("pass both cert and key, or neither")
    if trusted_cas is not None and not trusted_cas and not insecure:
        raise ValueError("trusted_cas is empty; pass None for the system trust store")
    if peer_kinds and (trusted_cas is None or insecure):
        raise ValueError("peer_kinds needs trusted_cas: clusters' CAs, with verification on")
    ctx = _base_context(server=False, alpn=alpn, peer_kinds=peer_kinds)
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
