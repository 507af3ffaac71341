"""``tether.yaml`` read as ``tetherd`` reads it, with a plugin's sections, in memory.

A plugin that declares a configuration section (``tether_config_sections``) or a service role
(``tether_service_roles``) tests it the way an operator meets it: a file with the section,
read by the kernel's loader with the kernel's errors (``file:line: field: problem``), the
section ``tetherd configure`` prints, and ``tetherd start --roles=...``'s flags.
:class:`ConfigReader` does this with the kernel and the plugins given to it, and no other
installed plugin, so that the test does not depend on what else is installed.
"""

from __future__ import annotations

from typing import Any

import attrs

from tether.config import (
    Config,
    ConfigSchema,
    apply_start_flags,
    default_config,
    embedded_config,
    load_config_text,
    render_default_config,
)
from tether.plugins import get_plugin_manager

__all__ = ["ConfigReader", "default_config"]


@attrs.frozen
class ConfigReader:
    """The kernel's configuration sections and roles, and those of the plugins given."""

    schema: ConfigSchema

    @classmethod
    def with_plugins(cls, **plugins: object) -> ConfigReader:
        """Read with the kernel's builtins and ``plugins`` (name=module with the hooks, as
        ``ConfigReader.with_plugins(ssh=tether_ssh.plugin)``); none: the kernel alone.

        :raises PluginError: a plugin declares a section or role wrongly.
        """
        pm = get_plugin_manager(autoload=False)
        for name, plugin in plugins.items():
            pm.register(plugin, name=name)
        return cls(ConfigSchema.from_plugins(pm))

    def load(self, text: str, source: str = "tether.yaml") -> Config:
        """The configuration in ``text``, as if read from the file ``source``.

        :raises ConfigError: what ``tetherd`` would refuse, as ``source:line: field: problem``.
        """
        return load_config_text(text, source, self.schema)

    def embedded(self, *, joining: bool = False) -> Config:
        """What ``tetherd start`` runs with no file: the kernel's defaults and each section's
        ``embedded`` value (``joining``: the host joins another cluster, so none applies)."""
        return embedded_config(self.schema, joining=joining)

    def render_default(self) -> str:
        """What ``tetherd configure`` prints: every section with its defaults."""
        return render_default_config(self.schema)

    def apply_start_flags(self, config: Config, **flags: Any) -> Config:
        """``config`` with ``tetherd start``'s flags applied (``roles="node"``,
        ``labels="env=dev"``, ``token=...``, ``proxy_server=...``; flags win over the file).

        :raises ConfigError: a flag's value is impossible, with the flag named.
        """
        return apply_start_flags(config, schema=self.schema, **flags)
