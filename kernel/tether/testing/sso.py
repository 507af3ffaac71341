"""Single sign-on logins in tests: ``tether login --auth=NAME`` with a test as the browser.

For authors of redirect connectors: run the real client against a real cluster, and drive the
identity provider's pages with an HTTP client (``browse`` gets the URL the client printed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from tether import pki
from tether.auth.sso import hash_client_secret
from tether.datadir import admin_identity_paths
from tether.testing.cluster import RunningCluster

__all__ = ["begin_login", "cluster_browser", "sso_login"]


def cluster_browser(cluster: RunningCluster, *, timeout: float = 20.0) -> httpx.Client:
    """An HTTP client that trusts ``cluster``'s CA, as a user's browser trusts its proxy."""
    ca = admin_identity_paths(cluster.data_dir)[2]
    context = pki.client_ssl_context(trusted_cas=pki.load_certs(ca.read_bytes()))
    return httpx.Client(verify=context, timeout=timeout)


def begin_login(
    browser: httpx.Client,
    cluster: RunningCluster,
    connector: str,
    *,
    client_secret: str = "the-client-secret",
    redirect: str = "http://127.0.0.1:9/callback",
) -> dict[str, Any]:
    """Start a login at the proxy as ``tether login`` would, for tests that then play the
    browser's and the client's steps themselves (replays, stolen results).

    Returns the proxy's answer: ``request_id`` and ``auth_url`` (or ``error``).
    """
    key = pki.generate_private_key()
    answer = browser.post(
        f"https://{cluster.proxy_addr}/webapi/sso/login",
        json={
            "connector": connector,
            "client_redirect_url": redirect,
            "client_secret_hash": hash_client_secret(client_secret),
            "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
            "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
        },
    )
    return dict(answer.json())


def sso_login(
    cluster: RunningCluster,
    user: str,
    connector: str,
    browse: Callable[[str], object],
    *,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run ``tether login --auth=CONNECTOR --no-browser`` with ``user``'s profile, hand the
    provider URL it prints to ``browse``, and wait for it to finish.

    Returns the exit status and everything it wrote on standard error.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli.tether",
            "login",
            f"--proxy={cluster.proxy_addr}",
            f"--auth={connector}",
            f"--ca-pin={cluster.ca_pin}",
            "--no-browser",
            *extra_args,
        ],
        env={**os.environ, **(env or {}), "TETHER_HOME": str(cluster.user_home(user))},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    try:
        for line in process.stderr:  # "Log in with NAME in your browser:", then the URL
            seen.append(line)
            if line.startswith("  http"):
                browse(line.strip())
                break
        _, rest = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, "".join(seen) + rest
