"""The user's kubeconfig: the entries ``tether kube login`` writes and ``tether kube logout``
removes, never touching anyone else's.

One context per Tether cluster and Kubernetes cluster, named ``TETHER-CLUSTER-KUBE-CLUSTER``
as tsh names them, with a cluster entry and a user entry of the same name: the cluster entry
points kubectl at the proxy, trusts the proxy's CA and asks for the route's TLS server name;
the user entry runs ``tether kube credentials``, which hands kubectl the user's current login
certificate (``client.authentication.k8s.io/v1beta1``), so a new ``tether login`` is picked up
without touching the file. Entries are Tether's when their user runs ``kube credentials``
with ``--proxy``: logout removes only those, for one proxy.

The file is read and written with ruamel's round trip, so comments, order and entries of other
tools stay as they were; it is replaced atomically, with mode 0600.
"""

from __future__ import annotations

import base64
import os
import pathlib
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from tether.api import TetherError

__all__ = [
    "EXEC_API_VERSION",
    "KubeconfigEntry",
    "kubeconfig_path",
    "refresh_entries",
    "remove_entries",
    "tether_contexts",
    "write_entry",
]

#: The exec credential API kubectl 1.20 and later understand.
EXEC_API_VERSION = "client.authentication.k8s.io/v1beta1"


def kubeconfig_path(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
    """Where kubectl reads its configuration: the first file of ``$KUBECONFIG``, else
    ``~/.kube/config`` (kubectl writes to the first of a list too)."""
    listed = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        return pathlib.Path(listed[0]).expanduser()
    return pathlib.Path.home() / ".kube" / "config"


@attrs.frozen
class KubeconfigEntry:
    """One Tether context: what kubectl needs to reach a Kubernetes cluster through a proxy.

    :ivar name: the context's (and its cluster's and user's) name.
    :ivar server: ``https://PROXY``.
    :ivar ca_pem: the CAs that verify the proxy.
    :ivar server_name: the TLS server name that routes to the cluster.
    :ivar command: the ``tether`` program kubectl runs for credentials.
    :ivar args: its arguments (``kube credentials --proxy=... --cluster=... NAME``).
    :ivar env: environment it needs (``TETHER_HOME`` when the login lives elsewhere).
    """

    name: str
    server: str
    ca_pem: str
    server_name: str
    command: str
    args: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)


def _yaml() -> YAML:
    yaml = YAML()  # round trip: comments and order survive
    yaml.default_flow_style = False
    return yaml


def _read(path: pathlib.Path) -> CommentedMap:
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise TetherError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    try:
        document = _yaml().load(text) if text.strip() else None
    except YAMLError as exc:
        raise TetherError(
            f"kubeconfig {path} is not YAML: {exc}",
            hint="fix or move the file, then run the command again",
        ) from None
    if document is None:
        document = CommentedMap([("apiVersion", "v1"), ("kind", "Config")])
    if not isinstance(document, MutableMapping):
        raise TetherError(f"kubeconfig {path} is not a kubeconfig (no mapping at the top)")
    return document  # type: ignore[return-value]


