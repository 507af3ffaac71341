"""The SSH algorithms a node's server and ``tether ssh`` offer: modern ones only.

asyncssh offers by default everything it implements, down to SHA-1 key exchange and MACs,
1,024-bit group exchange and the NIST curves, which ``ssh-audit`` fails (nine failures, more
than a stock Debian sshd). Both ends of a Tether SSH connection take these lists instead; the
stock OpenSSH client (``tether config``) and every OpenSSH since 7.4 (2016) negotiate them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "COMPRESSION_ALGS",
    "ENCRYPTION_ALGS",
    "HOST_KEY_ALGS",
    "KEX_ALGS",
    "MAC_ALGS",
    "no_liboqs_lookup",
]

#: The hybrid post-quantum exchange first (OpenSSH 9.9+), then X25519 for every OpenSSH from
#: 7.4: Debian 12's 9.2 has no ML-KEM, and the other post-quantum exchange it has (sntrup761)
#: asyncssh does only with liboqs. ``ssh-audit`` warns that curve25519-sha256 is not
#: post-quantum; dropping it would lock out most OpenSSH clients in use.
KEX_ALGS: tuple[str, ...] = ("mlkem768x25519-sha256", "curve25519-sha256")

#: Authenticated ciphers only, AES-GCM first: asyncssh does ChaCha20-Poly1305 with three cipher
#: objects per packet, in Python, where AES-GCM is one call; measured 1.5x the bulk throughput
#: on AES-NI machines. (The client's order decides; the server's only restricts.)
ENCRYPTION_ALGS: tuple[str, ...] = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
)

#: Unused with the authenticated ciphers above, but a key exchange must name some: SHA-2 in
#: encrypt-then-MAC mode with full-length tags.
MAC_ALGS: tuple[str, ...] = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128-etm@openssh.com",
)

#: No compression: it saves little on interactive sessions and compressing before encrypting
#: leaks the size of secrets mixed with attacker-chosen data (CRIME).
COMPRESSION_ALGS: tuple[str, ...] = ("none",)

#: What ``tether ssh`` accepts from a node: the Ed25519 host certificate every node holds (its
#: host key is generated at join). A plain key cannot be verified without its certificate; it is
#: listed so that a node without a certificate is refused as unverifiable, with that reason.
HOST_KEY_ALGS: tuple[str, ...] = ("ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519")


#: The names asyncssh looks liboqs up by when it is imported.
_LIBOQS = ("oqs", "liboqs")


@contextlib.contextmanager
def no_liboqs_lookup() -> Iterator[None]:
    """Import asyncssh inside this block: it then does not look for liboqs where that can
    change nothing Tether offers.

    asyncssh looks for liboqs when it is imported, with ``ctypes.util.find_library``, which
    runs ``ldconfig -p``, then ``gcc`` and ``ld`` where a compiler is installed: a dozen
    processes and tens of milliseconds of every ``tether ssh``. liboqs adds sntrup761, which
    :data:`KEX_ALGS` does not list, and ML-KEM, which asyncssh takes from ``cryptography``
    when that has it; only then is the lookup skipped.
    """
    import ctypes.util

    from cryptography.hazmat.backends.openssl import backend

    if not backend.mlkem_supported():
        yield
        return
    find_library = ctypes.util.find_library

    def without_liboqs(name: str) -> str | None:
        return None if name in _LIBOQS else find_library(name)

    ctypes.util.find_library = without_liboqs
    try:
        yield
    finally:
        ctypes.util.find_library = find_library
