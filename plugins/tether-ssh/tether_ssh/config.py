"""``ssh_service:``: the SSH plugin's section of ``tether.yaml``, in Teleport's place and shape.

Declared through ``tether_config_sections``; the kernel reads it with its own converter, so
its errors carry the line like the kernel's, and the plugin reads it back typed with
``config.section(SshServiceConfig)``. ``tetherd start --roles=node`` turns it on, and so does
``tetherd start`` without a file (the section's embedded value); a file without it runs no
node.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs

from tether.api import ConfigSection, FieldError, HostPort, ServiceRole, not_blank, positive

__all__ = ["SECTION", "SERVICE_ROLE", "CommandLabel", "SshServiceConfig"]


@attrs.frozen
class CommandLabel:
    """A dynamic node label: the output of ``command``, refreshed every ``period``."""

    name: str = attrs.field(validator=not_blank)
    command: tuple[str, ...] = attrs.field()
    period: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=1), validator=positive
    )

    @command.validator
    def _check_command(self, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise FieldError((attribute.name,), "must name a program, like [uname, -p]")


@attrs.frozen
class SshServiceConfig:
    """``ssh_service:``: this host as a node users reach with ``tether ssh``."""

    enabled: bool = False
    listen_addr: HostPort = HostPort("0.0.0.0", 3022)
    public_addr: HostPort | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    commands: tuple[CommandLabel, ...] = ()

    def __attrs_post_init__(self) -> None:
        # Static and command labels share one namespace on the node; two values for one
        # label would make role matching depend on which one happened to win.
        seen = set(self.labels)
        for index, label in enumerate(self.commands):
            if label.name in seen:
                raise FieldError(
                    ("commands", index, "name"), f"label {label.name!r} is defined twice"
                )
            seen.add(label.name)


SECTION = ConfigSection(
    name="ssh_service",
    type=SshServiceConfig,
    # `tetherd start` without a file runs this host as a node too, as `teleport start` does;
    # only the proxy in the same process dials it, so it listens where auth does: on loopback
    embedded=SshServiceConfig(enabled=True, listen_addr=HostPort("127.0.0.1", 3022)),
    template="""\
ssh_service:
  # Without a file this host is a node of its own cluster, served on 127.0.0.1 to the proxy
  # of this host only. In a file, enabled defaults to false (a file without ssh_service: runs
  # no node) and listen_addr to 0.0.0.0:3022, where a proxy elsewhere reaches it.
  enabled: true
  listen_addr: 127.0.0.1:3022
  # host:port the proxy reaches this node at (direct mode); null takes listen_addr, with an
  # any-interface host replaced by nodename. Unused in tunnel mode (join.proxy_server).
  public_addr: null
  # Static labels that roles select nodes by, e.g. {env: dev}.
  labels: {}
  # Labels from a command's output, refreshed every period, e.g.
  #   commands:
  #     - {name: arch, command: [uname, -p], period: 1h}
  commands: []
""",
)

#: ``tetherd start --roles=node``: this host as an SSH node
SERVICE_ROLE = ServiceRole("node", "ssh_service", "this host as an SSH node")
