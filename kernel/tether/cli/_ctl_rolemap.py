"""``tetherctl rolemap``: how a trusted root cluster's roles map to this cluster's roles."""

from __future__ import annotations

import click

from tether.cli._common import (
    configured_disabled,
    emit_table,
    format_option,
    output,
    plugin_manager,
    run_async,
    split_csv,
)
from tether.cli._ctl_target import config_path, connect

__all__ = ["rolemap"]


@click.group()
def rolemap() -> None:
    """Inspect how a trusted root cluster's roles map to this cluster's roles."""


@rolemap.command("test")
@click.option("--cluster", required=True, help="The trusted root cluster (trusted_cluster name).")
@click.option("--roles", required=True, help="Root roles to map, comma-separated.")
@format_option()
@click.pass_context
@run_async
async def rolemap_test(ctx: click.Context, cluster: str, roles: str, fmt: str) -> None:
    """Show which local roles each root role maps to, and which rule matched."""
    from tether.trust import map_roles, parse_role_map

    target = connect(ctx)
    async with target.client as client:
        [doc] = await client.get_resources("trusted_cluster", cluster)
    rules = parse_role_map(doc["spec"].get("role_map", []))
    pm = plugin_manager(configured_disabled(config_path(ctx)))
    mappings = map_roles(pm, rules, split_csv(roles), cluster)
    rows = [
        {
            "remote_role": m.remote_role,
            "local_roles": list(m.local_roles),
            "rule": m.rule.remote if m.rule is not None else None,
        }
        for m in mappings
    ]
    output(
        rows,
        fmt,
        text=lambda: emit_table(
            ["Remote Role", "Local Roles", "Matched Rule"],
            [
                (
                    m.remote_role,
                    ", ".join(m.local_roles) or "-",
                    m.rule.remote if m.rule is not None else "(unmapped)",
                )
                for m in mappings
            ],
        ),
    )
