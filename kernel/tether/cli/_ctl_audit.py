"""``tetherctl audit``: searching the cluster's audit log."""

from __future__ import annotations

import datetime

import click

from tether.audit import AuditQuery
from tether.cli._common import emit_table, format_option, output, run_async
from tether.cli._ctl_target import connect
from tether.durations import parse_duration

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """Read the audit log."""


@audit.command("search")
@click.option("--type", "type_name", help="Event type, e.g. user.login.failed (prefixes match).")
@click.option("--since", help="How far back, e.g. 1h (default: everything).")
@click.option("--limit", default=1000, show_default=True, help="Show at most this many events.")
@format_option()
@click.pass_context
@run_async
async def audit_search(
    ctx: click.Context, type_name: str | None, since: str | None, limit: int, fmt: str
) -> None:
    """Search audit events, oldest first."""
    since_time = None
    if since:
        try:
            since_time = datetime.datetime.now(datetime.UTC) - parse_duration(since)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    target = connect(ctx)
    async with target.client as client:
        events = await client.search_audit(
            AuditQuery(type=type_name, since=since_time, limit=limit)
        )
    rows = [
        (
            f"{e.time:%Y-%m-%d %H:%M:%S}",
            e.type,
            e.user,
            "yes" if e.success else "no",
            ", ".join(f"{k}={v}" for k, v in e.fields.items()),
        )
        for e in events
    ]
    output(
        [e.to_json() for e in events],
        fmt,
        text=lambda: emit_table(["Time (UTC)", "Type", "User", "Success", "Details"], rows),
    )
