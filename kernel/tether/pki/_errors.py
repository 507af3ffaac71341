"""Why a certificate was refused, one subclass per reason.

Callers (the proxy, the node, auth's API) answer differently depending on the reason: an expired
certificate means "log in again", an unknown authority means "wrong cluster or broken trust", a
tampered one is worth an audit event. Distinct types let them tell the cases apart without
parsing messages. All are :class:`~tether.errors.TrustError`, so code that only cares whether a
peer is trusted catches one type.
"""

from __future__ import annotations

from tether.errors import TrustError

__all__ = [
    "HOSTILE_ISSUER_HINT",
    "CertificateExpired",
    "CertificateNotYetValid",
    "CertificateTampered",
    "MalformedCertificate",
    "PrincipalNotAllowed",
    "UnknownAuthority",
]

#: What to do about a certificate its own CA signed that contradicts itself or its CA.
HOSTILE_ISSUER_HINT = "the issuing cluster is misconfigured or hostile; check its trust settings"


class MalformedCertificate(TrustError):
    """The input is not a certificate of the expected kind, or its Tether identity is unreadable."""


class UnknownAuthority(TrustError):
    """The certificate was signed by an authority that is not among the trusted ones."""


class CertificateTampered(TrustError):
    """The certificate names a trusted authority but its signature does not verify."""


class CertificateExpired(TrustError):
    """The certificate's validity ended before the time of the check."""


class CertificateNotYetValid(TrustError):
    """The certificate's validity starts after the time of the check (often a skewed clock)."""


class PrincipalNotAllowed(TrustError):
    """The certificate is genuine but does not allow the requested login or host name."""
