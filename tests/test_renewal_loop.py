"""The renewal loop nodes and proxies share: when it renews, how it retries, how it stops.

Virtual time (``autojump_clock``); the certificates are real, of a test CA, with lifetimes
counted from the wall clock as in a running host.
"""

from __future__ import annotations

import datetime
import itertools
import logging
from typing import Any

import pytest
import trio
from cryptography import x509

from tether import pki
from tether.errors import TetherError
from tether.node.join import keep_renewed, renew_identity

LIFETIME = datetime.timedelta(seconds=30)
CA = pki.X509CertAuthority.create("main", pki.generate_private_key())


def certificate(lifetime: datetime.timedelta = LIFETIME) -> x509.Certificate:
    """A host certificate issued now, as auth issues one."""
    identity = pki.Identity(
        username="proxy-b",
        cluster="main",
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + lifetime,
        kind="proxy",
    )
    return pki.issue_x509_cert(CA, pki.generate_private_key().public_key(), identity)


async def test_a_host_that_cannot_reach_auth_tries_again_sooner_then_later_and_renews_again(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.node.join")
    calls: list[float] = []
    unreachable = 3  # the first attempts fail: auth is down for a while

    async def renew() -> x509.Certificate:
        calls.append(trio.current_time())
        if len(calls) <= unreachable:
            raise TetherError("cannot reach auth at 127.0.0.1:3025: connection refused")
        return certificate()

    with trio.move_on_after(40):
        await keep_renewed("proxy proxy-b", certificate(), renew)
    # at two thirds of 30 s (X.509 times are whole seconds); then after 1, 2 and 3 s (capped
    # at a tenth of the lifetime); the next one is due past the 40 s this test waits
    assert len(calls) == 4 and calls[0] == pytest.approx(20, abs=1.5)
    assert [b - a for a, b in itertools.pairwise(calls)] == pytest.approx([1, 2, 3])
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == unreachable
    assert failures[0].startswith("proxy proxy-b: could not renew its certificates, which expire")
    assert failures[0].endswith(
        "(trying again in 1.0s): cannot reach auth at 127.0.0.1:3025: connection refused"
    )
    assert "proxy proxy-b renewed its certificates; they expire at" in caplog.text


async def test_a_host_renews_each_certificate_at_two_thirds_of_its_lifetime(
    autojump_clock: Any,
) -> None:
    calls: list[float] = []

    async def renew() -> x509.Certificate:
        calls.append(trio.current_time())
        return certificate()

    with trio.move_on_after(65):
        await keep_renewed("node n1", certificate(), renew)
    # (X.509 times are whole seconds: each interval may be a second short)
    intervals = [b - a for a, b in itertools.pairwise([0.0, *calls])]
    assert intervals == pytest.approx([20, 20, 20], abs=1.5)


async def test_a_renewal_answer_that_is_no_identity_is_refused_and_the_current_one_stands() -> None:
    # A real auth never answers so (only a bug or a different release would): this stand-in
    # for its client answers the renewal with an empty object, which nothing here can produce.
    class MalformedAuth:
        async def call(self, method: str, path: str, **_: Any) -> dict[str, Any]:
            assert (method, path) == ("POST", "/v1/hosts/renew")
            return {}

    with pytest.raises(TetherError, match="auth answered the renewal with an unreadable identity"):
        await renew_identity(MalformedAuth(), hostname="proxy-b")  # type: ignore[arg-type]
