"""``tetherctl status``: the cluster's CA pins and what is connected to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from tether.cli._common import format_option, output, run_async
from tether.cli._ctl_target import connect, kind_registry
from tether.errors import AccessDenied, NotFound
from tether.resources import ResourceKind

__all__ = ["status"]


#: How many names of a kind ``tetherctl status`` prints before "and N more".
_STATUS_NAMES = 10


@click.command()
@format_option()
@click.pass_context
@run_async
async def status(ctx: click.Context, fmt: str) -> None:
    """Show the cluster's CA pins and what is connected to it.

    The CA pin is what `tetherd start --ca-pin` and `tether login --ca-pin` take; the SSH CAs'
    fingerprints are as `ssh-keygen -l` prints them. Connected are the proxies and the hosts
    that heartbeat (nodes, other agents), the leaf clusters whose tunnels are up here and the
    root clusters this cluster's proxies hold tunnels to. Kinds your roles may not list are
    named under "Not shown".
    """
    registry = kind_registry(ctx)
    published = [k for k in registry.kinds() if k.published_by and k.name != "proxy"]
    target = connect(ctx)
    listed: dict[str, list[dict[str, Any]] | None] = {}
    async with target.client as client:
        info = await client.cluster()
        for kind in ("proxy", *(k.name for k in published), "remote_cluster", "trusted_cluster"):
            try:
                listed[kind] = await client.get_resources(kind)
            except (AccessDenied, NotFound):
                listed[kind] = None
    report = _status_report(info, listed, [k.name for k in published])
    if fmt != "text":
        output(report, fmt)
        return
    labels = {k.name: _plural(k) for k in published}
    _print_status(report, labels)


def _plural(kind: ResourceKind) -> str:
    return next((a for a in kind.aliases if a.startswith(kind.name)), kind.name).capitalize()


def _status_report(
    info: Mapping[str, Any],
    listed: Mapping[str, list[dict[str, Any]] | None],
    published: list[str],
) -> dict[str, Any]:
    """What ``tetherctl status --format=json`` prints; a kind the caller may not list is
    None (its key) or left out (``hosts``), and named in ``not_shown``."""
    proxies, trusted, remote = listed["proxy"], listed["trusted_cluster"], listed["remote_cluster"]
    tunnels: dict[str, set[str]] = {}
    for proxy in proxies or []:
        for root, root_proxies in (proxy.get("status") or {}).get("root_tunnels", {}).items():
            tunnels.setdefault(root, set()).update(root_proxies)

    def root_connection(tc: Mapping[str, Any]) -> str:
        if not tc["spec"].get("enabled", True):
            return "disabled"
        if proxies is None:
            return "unknown"
        return "online" if tunnels.get(tc["metadata"]["name"]) else "offline"

    return {
        "cluster": info["name"],
        "version": info.get("version"),
        "ca_pin": info["ca_pin"],
        "fingerprints": info.get("fingerprints", {}),
        "proxies": None
        if proxies is None
        else [
            {
                "name": p["metadata"]["name"],
                "public_addr": p["spec"].get("public_addr"),
                "version": p["spec"].get("version"),
            }
            for p in proxies
        ],
        "hosts": {
            kind: sorted(d["spec"].get("hostname") or d["metadata"]["name"] for d in docs)
            for kind in published
            if (docs := listed[kind]) is not None
        },
        "root_clusters": None
        if trusted is None
        else [
            {
                "name": tc["metadata"]["name"],
                "connection": root_connection(tc),
                "proxies": sorted(tunnels.get(tc["metadata"]["name"], ())),
            }
            for tc in trusted
        ],
        "leaf_clusters": None
        if remote is None
        else [
            {
                "name": rc["metadata"]["name"],
                "connection": (rc.get("status") or {}).get("connection", "offline"),
                "last_heartbeat": (rc.get("status") or {}).get("last_heartbeat"),
            }
            for rc in remote
        ],
        "not_shown": sorted(kind for kind, docs in listed.items() if docs is None),
    }


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_STATUS_NAMES])
    more = len(names) - _STATUS_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def _online(names: list[str]) -> str:
    return f"{len(names)} online: {_names(names)}" if names else "none"


def _print_status(report: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """Two blocks, each aligned: the cluster and its CAs (as ``tctl status``), then what is
    connected."""
    prints = report["fingerprints"]
    cluster = [
        ("Cluster", report["cluster"]),
        ("Version", report["version"] or "unknown"),
        ("CA pin", f"{report['ca_pin']}  (the X.509 CA's: what --ca-pin takes)"),
    ]
    cluster += [(f"{t.capitalize()} CA", prints[t]) for t in ("user", "host") if t in prints]
    connected = []
    if report["proxies"] is not None:
        addrs = [f"{p['name']} ({p['public_addr']})" for p in report["proxies"]]
        connected.append(("Proxies", _online(addrs)))
    connected += [(labels[kind], _online(names)) for kind, names in report["hosts"].items()]
    for key, title in (("root_clusters", "Root clusters"), ("leaf_clusters", "Leaf clusters")):
        if report[key] is not None:
            clusters = [f"{c['name']} ({c['connection']})" for c in report[key]]
            connected.append((title, ", ".join(clusters) or "none"))
    if report["not_shown"]:
        not_shown = f"{', '.join(report['not_shown'])} (your roles may not list)"
        connected.append(("Not shown", not_shown))
    click.echo("\n\n".join(_aligned(block) for block in (cluster, connected)))


def _aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)
