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
@click.option("--user", help="Only what this user did.")
@click.option(
    "--since", help="From when: how far back (1h) or a time (2026-12-01T08:00Z); default: ever."
)
@click.option("--until", help="Before when: how far back (30m) or a time; default: now.")
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Show at most this many events (the newest).",
)
@click.option(
    "--page",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Which page back in time: 2 shows the --limit events before page 1's.",
)
@format_option()
@click.pass_context
@run_async
async def audit_search(
    ctx: click.Context,
    type_name: str | None,
    user: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    page: int,
    fmt: str,
) -> None:
    """Search audit events, oldest first."""
    query = AuditQuery(
        type=type_name,
        user=user,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
        limit=limit,
        offset=(page - 1) * limit,
    )
    target = connect(ctx)
    async with target.client as client:
        events = await client.search_audit(query)
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


def _when(text: str | None, option: str) -> datetime.datetime | None:
    """A time given as how long ago (``1h``) or as an ISO 8601 time (UTC if no zone)."""
    if not text:
        return None
    try:
        return datetime.datetime.now(datetime.UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (1h, 30m) nor a time (2026-12-01T08:00Z)",
            param_hint=option,
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
