"""``tether kube``: the client side, as tsh's.

kubectl speaks TLS and HTTP itself and lets a kubeconfig set only the server's address, the CA
and the TLS server name, so that is how it reaches a cluster: ``tether kube login`` writes a
context whose server is the proxy, whose ``tls-server-name`` names the Tether cluster and the
Kubernetes cluster (the proxy routes on it) and whose credentials come from ``tether kube
credentials``, the user's login certificate in kubectl's exec credential format.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import sys
from typing import Any

import click
from cryptography import x509

from tether.api import (
    HOME_ENV,
    KindRegistry,
    NotFound,
    Profile,
    TetherError,
    cluster_option,
    completer,
    current_profile,
    emit_table,
    format_option,
    list_targets,
    output,
    profile_ssl_context,
    require_profile,
    resource_from_dict,
    route_server_name,
    run_async,
)
from tether_kube.kind import KUBE_CLUSTER
from tether_kube.kubeconfig import (
    EXEC_API_VERSION,
    KubeconfigEntry,
    kubeconfig_path,
    remove_entries,
    write_entry,
)

__all__ = ["ALPN", "SERVER_NAME_PREFIX", "TITLE", "context_name", "kube_group"]

#: The ALPN id of Tether's own clients (``tether kube ls``) on the proxy's one port.
ALPN = "tether-kube/1"
#: The TLS server name prefix kubectl's connections are routed by.
SERVER_NAME_PREFIX = "kube"
#: The protocol's name in messages.
TITLE = "Kubernetes cluster"

_KINDS = KindRegistry([KUBE_CLUSTER], plugin="kube")


def _cluster(profile: Profile, cluster: str | None) -> str:
    return cluster or profile.cluster


def _cluster_flag(profile: Profile, cluster: str) -> str:
    return f" --cluster={cluster}" if cluster != profile.cluster else ""


def context_name(cluster: str, kube_cluster: str) -> str:
    """The kubeconfig context of a Kubernetes cluster of a Tether cluster (tsh's naming)."""
    return f"{cluster}-{kube_cluster}"


async def _clusters(profile: Profile, cluster: str) -> list[tuple[Any, dict[str, Any]]]:
    """The Kubernetes clusters of ``cluster`` the user may see: resources and documents."""
    docs = await list_targets(
        profile.proxy,
        profile_ssl_context(profile, alpn=[ALPN]),
        alpn=ALPN,
        protocol=TITLE,
        cluster=cluster,
    )
    found = [(resource_from_dict(doc, _KINDS, source="kube"), doc) for doc in docs]
    return sorted(found, key=lambda pair: pair[0].metadata.name)


async def _names(ctx: click.Context, incomplete: str) -> list[str]:
    profile = current_profile()
    if profile is None:
        return []
    cluster = _cluster(profile, ctx.params.get("cluster"))
    return [resource.metadata.name for resource, _ in await _clusters(profile, cluster)]


@click.group("kube")
def kube_group() -> None:
    """Reach Kubernetes clusters through Tether with kubectl."""


@kube_group.command("ls")
@cluster_option("List the Kubernetes clusters of this cluster (default: the one logged in to).")
@format_option()
@run_async
async def ls(cluster: str | None, fmt: str) -> None:
    """List the Kubernetes clusters you can reach, with the Kubernetes users and groups your
    roles allow on each; * marks kubectl's current context.

    With --format=json or yaml, the kube_cluster resources themselves.
    """
    profile = require_profile()
    where = _cluster(profile, cluster)
    found = await _clusters(profile, where)
    current = _current_context()
    rows = []
    for resource, doc in found:
        name = resource.metadata.name
        labels = ",".join(f"{k}={v}" for k, v in sorted(resource.metadata.labels.items()))
        status = doc.get("status") or {}
        rows.append(
            (
                name,
                labels,
                ", ".join(status.get("kubernetes_users") or []) or "(none)",
                ", ".join(status.get("kubernetes_groups") or []) or "(none)",
                "*" if current == context_name(where, name) else "",
            )
        )
    output(
        [doc for _, doc in found],
        fmt,
        text=lambda: emit_table(
            ["Kube Cluster Name", "Labels", "Kubernetes Users", "Kubernetes Groups", "Selected"],
            rows,
        ),
    )


def _current_context() -> str:
    """kubectl's current context, to mark its row; an unreadable file marks none."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        document = YAML(typ="safe").load(kubeconfig_path().read_text())
    except (OSError, UnicodeDecodeError, YAMLError):
        return ""
    if not isinstance(document, dict):
        return ""
    return str(document.get("current-context") or "")


def _tether_invocation() -> tuple[str, tuple[str, ...]]:
    """The command and first arguments that run this ``tether`` for kubectl: the program by
    absolute path, or this Python with ``-m`` when it runs as a module."""
    argv0 = pathlib.Path(sys.argv[0])
    if argv0.name == "tether" and argv0.exists():
        return str(argv0.resolve()), ()
    return sys.executable, ("-m", "tether.cli.tether")


def _logged_in(proxy: str | None) -> Profile:
    """The current login, which must be to ``proxy`` when the user named one (the guide's
    ``tsh kube login --proxy=... --cluster=east east``)."""
    profile = require_profile()
    if proxy and proxy not in (profile.proxy, profile.proxy.rsplit(":", 1)[0]):
        raise TetherError(
            f"you are logged in to {profile.proxy}, not {proxy}",
            hint=f"run `tether login --proxy={proxy}` first",
        )
    return profile


@kube_group.command("login")
@click.option("--proxy", help="The proxy you logged in to (checked; default: the current login).")
@cluster_option("The Tether cluster of the Kubernetes cluster (default: the one logged in to).")
@click.argument("name", shell_complete=completer(_names))
@run_async
async def login(proxy: str | None, cluster: str | None, name: str) -> None:
    """Add a kubectl context for Kubernetes cluster NAME and switch to it.

    The context is written into $KUBECONFIG (its first file) or ~/.kube/config, beside
    whatever else is there.
    """
    profile = _logged_in(proxy)
    where = _cluster(profile, cluster)
    names = [resource.metadata.name for resource, _ in await _clusters(profile, where)]
    if name not in names:
        listing = "tether kube ls" + _cluster_flag(profile, where)
        raise NotFound(
            f"Kubernetes cluster {name!r} not found in cluster {where!r}",
            hint=f"run `{listing}` to see the Kubernetes clusters you can reach",
        )
    context = context_name(where, name)
    env = {HOME_ENV: os.environ[HOME_ENV]} if os.environ.get(HOME_ENV) else {}
    command, first = _tether_invocation()
    entry = KubeconfigEntry(
        name=context,
        server=f"https://{profile.proxy}",
        ca_pem=profile.tls_ca_file.read_text(),
        server_name=route_server_name(SERVER_NAME_PREFIX, where, name),
        command=command,
        args=(
            *first,
            "kube",
            "credentials",
            f"--proxy={profile.proxy}",
            f"--cluster={where}",
            name,
        ),
        env=env,
    )
    path = kubeconfig_path()
    write_entry(path, entry)
    click.echo(f"Logged into Kubernetes cluster {name!r} of cluster {where!r}.")
    click.echo(f"kubectl's context is now {context!r} (in {path}); try `kubectl version`.")


@kube_group.command("logout")
@cluster_option("The Tether cluster of the Kubernetes cluster (default: every cluster).")
@click.argument("name", required=False, shell_complete=completer(_names))
def logout(cluster: str | None, name: str | None) -> None:
    """Remove the kubectl context of NAME, or every context tether kube login wrote for
    this proxy."""
    profile = require_profile()
    path = kubeconfig_path()
    names = None
    if name is not None:
        names = [context_name(_cluster(profile, cluster), name)]
    removed = remove_entries(path, profile.proxy, names)
    for context in removed:
        click.echo(f"Removed kubectl context {context!r} from {path}.")
    if not removed:
        click.echo("No kubectl context of Tether's " + (f"for {name!r}." if name else "to remove."))


@kube_group.command("credentials")
@click.option("--proxy", required=True, help="The proxy the context reaches.")
@cluster_option("The Tether cluster of the Kubernetes cluster.")
@click.argument("name")
def credentials(proxy: str, cluster: str | None, name: str) -> None:
    """Print kubectl's credentials for NAME: your login certificate, as an ExecCredential
    (kubectl runs this; you do not need to)."""
    profile = require_profile()
    if profile.proxy != proxy:
        raise TetherError(
            f"you are logged in to {profile.proxy}, and this kubectl context is for {proxy}",
            hint=f"run `tether login --proxy={proxy}`",
        )
    certificate = profile.tls_cert_file.read_text()
    expires = x509.load_pem_x509_certificate(certificate.encode()).not_valid_after_utc
    click.echo(
        json.dumps(
            {
                "apiVersion": EXEC_API_VERSION,
                "kind": "ExecCredential",
                "status": {
                    "clientCertificateData": certificate,
                    "clientKeyData": profile.tls_key_file.read_text(),
                    "expirationTimestamp": expires.astimezone(datetime.UTC).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                },
            }
        )
    )
