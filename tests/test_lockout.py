"""The failed-login lockout: guesses at one user name lock it, however they arrive.

An attacker who fires many wrong passwords at once must be locked out after as many guesses as
one who tries them one after another (each attempt is counted before its password is checked,
with the backend's compare-and-swap). The branches a user meets each say their reason: locked
until when, a lock that has run out, a count reset by a successful login. Real processes on
127.0.0.1, except the test of a lock that ran out while its record is still stored, which needs
the auth service's clock in its hands.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import ssl
import time
from typing import Any

import httpx
import pytest
import trio

from tether import audit, pki
from tether.auth import passwords
from tether.auth.passwords import ATTEMPTS_PREFIX
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied
from tether.plugins import get_plugin_manager
from tether.testing.cluster import RunningCluster

LOCKED = "too many failed logins: 'alice' is locked until"


def _insecure() -> ssl.SSLContext:
    # the attacker does not care whom it talks to; what the proxy answers is the point
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _login_body(user: str, password: str) -> dict[str, Any]:
    key = pki.generate_private_key()
    return {
        "user": user,
        "password": password,
        "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
        "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
    }


def _audit(cluster: RunningCluster, event_type: str) -> list[dict[str, Any]]:
    found = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json")
    events: list[dict[str, Any]] = json.loads(found.stdout)
    return events


@pytest.fixture
def cluster(tether_cluster_factory: Any) -> RunningCluster:
    # failed_login_limit is 3 in tether.testing's config; the rate limit is raised so that it
    # is the lockout, not the proxy's rate limit, that stops the guesses
    running: RunningCluster = tether_cluster_factory(
        config={"proxy_service": {"rate_limit": {"average": 100, "burst": 100, "period": "1s"}}}
    )
    running.add_user("alice", "alice-password", logins=("alice",))
    return running


async def test_thirty_wrong_passwords_at_once_lock_the_account_as_three_in_a_row_do(
    cluster: RunningCluster,
) -> None:
    answers: list[httpx.Response] = []
    bodies = [_login_body("alice", f"guess-{n:02d}-wrong") for n in range(30)]
    async with httpx.AsyncClient(
        base_url=f"https://{cluster.proxy_addr}", verify=_insecure(), timeout=60
    ) as web:

        async def guess(body: dict[str, Any], ready: trio.Event) -> None:
            await ready.wait()
            answers.append(await web.post("/webapi/login", json=body))

        ready = trio.Event()
        async with trio.open_nursery() as nursery:
            for body in bodies:
                nursery.start_soon(guess, body, ready)
            ready.set()

    assert [a.status_code for a in answers] == [403] * 30
    messages = [a.json()["error"]["message"] for a in answers]
    # three guesses were checked, as three in a row would be; the others found the lock
    assert messages.count("invalid user name or password") == 3, messages
    assert sum(m.startswith(LOCKED) for m in messages) == 27, messages

    refused = cluster.login("alice", "alice-password", check=False)
    assert refused.returncode == 1
    assert LOCKED in refused.stderr
    assert "after 3 failed logins in a row" in refused.stderr
    assert "auth_service.failed_login_limit" in refused.stderr

    (locked,) = _audit(cluster, audit.USER_LOCKED)
    assert locked["user"] == "alice"
    assert locked["failed"] == 3
    failures = _audit(cluster, audit.USER_LOGIN_FAILED)
    reasons = [e["reason"] for e in failures if e["user"] == "alice"]
    assert reasons.count("invalid user name or password") == 3
    assert reasons.count("account locked") == 28  # 27 guesses and the real password


def test_a_successful_login_resets_the_count_of_failures(cluster: RunningCluster) -> None:
    for _ in range(2):
        for _ in range(2):  # one short of failed_login_limit (3)
            wrong = cluster.login("alice", "wrong-password", check=False)
            assert wrong.stderr.strip() == "ERROR: invalid user name or password"
        cluster.login("alice", "alice-password")
    assert _audit(cluster, audit.USER_LOCKED) == []
    # and the count starts again from nothing: the third failure in a row locks
    for _ in range(3):
        cluster.login("alice", "wrong-password", check=False)
    assert LOCKED in cluster.login("alice", "alice-password", check=False).stderr


def test_a_locked_account_opens_again_when_its_lock_runs_out(
    tether_cluster_factory: Any,
) -> None:
    cluster: RunningCluster = tether_cluster_factory(
        config={"auth_service": {"lockout_duration": "2s"}}
    )
    cluster.add_user("alice", "alice-password", logins=("alice",))
    with httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=_insecure()) as web:
        for _ in range(3):
            wrong = web.post("/webapi/login", json=_login_body("alice", "wrong-password"))
            assert wrong.json()["error"]["message"] == "invalid user name or password"
        locked_at = time.time()
        refused = web.post("/webapi/login", json=_login_body("alice", "alice-password"))
        assert refused.json()["error"]["message"].startswith(LOCKED)
        # refusals while locked do not extend the lock: keep knocking until it opens
        deadline = time.monotonic() + 30
        while True:
            answer = web.post("/webapi/login", json=_login_body("alice", "alice-password"))
            if answer.status_code == 200:
                break
            assert answer.json()["error"]["message"].startswith(LOCKED)
            assert time.monotonic() < deadline, "the lock did not run out"
            time.sleep(0.1)
    assert time.time() >= locked_at + 1.5  # not before the lock's time (less clock slack)


async def test_a_lock_that_ran_out_forgives_its_failures_even_while_still_stored(
    tmp_path: pathlib.Path,
) -> None:
    pm = get_plugin_manager(autoload=False)
    config = default_config(data_dir=tmp_path, cluster_name="main")
    now = [time.time()]
    limit = config.auth_service.failed_login_limit
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        auth = await AuthService.open(config=config, pm=pm, backend=backend, clock=lambda: now[0])
        admin = pki.Identity(
            username="admin",
            cluster="main",
            roles=(),
            traits={},
            logins=(),
            expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
            kind="admin",
        )
        await auth.add_user(admin, "alice", roles=("access",), traits={}, password="alice-pw-1")
        key = pki.generate_private_key()
        keys = {
            "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
            "tls_public_key_pem": pki.public_key_to_pem(key.public_key()).decode(),
        }
        for _ in range(limit):
            with pytest.raises(AccessDenied, match=r"^invalid user name or password$"):
                await auth.login_password("alice", "wrong-password", **keys)
        with pytest.raises(AccessDenied, match=LOCKED):
            await auth.login_password("alice", "alice-pw-1", **keys)

        # the auth service's clock passes the lock; the backend's (real) clock keeps the record
        now[0] += config.auth_service.lockout_duration.total_seconds() + 1
        stored = await backend.get(ATTEMPTS_PREFIX + "alice")
        assert stored is not None and passwords.decode_attempts(stored.value)[0] == limit
        # one failure after the lock is the first of a new count, not a new lock at once
        with pytest.raises(AccessDenied, match=r"^invalid user name or password$"):
            await auth.login_password("alice", "wrong-password", **keys)
        result = await auth.login_password("alice", "alice-pw-1", **keys)
        assert result.identity.username == "alice"
        assert await backend.get(ATTEMPTS_PREFIX + "alice") is None  # reset by the success


async def test_password_checks_leave_the_auth_servers_loop_free_for_everyone_else() -> None:
    # each check costs ~0.2 s of a core: run on the event loop, it would stop every other
    # request and heartbeat of the auth server for that long, per login
    stored = await passwords.hash_password_in_worker("correct horse battery")
    checking = 0
    seen_checking = False

    async def meanwhile() -> None:
        nonlocal seen_checking
        while True:
            seen_checking = seen_checking or checking > 0
            await trio.lowlevel.checkpoint()

    async def check(password: str) -> bool:
        nonlocal checking
        checking += 1
        try:
            return await passwords.verify_password_in_worker(stored, password)
        finally:
            checking -= 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(meanwhile)
        results = [await check("correct horse battery"), await check("wrong horse")]
        nursery.cancel_scope.cancel()
    assert results == [True, False]
    assert seen_checking, "nothing else ran while a password was checked"
    assert not await passwords.verify_password_in_worker(None, "correct horse battery")
