"""``tetherd start``: run the services ``tether.yaml`` enables, in one trio nursery.

Start order matters: storage, then auth (CAs, preset roles, the local admin identity), then the
proxy (which is a client of auth), then plugin services. Once everything listens, the daemon
writes ``data_dir/process.json`` with the real addresses (ports may be 0 in configuration), which
``tetherctl -c`` and the test fixtures read.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import signal
from typing import Any

import trio
from cryptography import x509

from tether import pki
from tether.asgi import ASGIHandler
from tether.auth.http_api import build_app as build_auth_app
from tether.auth.service import AuthService
from tether.backend import Backend, open_backend
from tether.config import Config, HostPort
from tether.datadir import PROCESS_FILE, admin_identity_paths
from tether.node.join import keep_renewed
from tether.plugins import TetherPluginManager
from tether.proxy.identity import joined_proxy_identity, local_proxy_identity, server_identity
from tether.proxy.service import start_proxy
from tether.services import Service, ServiceContext
from tether.tlsserver import HTTP_ALPN, listen_tls

__all__ = ["run_daemon", "wait_for_stop_signal"]

log = logging.getLogger(__name__)

#: the local admin identity's lifetime: long, as its key and certificate are two files that
#: ``tetherctl -c`` could read halfway through a renewal
ADMIN_TTL = datetime.timedelta(days=365)


def _write_private(path: pathlib.Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(path, data.encode() if isinstance(data, str) else data)


async def _start_auth(
    config: Config,
    pm: TetherPluginManager,
    backend: Backend,
    nursery: trio.Nursery,
) -> tuple[AuthService, str, Any]:
    """Start the auth service and its listener; returns it, its address and the ASGI app
    that listener serves (which a proxy in this process calls directly)."""
    auth = await AuthService.open(config=config, pm=pm, backend=backend)
    # the trust auth decides with and pushes to proxies and nodes follows the store
    await nursery.start(auth.trust_feed.run)
    # listings of remote_clusters are served from memory, following the store the same way
    await nursery.start(auth.remote_clusters.run)
    # and routing's target queries from an index of the target kinds' entries
    await nursery.start(auth.targets.run)
    data_dir = pathlib.Path(config.data_dir)
    # auth's server certificate lasts as long as a host's, and is renewed the same way
    ttl = config.auth_service.host_cert_ttl

    async def write_admin_identity() -> x509.Certificate:
        """The local admin identity ``tetherctl -c`` reads at each run."""
        admin_key = pki.generate_private_key()
        admin_cert = auth.issue_system_certificate(
            "admin", "admin", admin_key.public_key(), ttl=ADMIN_TTL
        )
        cert_path, key_path, ca_path = admin_identity_paths(data_dir)
        _write_private(key_path, pki.private_key_to_pem(admin_key))
        _write_private(cert_path, pki.cert_to_pem(admin_cert))
        _write_private(ca_path, pki.certs_to_pem(auth.trusted_tls_cas()))
        return admin_cert

    admin_cert = await write_admin_identity()
    listen = config.auth_service.listen_addr
    server_cert, server_key = server_identity(auth, config, "auth", listen.host, ttl=ttl)
    ctx = pki.server_ssl_context(
        server_cert,
        server_key,
        client_cas=auth.trusted_tls_cas(),
        # optional: hosts joining directly have no certificate yet; every route but the
        # anonymous join ones refuses a request without one (see tether.auth.http_api)
        client_auth="optional",
        alpn=HTTP_ALPN,
    )
    app = build_auth_app(auth)
    handler = ASGIHandler(app)
    routes = dict.fromkeys(HTTP_ALPN, handler)
    port = await listen_tls(nursery, "auth_service.listen_addr", listen, ctx, routes)
    auth.service_addrs["auth service"] = HostPort(listen.host, port)

    async def renew_server_certificate() -> x509.Certificate:
        cert, key = server_identity(auth, config, "auth", listen.host, ttl=ttl)
        pki.present_certificate(ctx, cert, key)  # new connections get it; open ones go on
        await auth.hold_own_host_id()
        return cert

    nursery.start_soon(keep_renewed, "auth service", server_cert, renew_server_certificate)
    nursery.start_soon(keep_renewed, "local admin identity", admin_cert, write_admin_identity)
    addr = f"{listen.connect_host}:{port}"
    log.info(
        "auth service listening on %s:%d (cluster %s, CA pin %s)",
        listen.host,
        port,
        auth.cluster_name,
        auth.ca_pin,
    )
    return auth, addr, app


def _stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, SIGHUP, and Ctrl-C's SIGINT unless this process was started ignoring it (a
    shell's background job, ``nohup``): a handler would undo what its starter chose."""
    signals = (signal.SIGTERM, signal.SIGHUP)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return signals
    return (*signals, signal.SIGINT)


