"""The ``ssh`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

For now it registers and adds no resource kinds; the node service (``tether_services``), the
proxy's front door (``tether_protocols``) and ``tether ssh`` (``tether_cli_commands``) build on
:func:`tether_ssh.server.serve_ssh` next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tether

if TYPE_CHECKING:
    from tether.resources import ResourceKind

__all__ = ["tether_resource_kinds"]


@tether.hookimpl
def tether_resource_kinds() -> list[ResourceKind]:
    """No kinds of its own yet: ``node`` is the kernel's."""
    return []
