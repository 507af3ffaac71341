"""The audit event model, and the one function that emits events to every sink.

Sinks are plugins implementing ``tether_audit_events`` (the builtin one writes JSON lines under
``data_dir/log``), which receives events in batches: one for most, a host's forwarded batch
whole. Events are plain, JSON-serialisable records so any sink can store them and
any searcher can return them without knowing the event types.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import pluggy

from tether.errors import AuditUnavailable
from tether.plugins import await_maybe, call_each

if TYPE_CHECKING:  # tether.config is heavy, and a client reading AuditEvent needs none of it
    from tether.config import AuditFailure

__all__ = [
    "EVENT_TYPE",
    "HOST_EVENT_ID",
    "AuditEvent",
    "AuditQuery",
    "HostAuditEvent",
    "emit",
    "search",
    "stored_host_event_id",
]

# The event types the kernel emits; plugins add their own with their own prefix.
USER_LOGIN = "user.login"
USER_LOGIN_FAILED = "user.login.failed"
#: failed logins locked a user name (reason and until in its fields)
USER_LOCKED = "user.locked"
#: a local user set their password (``fields["reason"]``: ``signup``)
USER_PASSWORD_CHANGE = "user.password.change"
RESOURCE_CREATED = "resource.created"
RESOURCE_UPDATED = "resource.updated"
RESOURCE_DELETED = "resource.deleted"
CERT_ISSUED = "cert.issued"
TOKEN_CREATED = "token.created"

#: What an event type looks like: lower-case words separated by dots (``ssh.session.start``).
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@attrs.frozen(kw_only=True)
class AuditEvent:
    """One thing that happened, who did it, and where.

    :param type: dotted event type, e.g. ``user.login.failed``.
    :param cluster: the cluster where it happened (events are recorded on the side where
        they happen).
    :param user: who did it (may be empty for anonymous failures).
    :param fields: event-specific details (resource kind and name, reason, roles, ...).
    """

    type: str
    cluster: str
    user: str = ""
    success: bool = True
    time: datetime.datetime = attrs.field(factory=_now)
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    fields: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "cluster": self.cluster,
            "user": self.user,
            "success": self.success,
            **{k: v for k, v in self.fields.items() if k not in _RESERVED},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditEvent:
        time = datetime.datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00"))
        return cls(
            type=str(data["type"]),
            cluster=str(data.get("cluster", "")),
            user=str(data.get("user", "")),
            success=bool(data.get("success", True)),
            time=time,
            id=str(data.get("id", uuid.uuid4().hex)),
            fields={k: v for k, v in data.items() if k not in _RESERVED},
        )


_RESERVED = frozenset({"id", "type", "time", "cluster", "user", "success"})

#: What a host names its event by: a random id of its own (32 hex digits from
#: :class:`HostAuditEvent`), at most 64 letters, digits, ``-`` and ``_``.
HOST_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Under which auth derives a host's event id into the id it stores (see
#: :func:`stored_host_event_id`).
_HOST_EVENTS = uuid.UUID("6f1d4c1e-8f55-4a0e-9a57-3c3c0f6e2b71")


def _epoch_now() -> float:
    return _now().timestamp()


@attrs.frozen
class HostAuditEvent:
    """An event one of a cluster's hosts (a node, a database service) reports to auth.

    The host names it and dates it when it happens, so that an event sent late (auth was
    unreachable, the host restarted with it spooled) keeps its time, and one sent twice (an
    answer lost on the way, so the host sends the batch again) is recorded once.

    :param id: the host's name for it, unique among that host's events.
    :param time: when it happened, seconds since the epoch.
    """

    type: str
    user: str
    fields: Mapping[str, Any]
    success: bool = True
    id: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    time: float = attrs.field(factory=_epoch_now)

    def to_json(self) -> dict[str, Any]:
        """As the host sends it (``POST /v1/audit/batch``) and spools it."""
        return {
            "type": self.type,
            "user": self.user or None,  # the API takes a user or none, never an empty name
            "fields": dict(self.fields),
            "success": self.success,
            "id": self.id,
            "time": self.time,
        }


def stored_host_event_id(cluster: str, host: str, event_id: str) -> str:
    """The id auth stores a host's event under: the host's own id, in the host's name.

    A sink keyed by event id stores a batch sent twice once; deriving the id from the host
    that reported it means no host can name an event so that another host's is dropped.
    """
    return uuid.uuid5(_HOST_EVENTS, f"{cluster}/{host}/{event_id}").hex


@attrs.frozen(kw_only=True)
class AuditQuery:
    """What ``tetherctl audit search`` asks for.

    :param type: only events of this type, or of a type starting with ``type + "."``.
    :param user: only events done by this user.
    :param since: only events at or after this time.
    :param until: only events before this time.
    :param limit: at most this many (the newest ones), oldest first.
    :param offset: skip the newest ``offset`` matching events first: the next page back in
        time is ``offset + limit``.
    :param cluster: only events of this cluster (the auth service asking sets its own, so a
        sink shared by several clusters answers each with its own events);
        None: the events of every cluster the sink records, merged in time order.
    """

    type: str | None = None
    user: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    limit: int = 1000
    offset: int = 0
    cluster: str | None = None

    def matches(self, event: AuditEvent) -> bool:
        if self.type and not (event.type == self.type or event.type.startswith(self.type + ".")):
            return False
        if self.cluster is not None and event.cluster != self.cluster:
            return False
        if self.user is not None and event.user != self.user:
            return False
        if self.until is not None and event.time >= self.until:
            return False
        return not (self.since is not None and event.time < self.since)

    def page(self, matching: Sequence[AuditEvent]) -> list[AuditEvent]:
        """This query's page of ``matching`` (every matching event, oldest first)."""
        end = len(matching) - self.offset
        return list(matching[max(0, end - self.limit) : max(0, end)])


async def emit(
    pm: pluggy.PluginManager,
    events: Sequence[AuditEvent],
    *,
    on_failure: AuditFailure | str = "refuse",
) -> None:
    """Send ``events`` (at least one, oldest first) to every sink; a failing sink is logged
    and the others still run.

    :param on_failure: ``refuse``: once every sink had its turn, raise
        :class:`~tether.errors.AuditUnavailable` if any failed, so that the caller does not
        do what the events record; ``continue``: only the log says so.
    """
    failed: list[str] = []
    await call_each(
        pm.hook.tether_audit_events,
        events=list(events),
        on_error=lambda name, exc: failed.append(f"{name}: {exc}"),
    )
    if failed and on_failure == "refuse":  # AuditFailure.REFUSE is that string
        what = events[0].type if len(events) == 1 else f"{len(events)} events"
        raise AuditUnavailable(
            f"refused: the audit log could not record {what} ({'; '.join(failed)})",
            hint="try again once the audit log is back; the auth service's log says what failed",
        )


async def search(pm: pluggy.PluginManager, query: AuditQuery) -> list[AuditEvent]:
    """Ask the sinks for events; the first sink able to search answers.

    The hook is firstresult, but pluggy would stop at an ``async def`` implementation's
    coroutine even when it resolves to None, so each implementation is awaited here in
    pluggy's call order (last registered first) until one returns a list.
    """
    for impl in reversed(pm.hook.tether_audit_search.get_hookimpls()):
        answer = cast(
            "Awaitable[list[AuditEvent] | None] | list[AuditEvent] | None",
            impl.function(query=query),
        )
        result = await await_maybe(answer)
        if result is not None:
            return list(result)
    return []
