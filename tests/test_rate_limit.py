"""One client address flooding the endpoints anyone may call is held to its rate.

The account lockout stops guessing one user's password; this stops a flood across many names
(an argon2 hash each) or of SSO logins started (a stored request each). The limiter is pure
and tested with a clock passed in; the proxy is tested with real processes on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import json
import ssl

import httpx

from tether import pki
from tether.ratelimit import RateLimiter
from tether.testing.cluster import RunningCluster

SECOND = datetime.timedelta(seconds=1)


def test_a_client_gets_its_burst_at_once_then_the_average_rate() -> None:
    limiter = RateLimiter(average=2, burst=3, period=SECOND)
    assert [limiter.take("198.51.100.7", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("198.51.100.7", 100.0) == 0.5  # one token comes back every 0.5 s
    assert limiter.take("198.51.100.7", 100.25) == 0.25  # refused requests spend nothing
    assert limiter.take("198.51.100.7", 100.5) == 0.0
    assert limiter.take("198.51.100.7", 100.5) == 0.5


def test_a_quiet_client_gets_its_burst_back_and_no_more() -> None:
    limiter = RateLimiter(average=1, burst=2, period=datetime.timedelta(minutes=1))
    assert limiter.take("a", 0.0) == limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == 60.0
    assert limiter.take("a", 3600.0) == limiter.take("a", 3600.0) == 0.0
    assert limiter.take("a", 3600.0) == 60.0


def test_clients_are_counted_apart() -> None:
    limiter = RateLimiter(average=1, burst=1, period=SECOND)
    assert limiter.take("192.0.2.1", 5.0) == 0.0
    assert limiter.take("192.0.2.1", 5.0) == 1.0
    assert limiter.take("192.0.2.2", 5.0) == 0.0


def test_a_scan_from_many_addresses_does_not_grow_memory() -> None:
    limiter = RateLimiter(average=1, burst=1, period=SECOND, max_clients=100)
    for n in range(1000):
        limiter.take(f"10.0.{n // 256}.{n % 256}", 1.0)
    assert len(limiter) == 100
    # the most recently seen are the ones kept
    assert limiter.take("10.0.3.231", 1.0) == 1.0


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_password_guesses_across_many_names_are_held_to_the_rate(
    tether_cluster_factory: object,
) -> None:
    limit = {"average": 1, "burst": 3, "period": "1m"}
    cluster: RunningCluster = tether_cluster_factory(  # type: ignore[operator]
        config={"proxy_service": {"rate_limit": limit}}
    )
    # three guesses, each at another name, so no account lockout stops them
    for n in range(3):
        guess = cluster.login(f"guess{n}", "wrong-password", check=False)
        assert guess.stderr.strip() == "ERROR: invalid user name or password"
    held = cluster.login("guess3", "wrong-password", check=False)
    assert held.returncode == 1
    assert "too many requests from 127.0.0.1; try again in" in held.stderr
    assert "the proxy takes 3 at once and 1 per 1m from one address" in held.stderr
    assert "proxy_service.rate_limit" in held.stderr

    with httpx.Client(base_url=f"https://{cluster.proxy_addr}", verify=_insecure()) as web:
        refused = web.post("/webapi/sso/login", json={"connector": "anything"})
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["error"]["type"] == "RateLimited"
        # what costs nothing stays open: clients still find the cluster
        assert web.get("/webapi/ping").json()["cluster_name"] == "main"


def test_joins_straight_to_auth_are_held_to_the_rate_per_address(
    tether_cluster_factory: object,
) -> None:
    limit = {"average": 1, "burst": 3, "period": "1m"}
    cluster: RunningCluster = tether_cluster_factory(  # type: ignore[operator]
        config={"auth_service": {"rate_limit": limit}}
    )
    token = json.loads(cluster.tetherctl("tokens", "add", "--type=node", "--format=json").stdout)[
        "token"
    ]
    key = pki.generate_private_key()
    request = {
        "role": "node",
        "host_id": "node-1",
        "hostname": "node-1",
        "addresses": [],
        "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
        "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
    }
    url = f"https://{cluster.auth_addr}"
    # anonymous on purpose (the token is the credential): token guesses from one address
    with httpx.Client(base_url=url, verify=_insecure()) as guesser:
        for n in range(3):
            guess = guesser.post("/webapi/join", json={**request, "token": f"guess-{n}"})
            assert guess.status_code == 403, guess.text
        held = guesser.post("/webapi/join", json={**request, "token": token})
        assert held.status_code == 429
        assert 0 < int(held.headers["Retry-After"]) <= 60
        error = held.json()["error"]
        assert error["type"] == "RateLimited"
        assert error["message"].startswith("too many requests from 127.0.0.1; try again in")
        assert "the auth service takes 3 at once and 1 per 1m from one address" in error["hint"]
        assert "auth_service.rate_limit" in error["hint"]
        # what costs nothing stays open
        assert guesser.get("/webapi/ping").json()["cluster_name"] == "main"
    # a host joining from another address is not held back by the guesser
    other = httpx.HTTPTransport(local_address="127.0.0.2", verify=_insecure())
    with httpx.Client(base_url=url, transport=other) as host:
        joined = host.post("/webapi/join", json={**request, "token": token})
        assert joined.status_code == 200, joined.text
        assert joined.json()["identity"]["username"] == "node-1"
