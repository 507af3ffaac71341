"""A plugin that implements every Tether hook and records each call.

Installed into the test environment through the ``tether`` entry-point group, exactly like a
third-party plugin, so tests prove that the kernel calls each hook in a real daemon. It does
nothing unless ``TETHER_HOOKTEST_LOG`` names a file, so other tests are unaffected.

Every command-line start of the test suite registers this plugin, so this module is what a
plugin author should write for a fast start: each hook imports the implementation
(:mod:`tether_hooktest.hooks`, which uses every part of ``tether.api``) when it is called.
``tether_hooktest.NAME`` reads that module's names, as the tests do.
"""

from __future__ import annotations

import importlib
import os
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.api import hookimpl

if TYPE_CHECKING:
    import click

    from tether.api import (
        AuditEvent,
        AuditQuery,
        BackendType,
        CertAuthorityType,
        Config,
        ConfigSection,
        Profile,
        ProtocolHandler,
        ResourceKind,
        RoleField,
        RoleMapRule,
        Service,
        ServiceContext,
        ServiceRole,
        TokenType,
    )
    from tether_hooktest.hooks import (
        Gadgets,
        HooktestConnector,
        HooktestSSOConnector,
        WhoAmI,
    )


#: the file each hook call is recorded in; unset, the plugin does nothing
LOG_ENV = "TETHER_HOOKTEST_LOG"


def _active() -> bool:
    return bool(os.environ.get(LOG_ENV))


def _hooks() -> types.ModuleType:
    return importlib.import_module("tether_hooktest.hooks")


def __getattr__(name: str) -> Any:
    return getattr(_hooks(), name)


@hookimpl
def tether_config_sections() -> list[ConfigSection]:
    return _hooks().tether_config_sections()


@hookimpl
def tether_service_roles() -> list[ServiceRole]:
    return _hooks().tether_service_roles()


@hookimpl
def tether_role_fields() -> list[RoleField]:
    return _hooks().tether_role_fields()


@hookimpl
def tether_token_types() -> list[TokenType]:
    return _hooks().tether_token_types()


@hookimpl
def tether_cert_authorities() -> list[CertAuthorityType]:
    return _hooks().tether_cert_authorities()


@hookimpl
def tether_configure(config: Config) -> None:
    return _hooks().tether_configure(config)


@hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    return _hooks().tether_resource_kinds()


@hookimpl
def tether_backends() -> list[BackendType]:
    return _hooks().tether_backends()


@hookimpl
def tether_identity_connectors() -> list[HooktestConnector | HooktestSSOConnector]:
    return _hooks().tether_identity_connectors()


@hookimpl
def tether_client_logged_in(profile: Profile) -> None:
    if not _active():  # every `tether login` calls this one
        return None
    return _hooks().tether_client_logged_in(profile)


@hookimpl
def tether_cli_commands(program: str, cli: click.Group) -> None:
    if not _active():  # every command line that needs plugins calls this one
        return None
    return _hooks().tether_cli_commands(program, cli)


@hookimpl
def tether_cli_lazy_commands(program: str) -> dict[str, str]:
    if not _active():  # every command line that needs plugins calls this one
        return {}
    return _hooks().tether_cli_lazy_commands(program)


@hookimpl
def tether_services(ctx: ServiceContext) -> list[Service]:
    return _hooks().tether_services(ctx)


@hookimpl
def tether_protocols() -> list[ProtocolHandler]:
    return _hooks().tether_protocols()


@hookimpl
def tether_agent_protocols(config: Config) -> list[WhoAmI | Gadgets]:
    return _hooks().tether_agent_protocols(config)


@hookimpl
def tether_audit_events(events: Sequence[AuditEvent]) -> None:
    return _hooks().tether_audit_events(events)


@hookimpl
def tether_audit_search(query: AuditQuery) -> None:
    return _hooks().tether_audit_search(query)


@hookimpl
def tether_map_role(rule: RoleMapRule, remote_role: str, cluster: str) -> list[str] | None:
    return _hooks().tether_map_role(rule, remote_role, cluster)
