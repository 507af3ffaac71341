"""Play a hostile cluster against a real root, for tests of trust between clusters.

An attacker who holds a leaf (or only an invitation token) speaks the real protocols with
forged material: :func:`forge_certificate` signs whatever identity it likes with a CA key it
holds, :func:`handshake` sends a trust exchange of its choosing to the root's web API, and
:func:`hold_tunnel` dials the root's proxy with ALPN ``tether-tunnel/1`` as a leaf's proxy
would, recording every stream the root opens to it (a user's certificate rides in their
metadata). Nothing here is faked: the root's real code decides.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import attrs
import trio
from cryptography import x509

import tether
from tether import pki
from tether.client.web import establish_trust, proxy_call
from tether.testing.cluster import RunningCluster
from tether.tlsstream import TLSStream
from tether.tunnel.agent import AgentPool, Backoff
from tether.tunnel.server import TUNNEL_ALPN
from tether.tunnel.transport import IncomingStream

__all__ = ["TunnelAttempt", "exchange", "forge_certificate", "handshake", "hold_tunnel"]


def forge_certificate(
    ca: pki.X509CertAuthority, cluster: str, username: str, kind: str = "proxy"
) -> tuple[x509.Certificate, pki.PrivateKey]:
    """A server-and-client certificate signed by ``ca``'s key for ``username`` of ``cluster``,
    whichever cluster the CA belongs to: a CA key signs whatever its holder asks."""
    key = pki.generate_private_key()
    identity = pki.Identity(
        username=username,
        cluster=cluster,
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind=kind,
    )
    signer = pki.X509CertAuthority(cluster, ca.private_key, ca.certificate)
    cert = pki.issue_x509_cert(
        signer, key.public_key(), identity, dns_names=["localhost"], server=True
    )
    return cert, key


def exchange(
    cluster: str, cas: pki.ClusterAuthorities, tls: x509.Certificate | None = None
) -> dict[str, Any]:
    """A leaf's half of the trust handshake naming ``cluster``, carrying the public halves of
    ``cas`` (or ``tls`` in place of its X.509 CA)."""
    return {
        "cluster": cluster,
        "version": tether.__version__,
        "ssh": {
            "user": [cas.ssh_user.public_key_line()],
            "host": [cas.ssh_host.public_key_line()],
        },
        "tls": [pki.cert_to_pem(tls or cas.tls.certificate).decode()],
    }


async def handshake(root: RunningCluster, body: Any) -> Any:
    """POST ``body`` to the root's ``/webapi/trustedclusters/validate``, trusting the root by
    its CA pin, as a leaf's auth service does; returns the answer or raises its error."""
    context = await establish_trust(root.proxy_addr, insecure=False, ca_pin=root.ca_pin)
    return await proxy_call(
        root.proxy_addr, "POST", "/webapi/trustedclusters/validate", context, json=body
    )


@attrs.define
class TunnelAttempt:
    """What a tunnel attempt got: the root proxies it reached, the metadata of every stream
    the root opened through it, and the pool's last error (None once connected)."""

    connected: list[str]
    streams: list[dict[str, str]]
    error: str | None


async def hold_tunnel(
    root: RunningCluster,
    cert: x509.Certificate,
    key: pki.PrivateKey,
    cluster: str,
    while_held: Callable[[], None] | None = None,
    *,
    proxy_addr: str | None = None,
) -> TunnelAttempt:
    """Dial the root's proxy presenting ``cert`` as a tunnel agent of ``cluster``; once the
    tunnel is up or its first attempt failed, run ``while_held`` in a thread (root users at
    work) with the tunnel kept up, rejecting and recording every stream the root opens.

    :param proxy_addr: another proxy of the root to dial first (one in a process of its own).
    """
    root_ca = pki.load_cert(root.data_dir.joinpath("keys", "tls_ca.crt").read_bytes())
    context = pki.client_ssl_context(trusted_cas=[root_ca], cert=cert, key=key, alpn=[TUNNEL_ALPN])
    streams: list[dict[str, str]] = []

    async def dial(addr: str) -> trio.abc.Stream:
        host, _, port = addr.rpartition(":")
        return await TLSStream.connect(host, int(port), context, server_hostname="localhost")

    async def record(request: IncomingStream) -> None:
        streams.append(dict(request.metadata))
        request.reject("an impostor only listens")

    pool = AgentPool(
        cluster=cluster,
        tunnel_addr=proxy_addr or root.proxy_addr,
        dial=dial,
        handle_stream=record,
        backoff=Backoff(initial=0.2, maximum=0.5),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.fail_after(20):
            # the pool signals connections only, not failed attempts: poll for either
            while not pool.connected_proxies() and pool.last_error is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
        attempt = TunnelAttempt(pool.connected_proxies(), streams, pool.last_error)
        if while_held is not None:
            await trio.to_thread.run_sync(while_held)
        nursery.cancel_scope.cancel()
    return attempt