async def wait_for_stop_signal() -> None:
    """Return when SIGTERM, SIGHUP or Ctrl-C arrives (trio gives a signal to the newest
    receiver only, so a process running several daemons watches once, for all of them).

    Ctrl-C stops as gracefully as SIGTERM: left to trio, it raises KeyboardInterrupt in
    whatever task runs, and the daemons' teardown under that cancellation can fail with
    errors of its own (the exit status then says failure). Once the first signal is taken
    the receiver closes, so a second Ctrl-C interrupts at once.
    """
    with trio.open_signal_receiver(*_stop_signals()) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return


async def _stop_gracefully(
    cancel_scope: trio.CancelScope, ctx: ServiceContext, stop: trio.Event | None
) -> None:
    if stop is None:
        await wait_for_stop_signal()
    else:
        await stop.wait()
    # graceful steps first (tunnel agents told to move), each given a moment
    for step in ctx.on_stop:
        with trio.move_on_after(2):
            await step()
    cancel_scope.cancel()


async def run_daemon(
    config: Config,
    pm: TetherPluginManager,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until stopped: by SIGTERM or SIGHUP, or when given, by ``stop`` being set (its
    owner watches the signals); either way cleanly. Cancelling (Ctrl-C) stops it at once."""
    # the data directory first, 0700: plugins configured next create directories inside it
    data_dir = trio.Path(config.data_dir)
    await data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pm.hook.tether_configure(config=config)
    process_file = pathlib.Path(data_dir / PROCESS_FILE)
    # Resources that own nurseries of their own (the backend's TTL reaper) are entered before
    # the daemon's nursery so that they close after every task that uses them.
    async with contextlib.AsyncExitStack() as stack:
        backend = None
        if config.auth_service.enabled:
            backend = await stack.enter_async_context(open_backend(config.storage_url, pm))
        async with trio.open_nursery() as nursery:
            await _run_services(
                config, pm, backend, stack, nursery, process_file, stop, task_status
            )


async def _run_services(
    config: Config,
    pm: TetherPluginManager,
    backend: Backend | None,
    stack: contextlib.AsyncExitStack,
    nursery: trio.Nursery,
    process_file: pathlib.Path,
    stop: trio.Event | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    info: dict[str, Any] = {"pid": os.getpid(), "cluster_name": config.cluster_name}
    ctx = ServiceContext(config=config, pm=pm, nursery=nursery)
    nursery.start_soon(_stop_gracefully, nursery.cancel_scope, ctx, stop)
    if backend is not None:
        auth, auth_addr, auth_app = await _start_auth(config, pm, backend, nursery)
        info["auth_addr"] = auth_addr
        info["ca_pin"] = auth.ca_pin
        ctx.local_auth = auth
        ctx.auth_addr = auth_addr
        if config.proxy_service.enabled:
            me = local_proxy_identity(auth, config)
            # its certificate was issued after auth held this host's id at its start: hold the
            # id as long as it lasts, or the proxy's first heartbeat records the hold anew as
            # the proxy's
            await auth.hold_own_host_id()
            info["proxy_addr"] = await start_proxy(
                config,
                me,
                [f"https://{auth_addr}"],
                stack,
                nursery,
                ctx,
                local_auth=auth,
                local_auth_app=auth_app,
            )
    elif config.proxy_service.enabled:
        me, auth_urls = await joined_proxy_identity(config)
        info["cluster_name"] = me.cluster_name
        info["ca_pin"] = pki.ca_pin(me.cas[0])
        info["proxy_addr"] = await start_proxy(config, me, auth_urls, stack, nursery, ctx)
    services: list[Service] = [s for group in pm.hook.tether_services(ctx=ctx) for s in group]
    for service in services:
        log.info("starting service %s", service.name)
        await nursery.start(service.run)
    _write_private(process_file, json.dumps(info, indent=2))
    task_status.started(info)
    try:
        await trio.sleep_forever()
    finally:
        _remove(process_file)


def _remove(path: pathlib.Path) -> None:
    # synchronous on purpose: it runs while the daemon is being cancelled
    path.unlink(missing_ok=True)
