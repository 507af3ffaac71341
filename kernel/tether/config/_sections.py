"""Plugins' top-level sections of ``tether.yaml`` and the service roles of ``tetherd start``.

A protocol plugin owns its section (the SSH plugin's ``ssh_service:``, as Teleport writes it)
and the role that turns it on (``--roles=node``), so the kernel's schema names no protocol.
The loader structures a plugin's section with the kernel's converter, so its mistakes are
reported exactly as the kernel's own: ``file:line: section.field: problem``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from tether.config._schema import Config, default_config
from tether.errors import PluginError

if TYPE_CHECKING:
    from tether.plugins import TetherPluginManager

__all__ = [
    "NOT_INSTALLED_SECTIONS",
    "ConfigSchema",
    "ConfigSection",
    "ServiceRole",
    "embedded_config",
    "installed_schema",
]

_SECTION_NAME = re.compile(r"[a-z][a-z0-9_]*")

#: sections of plugins that are not part of the kernel, by the distribution that provides
#: them: a file that has one while the plugin is missing is told what to install.
NOT_INSTALLED_SECTIONS: Mapping[str, str] = {
    "ssh_service": "tether-ssh",
    "db_service": "tether-db",
    "kubernetes_service": "tether-kube",
}


@attrs.frozen
class ConfigSection:
    """A top-level section of ``tether.yaml`` that a plugin owns.

    :ivar name: the top-level key, e.g. ``ssh_service``.
    :ivar type: a frozen attrs class whose every field has a default (an absent section is
        ``type()``); fields use the types :mod:`tether.config` reads (``HostPort``,
        ``datetime.timedelta`` written as ``30s``, ``ByteSize``, tuples, mappings) and raise
        :class:`~tether.config.FieldError` for impossible values.
    :ivar template: the section as ``tetherd configure`` prints it, commented, every value as
        ``tetherd start`` runs without a file: ``embedded`` if given, else the defaults
        (starts with ``name:``); empty leaves the section out of that output.
    :ivar embedded: the section in the embedded setup (``tetherd start`` with no
        configuration file), when that differs from ``type()``: a service the single-host
        setup runs, as the SSH plugin's node (enabled, on 127.0.0.1 like auth). A file that
        leaves the section out still reads as ``type()``, so an operator's file runs the
        service only when it says so.
    """

    name: str
    type: type[Any]
    template: str = ""
    embedded: Any = None


@attrs.frozen
class ServiceRole:
    """A value of ``tetherd start --roles``: naming it enables its section, omitting it
    disables the section.

    :ivar name: the role, e.g. ``node``.
    :ivar section: the top-level section whose ``enabled`` field the role sets (a kernel
        section such as ``auth_service`` or a plugin's such as ``ssh_service``).
    :ivar description: a few words for ``tetherd start --help``.
    """

    name: str
    section: str
    description: str


def _kernel_fields() -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(Config) if field.name != "sections")


@attrs.frozen
class ConfigSchema:
    """The plugin sections and service roles of one set of plugins, checked for clashes."""

    sections: Mapping[str, ConfigSection] = attrs.field(factory=dict)
    #: section name -> the plugin that declared it, for error messages
    owners: Mapping[str, str] = attrs.field(factory=dict)
    roles: Mapping[str, ServiceRole] = attrs.field(factory=dict)
    #: URL schemes of the storage backends installed (``tether_backends``), e.g. ``sqlite``
    storage_schemes: tuple[str, ...] = ()

    @classmethod
    def from_plugins(cls, pm: TetherPluginManager) -> ConfigSchema:
        """Collect ``tether_config_sections`` and ``tether_service_roles`` from ``pm``.

        :raises PluginError: a section that is not an attrs class with defaults, a name taken
            twice (or a kernel section's), or a role for a section nobody declared; the
            message names the plugin.
        """
        kernel = set(_kernel_fields())
        sections: dict[str, ConfigSection] = {}
        owners: dict[str, str] = {}
        for plugin, section in _results(pm, "tether_config_sections"):
            where = f"plugin {plugin!r}: config section {section.name!r}"
            if not _SECTION_NAME.fullmatch(section.name):
                raise PluginError(f"{where}: a section name is lower_case_with_underscores")
            if section.name in kernel:
                raise PluginError(f"{where}: the kernel has a section of that name")
            if section.name in owners:
                raise PluginError(f"{where}: also declared by plugin {owners[section.name]!r}")
            if not attrs.has(section.type):
                raise PluginError(f"{where}: {section.type!r} is not an attrs class")
            try:
                section.type()
            except (TypeError, ValueError) as exc:
                raise PluginError(f"{where}: every field needs a default ({exc})") from None
            if section.embedded is not None and type(section.embedded) is not section.type:
                raise PluginError(
                    f"{where}: embedded is a {type(section.embedded).__name__}, "
                    f"not a {section.type.__name__}"
                )
            sections[section.name] = section
            owners[section.name] = plugin
        roles: dict[str, ServiceRole] = {}
        role_owners: dict[str, str] = {}
        for plugin, role in _results(pm, "tether_service_roles"):
            where = f"plugin {plugin!r}: service role {role.name!r}"
            if role.name in roles:
                raise PluginError(f"{where}: also declared by plugin {role_owners[role.name]!r}")
            target = sections[role.section].type if role.section in sections else None
            if target is None and role.section in kernel:
                target = attrs.fields_dict(Config)[role.section].type
            fields = attrs.fields_dict(target) if isinstance(target, type) else {}
            if target is None or "enabled" not in fields:
                raise PluginError(
                    f"{where}: section {role.section!r} is not a section with an 'enabled' field"
                )
            roles[role.name] = role
            role_owners[role.name] = plugin
        from tether.backend import backend_schemes  # backends import errors that name Config

        return cls(
            sections=sections, owners=owners, roles=roles, storage_schemes=backend_schemes(pm)
        )

    def known_sections(self) -> list[str]:
        """Every top-level key a file may have: the kernel's, then the plugins'."""
        return [*_kernel_fields(), *self.sections]


def embedded_config(schema: ConfigSchema | None = None, *, joining: bool = False) -> Config:
    """What ``tetherd start`` runs with no configuration file, the embedded setup: the
    kernel's defaults (auth and proxy on this host, SQLite under ``data_dir``) and each plugin
    section's ``embedded`` value (with the SSH plugin, this host as a node).

    :param schema: the plugins' sections; default: those of the plugins installed here.
    :param joining: the host joins another cluster (``--proxy`` or ``--auth-server``), so it
        is no cluster of its own: the defaults, as of an empty file, with no embedded value
        (a node ``--roles`` turns on listens where a proxy elsewhere reaches it).
    """
    config = default_config()
    if joining:
        return config
    if schema is None:
        schema = installed_schema()
    for name, section in schema.sections.items():
        if section.embedded is not None:
            config = config.with_section(name, section.embedded)
    return config


def _results(pm: TetherPluginManager, hook: str) -> Iterable[tuple[str, Any]]:
    """``(plugin name, item)`` for every item every implementation of ``hook`` returns."""
    caller = getattr(pm.hook, hook)
    for impl in caller.get_hookimpls():  # registration order: the kernel's first
        for item in impl.function() or ():
            yield impl.plugin_name, item


def installed_schema(disabled: Iterable[str] = ()) -> ConfigSchema:
    """The schema of the plugins installed here, but for ``disabled`` (cached per process).

    :raises PluginError: a plugin cannot load, or declares a section or role wrongly.
    """
    from tether.plugins import autoload_enabled

    return _installed_schema(tuple(sorted(set(disabled))), autoload_enabled())


@functools.cache
def _installed_schema(disabled: tuple[str, ...], autoload: bool) -> ConfigSchema:
    from tether.plugins import get_plugin_manager  # plugins import hookspecs, which name Config

    return ConfigSchema.from_plugins(get_plugin_manager(disabled, autoload=autoload))
