"""The API servers a Kubernetes service forwards to, read from kubeconfig files.

The service talks to each API server with its own credentials (a client certificate or a
bearer token, as ``kubectl`` would with the same file) and makes every request on a user's
behalf with impersonation headers. A kubeconfig whose user authenticates by a program or a
provider (``exec``, ``auth-provider``) is refused: the service would have to run it for every
connection.
"""

from __future__ import annotations

import base64
import pathlib
import ssl
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from tether.api import ConfigError

__all__ = ["Upstream", "context_names", "read_upstream"]


@attrs.frozen
class Upstream:
    """One API server and how the service authenticates to it.

    :ivar host: the server's host, from the kubeconfig's ``server`` URL.
    :ivar port: its port (443 when the URL names none).
    :ivar server_name: the name its certificate is checked for (``tls-server-name``, or host).
    :ivar ssl_context: verifies the server and presents the service's client certificate.
    :ivar token: a bearer token, sent as ``Authorization``; empty with a client certificate.
    :ivar source: ``FILE (context NAME)``, for messages.
    """

    host: str
    port: int
    server_name: str
    ssl_context: ssl.SSLContext = attrs.field(repr=False)
    token: str = attrs.field(default="", repr=False)
    source: str = ""

    @property
    def authority(self) -> str:
        """``host:port`` as a ``Host`` header names it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _load(path: pathlib.Path) -> Mapping[str, Any]:
    try:
        document = YAML(typ="safe").load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"kubeconfig {path}: {exc.strerror or exc}") from None
    except YAMLError as exc:
        raise ConfigError(f"kubeconfig {path} is not YAML: {exc}") from None
    if not isinstance(document, Mapping):
        raise ConfigError(f"kubeconfig {path} is not a kubeconfig (no mapping at the top)")
    return document


def _named(document: Mapping[str, Any], section: str, name: str, where: str) -> Mapping[str, Any]:
    for item in document.get(section) or ():
        if isinstance(item, Mapping) and item.get("name") == name:
            value = item.get(section[:-1])  # clusters -> cluster
            if isinstance(value, Mapping):
                return value
    raise ConfigError(f"{where}: no {section[:-1]} named {name!r} in the file")


def context_names(path: pathlib.Path) -> list[str]:
    """The names of the contexts of a kubeconfig file, in the file's order."""
    document = _load(path)
    return [
        str(item["name"])
        for item in document.get("contexts") or ()
        if isinstance(item, Mapping) and item.get("name")
    ]


def _data(entry: Mapping[str, Any], key: str, base: pathlib.Path, where: str) -> bytes | None:
    """``key-data`` (base64) or the file ``key`` names, relative to the kubeconfig's folder."""
    inline = entry.get(f"{key}-data")
    if inline:
        try:
            return base64.b64decode(str(inline), validate=True)
        except ValueError:
            raise ConfigError(f"{where}: {key}-data is not base64") from None
    named = entry.get(key)
    if not named:
        return None
    path = base / str(named)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: {key} {path}: {exc.strerror or exc}") from None


def read_upstream(path: pathlib.Path, context: str = "") -> Upstream:
    """The API server and credentials of ``context`` (default: the current context) of the
    kubeconfig at ``path``.

    :raises ConfigError: the file, the context or what it names is missing or unusable,
        said with the file and context.
    """
    document = _load(path)
    context = context or str(document.get("current-context") or "")
    if not context:
        raise ConfigError(f"kubeconfig {path} has no current-context; name a context")
    where = f"kubeconfig {path} (context {context})"
    ctx = _named(document, "contexts", context, where)
    cluster = _named(document, "clusters", str(ctx.get("cluster", "")), where)
    user = _named(document, "users", str(ctx.get("user", "")), where) if ctx.get("user") else {}
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise ConfigError(
                f"{where}: the user authenticates with {unsupported}, which the service cannot "
                "run for every connection",
                hint="give the service a client certificate or a token in its kubeconfig",
            )
    url = urllib.parse.urlsplit(str(cluster.get("server", "")))
    if url.scheme != "https" or not url.hostname:
        raise ConfigError(f"{where}: server must be an https:// URL, not {cluster.get('server')!r}")
    base = path.parent
    ca = _data(cluster, "certificate-authority", base, where)
    if cluster.get("insecure-skip-tls-verify"):
        context_ = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context_.check_hostname = False
        context_.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        context_ = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.decode())
    else:
        context_ = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context_.set_alpn_protocols(["http/1.1"])
    cert = _data(user, "client-certificate", base, where)
    key = _data(user, "client-key", base, where)
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: a client certificate needs its key, and a key its certificate")
    if cert is not None and key is not None:
        _load_chain(context_, cert, key, where)
    token = str(user.get("token") or "")
    if not token and user.get("tokenFile"):
        try:
            token = (base / str(user["tokenFile"])).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: tokenFile: {exc.strerror or exc}") from None
    if cert is None and not token:
        raise ConfigError(
            f"{where}: the user has neither a client certificate nor a token",
            hint="the service authenticates to the API server with its own credentials",
        )
    return Upstream(
        host=url.hostname,
        port=url.port or 443,
        server_name=str(cluster.get("tls-server-name") or url.hostname),
        ssl_context=context_,
        token=token,
        source=f"{path} (context {context})",
    )


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes, where: str) -> None:
    """Python's ssl loads a certificate and key only from files: write them to a private
    temporary folder, load them, remove them."""
    with tempfile.TemporaryDirectory(prefix="tether-kube-") as directory:
        cert_path = pathlib.Path(directory) / "client.crt"
        key_path = pathlib.Path(directory) / "client.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        cert_path.write_bytes(cert)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{where}: the client certificate or key is unusable: {exc}"
            ) from None
