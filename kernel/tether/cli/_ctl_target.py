"""How ``tetherctl`` reaches auth, as ``tctl`` does: with ``-c`` (else ``$TETHER_CONFIG``,
else the auth host's ``/etc/tether.yaml``) as the local admin whose identity is in the data
dir; else through the ``tether login`` profile; else as the local admin of a ``tetherd start``
that ran with no file. Every command asks here where its requests go.
"""

from __future__ import annotations

import os
import pathlib

import click

from tether.auth.http_client import AuthClient, admin_client
from tether.cli._common import configured_disabled, plugin_manager
from tether.client.profile import current_profile, profile_ssl_context
from tether.config import DEFAULT_CONFIG, Config, default_config, load_config
from tether.datadir import admin_identity_paths
from tether.errors import TetherError
from tether.resources import KindRegistry

__all__ = ["CONFIG_ENV", "Target", "config_path", "connect", "kind_registry"]


CONFIG_ENV = "TETHER_CONFIG"


class Target:
    """Where this invocation's requests go, and how users and hosts reach the proxy.

    :param proxy: the proxy address to print in commands, None when none is known.
    :param auth: the auth service's address, where a joining proxy goes (``-c`` only).
    :param public_web_cert: the proxy's web certificate is one this machine trusts without
        the cluster's CA (``https_cert_file``, or a login without ``--ca-pin``): printed
        commands need no ``--ca-pin`` then.
    """

    def __init__(
        self,
        client: AuthClient,
        proxy: str | None,
        *,
        auth: str | None = None,
        public_web_cert: bool = False,
    ) -> None:
        self.client = client
        self.proxy = proxy
        self.auth = auth
        self.public_web_cert = public_web_cert

    def trust_flags(self, ca_pin: str) -> list[str]:
        """The flags a printed command needs to trust the cluster: ``--ca-pin``, unless the
        proxy's certificate is publicly trusted."""
        return [] if self.public_web_cert else [f"--ca-pin={ca_pin}"]


def config_path(ctx: click.Context) -> str | os.PathLike[str] | None:
    """``-c``, else ``$TETHER_CONFIG``, else the auth host's :data:`DEFAULT_CONFIG` when it
    runs an auth service, as tctl reads ``/etc/teleport.yaml``; None when none applies (the
    login's profile is used). Read from the program's own parameters too, as shell completion
    parses them without running the group."""
    found = (ctx.obj or {}).get("config") or ctx.find_root().params.get("config")
    return found or os.environ.get(CONFIG_ENV) or _default_config()


def _started_without_a_file() -> Config | None:
    """The default configuration, when its data directory holds an admin identity this user
    may read: the auth service of a ``tetherd start`` with no file (tctl after ``teleport
    start``)."""
    defaults = default_config()
    cert, _, _ = admin_identity_paths(defaults.data_dir)
    return defaults if os.access(cert, os.R_OK) else None


def _default_config() -> str | None:
    """:data:`DEFAULT_CONFIG` if this user may read it and it enables the auth service (a
    node's or a proxy's configuration gives no admin identity: tctl ignores those too)."""
    path = pathlib.Path(DEFAULT_CONFIG)
    if not os.access(path, os.R_OK) or not path.is_file():
        return None
    return DEFAULT_CONFIG if load_config(path).auth_service.enabled else None


def connect(ctx: click.Context) -> Target:
    """Act as the local admin when a configuration says where the auth service keeps its
    data, else as the user logged in, else as the local admin of a ``tetherd start`` that ran
    with no file (its data in the default data directory), as tctl falls back to its
    defaults."""
    path = config_path(ctx)
    config = load_config(pathlib.Path(path)) if path else None
    profile = current_profile() if config is None else None
    if config is None and profile is None:
        config = _started_without_a_file()
    if config is not None:
        client, proxy = admin_client(config)
        public = config.proxy_service.public_addr
        return Target(
            client,
            str(public) if public is not None and public.port else proxy,
            auth=client.base_url.removeprefix("https://"),
            public_web_cert=config.proxy_service.https_cert_file is not None,
        )
    if profile is None:
        raise TetherError(
            f"not logged in, and no configuration given (-c), at {DEFAULT_CONFIG} or in "
            f"{default_config().data_dir}",
            hint="log in with `tether login`, or run tetherctl on the auth host with -c "
            "naming its tether.yaml",
        )
    return Target(
        AuthClient(f"https://{profile.proxy}", profile_ssl_context(profile)),
        profile.proxy,
        public_web_cert=not (profile.ca_pin or profile.insecure),
    )


def kind_registry(ctx: click.Context) -> KindRegistry:
    """The resource kinds of the plugins this invocation's configuration leaves enabled."""
    return KindRegistry.from_plugins(plugin_manager(configured_disabled(config_path(ctx))))