def _write(path: pathlib.Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            _yaml().dump(document, out)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _section(document: MutableMapping[str, Any], key: str) -> CommentedSeq:
    items = document.get(key)
    if items is None:
        items = document[key] = CommentedSeq()
    if not isinstance(items, list):
        raise TetherError(f"kubeconfig: {key} is not a list")
    return items  # type: ignore[return-value]


def _put(items: list[Any], name: str, key: str, value: Mapping[str, Any]) -> None:
    entry = CommentedMap([("name", name), (key, CommentedMap(value))])
    for index, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("name") == name:
            items[index] = entry
            return
    items.append(entry)


def write_entry(path: pathlib.Path, entry: KubeconfigEntry, *, select: bool = True) -> None:
    """Add or replace ``entry``'s cluster, user and context in the kubeconfig at ``path``;
    make it the current context when ``select``."""
    document = _read(path)
    document.setdefault("apiVersion", "v1")
    document.setdefault("kind", "Config")
    _put(
        _section(document, "clusters"),
        entry.name,
        "cluster",
        {
            "server": entry.server,
            "certificate-authority-data": base64.b64encode(entry.ca_pem.encode()).decode(),
            "tls-server-name": entry.server_name,
        },
    )
    exec_ = CommentedMap(
        [
            ("apiVersion", EXEC_API_VERSION),
            ("command", entry.command),
            ("args", CommentedSeq(entry.args)),
        ]
    )
    if entry.env:
        exec_["env"] = CommentedSeq(
            CommentedMap([("name", k), ("value", v)]) for k, v in sorted(entry.env.items())
        )
    exec_["interactiveMode"] = "Never"  # ignored by 1.20; newer kubectl wants it said
    _put(_section(document, "users"), entry.name, "user", {"exec": exec_})
    _put(
        _section(document, "contexts"),
        entry.name,
        "context",
        {"cluster": entry.name, "user": entry.name},
    )
    if select:
        document["current-context"] = entry.name
    _write(path, document)


def _credentials_proxy(user: Any) -> str | None:
    """The proxy a user entry's ``tether kube credentials`` names, or None for others."""
    if not isinstance(user, Mapping):
        return None
    exec_ = (user.get("user") or {}).get("exec") if isinstance(user.get("user"), Mapping) else None
    if not isinstance(exec_, Mapping):
        return None
    args = [str(a) for a in exec_.get("args") or ()]
    if not any(args[i : i + 2] == ["kube", "credentials"] for i in range(len(args))):
        return None
    for arg in args:
        if arg.startswith("--proxy="):
            return arg.removeprefix("--proxy=")
    return None


def tether_contexts(path: pathlib.Path, proxy: str) -> list[str]:
    """The names of the contexts Tether wrote for ``proxy``."""
    document = _read(path)
    return [
        str(user.get("name"))
        for user in document.get("users") or ()
        if _credentials_proxy(user) == proxy
    ]


def remove_entries(path: pathlib.Path, proxy: str, names: Sequence[str] | None = None) -> list[str]:
    """Remove the contexts Tether wrote for ``proxy`` (only ``names`` when given), with their
    cluster and user entries; the current context is unset if it was one of them. Returns
    the names removed."""
    if not path.exists():
        return []
    document = _read(path)
    ours = set(tether_contexts(path, proxy))
    removing = ours if names is None else ours & set(names)
    if not removing:
        return []
    for key in ("clusters", "users", "contexts"):
        items = document.get(key)
        if isinstance(items, list):
            items[:] = [
                item
                for item in items
                if not (isinstance(item, Mapping) and item.get("name") in removing)
            ]
    if document.get("current-context") in removing:
        document["current-context"] = ""
    _write(path, document)
    return sorted(removing)


def refresh_entries(path: pathlib.Path, proxy: str, ca_pem: str) -> list[str]:
    """Give the cluster entries of the contexts Tether wrote for ``proxy`` the CAs of a new
    login (after a rotation of the cluster's CA, the old ones no longer verify the proxy).
    Touches nothing else, and writes nothing when nothing changed. Returns the names
    updated."""
    if not path.exists():
        return []
    document = _read(path)
    ours = set(tether_contexts(path, proxy))
    data = base64.b64encode(ca_pem.encode()).decode()
    updated = []
    for item in document.get("clusters") or ():
        if not (isinstance(item, MutableMapping) and item.get("name") in ours):
            continue
        cluster = item.get("cluster")
        if (
            isinstance(cluster, MutableMapping)
            and cluster.get("certificate-authority-data") != data
        ):
            cluster["certificate-authority-data"] = data
            updated.append(str(item["name"]))
    if updated:
        _write(path, document)
    return sorted(updated)
