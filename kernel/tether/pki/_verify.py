"""The one place where a certificate becomes a trusted identity.

Both certificate formats are first reduced to an :class:`Envelope` (by ``_ssh`` and ``_x509``);
:func:`verify_envelope` then makes every trust decision in a fixed order: signature against the
trusted authorities, identity decode, validity window, principal. Keeping the order in one
function means an SSH login and an HTTPS request can never be judged by different rules, and an
expired certificate from an untrusted CA is reported as untrusted (the more useful answer).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from ._errors import (
    HOSTILE_ISSUER_HINT,
    CertificateExpired,
    CertificateNotYetValid,
    MalformedCertificate,
    PrincipalNotAllowed,
)
from ._identity import NewerIdentity, format_time

__all__ = ["CLOCK_SKEW", "Envelope", "utc_now", "verify_envelope"]

T = TypeVar("T")

#: How far before its issue a certificate is valid from: an allowance for clocks that run
#: slightly behind the issuer's.
CLOCK_SKEW = datetime.timedelta(minutes=1)


def utc_now(now: datetime.datetime | None) -> datetime.datetime:
    """Resolve the ``now=`` argument every issue/verify function takes (tests pin the clock)."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (use datetime.UTC)")
    return now.astimezone(datetime.UTC)


@attrs.frozen
class Envelope(Generic[T]):
    """A parsed, not yet trusted certificate, in terms common to SSH and X.509.

    :param what: what kind of certificate this is, for messages ("certificate", "host
        certificate").
    :param label: ``name@cluster`` read from the unverified content, for messages only.
    :param check_signature: raises ``UnknownAuthority`` or ``CertificateTampered``.
    :param decode: returns the subject (``Identity``, ``HostIdentity``) from the signed content;
        raises ``ValueError`` if it is unreadable.
    :param principals: logins or host names the certificate allows; ``None`` when the format has
        no principals (X.509), in which case a requested principal is refused.
    :param renew_hint: what the holder should do once the certificate has expired.
    """

    what: str
    label: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    check_signature: Callable[[], None]
    decode: Callable[[], T]
    principals: tuple[str, ...] | None
    renew_hint: str


def verify_envelope(
    envelope: Envelope[T], *, principal: str | None, now: datetime.datetime | None
) -> T:
    """Decide whether *envelope* is trusted right now (for *principal*) and return its subject."""
    when = utc_now(now)
    envelope.check_signature()
    try:
        subject = envelope.decode()
    except ValueError as exc:
        if isinstance(exc, NewerIdentity):
            hint = "the issuing cluster may run a newer Tether; upgrade this one"
        else:
            hint = HOSTILE_ISSUER_HINT
        raise MalformedCertificate(
            f"{envelope.what} of {envelope.label} carries an unreadable identity: {exc}",
            hint=hint,
        ) from exc
    if when < envelope.not_before:
        raise CertificateNotYetValid(
            f"{envelope.what} of {envelope.label} is not valid until "
            f"{format_time(envelope.not_before)}, it is now {format_time(when)}",
            hint="check the clocks of this machine and of the auth server",
        )
    if when >= envelope.not_after:
        raise CertificateExpired(
            f"{envelope.what} of {envelope.label} expired at {format_time(envelope.not_after)}",
            hint=envelope.renew_hint,
        )
    if principal is not None:
        allowed = envelope.principals or ()
        if principal not in allowed:
            allows = ", ".join(allowed) if allowed else "none"
            raise PrincipalNotAllowed(
                f"{envelope.what} of {envelope.label} does not allow {principal!r} "
                f"(it allows: {allows})",
                hint="ask an administrator for a role that grants it, then log in again",
            )
    return subject
