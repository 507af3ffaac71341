"""``tetherctl auth``: the cluster's certificate authorities, whose public keys ``export`` prints
for OpenSSH and TLS tools and with which ``sign`` signs servers' certificates.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import click

from tether import pki
from tether.auth.http_client import AuthClient
from tether.cert_authority_types import KERNEL_CA_TYPES, CertAuthorityType, cert_authority_types
from tether.cli._common import configured_disabled, plugin_manager, run_async
from tether.cli._ctl_target import config_path, connect, kind_registry
from tether.durations import format_duration, parse_duration
from tether.errors import TetherError
from tether.resources import CertAuthoritySpec, KindRegistry, resource_from_dict

__all__ = ["CA_TYPES", "auth_group", "describe_ca_types"]


@click.group("auth")
def auth_group() -> None:
    """The cluster's certificate authorities: export their public keys, sign servers'
    certificates with the CAs plugins declare."""


# `tetherctl auth` is the kernel's, so that several plugins can each add a subcommand beside
# `export` with tether.api.shared_group, as with `tether proxy`.

#: The kernel's CA types of ``auth export --type``, in the order it prints them without one;
#: the types plugins declare (``tether_cert_authorities``) are added to the choices by
#: :func:`main`.
CA_TYPES = KERNEL_CA_TYPES


def _ca_types(ctx: click.Context) -> Mapping[str, CertAuthorityType]:
    """The CA types the plugins installed here declare."""
    return cert_authority_types(plugin_manager(configured_disabled(config_path(ctx))))


@auth_group.command("export")
@click.option(
    "--type",
    "ca_type",
    type=click.Choice(CA_TYPES),
    help="user: lines for the file sshd_config's TrustedUserCAKeys names; host: "
    "@cert-authority lines for known_hosts; tls: the X.509 CA certificate in PEM (one CA "
    "signs hosts' and users' TLS certificates, so there is no tls-host or tls-user); a type "
    "a plugin declares: its X.509 CA certificate in PEM. Default: user, host and tls.",
)
@click.option(
    "--cluster",
    help="Whose CAs: this cluster (default), or a trusted root or leaf whose CAs it holds.",
)
@click.option(
    "--fingerprint",
    is_flag=True,
    help="Print each key's SHA256 fingerprint instead: OpenSSH's for user and host "
    "(what ssh-keygen -l shows), the CA pin for tls (what --ca-pin takes).",
)
@click.pass_context
@run_async
async def auth_export(
    ctx: click.Context, ca_type: str | None, cluster: str | None, fingerprint: bool
) -> None:
    """Print the CAs' public keys for OpenSSH and TLS tools (tctl auth export).

    \b
    tetherctl auth export --type=user > /etc/ssh/tether_user_ca.pub
        and in sshd_config: TrustedUserCAKeys /etc/ssh/tether_user_ca.pub
        (sshd then accepts the SSH certificates `tether login` issues)
    tetherctl auth export --type=host >> ~/.ssh/known_hosts
        (ssh then trusts the host certificates of the cluster's nodes)
    tetherctl auth export --type=tls > tether-ca.pem

    The keys a CA signs with and, during a rotation, the keys it still trusts
    (additional_trusted_keys) are all printed.
    """
    registry = kind_registry(ctx)
    async with connect(ctx).client as client:
        own = str((await client.cluster())["name"])
        cluster = cluster or own
        docs = await client.get_resources("cert_authority")
        cas = [resource_from_dict(doc, registry) for doc in docs]
        held = {ca.spec.cluster_name for ca in cas}
        if cluster not in held:
            raise TetherError(
                f"cluster {cluster!r} is neither this cluster nor one whose CAs it holds; "
                f"known clusters: {', '.join(sorted(held | {own}))}"
            )
        if cluster != own:
            await _check_trust_enabled(client, registry, cluster)
    specs = {ca.spec.type: ca.spec for ca in cas if ca.spec.cluster_name == cluster}
    wanted = (ca_type,) if ca_type else CA_TYPES
    if ca_type and ca_type not in specs:
        raise TetherError(
            f"this cluster holds no {ca_type} CA of cluster {cluster!r}; it holds: "
            f"{', '.join(specs)}"
        )
    for name in wanted:
        if name in specs:
            click.echo(_export_lines(specs[name], fingerprint), nl=False)


@auth_group.command("sign")
@click.option(
    "--format",
    "fmt",
    required=True,
    help="What the files are for; the formats come from the CA types plugins declare.",
)
@click.option(
    "--host",
    required=True,
    help="The server's names and IP addresses, comma-separated, as its clients reach it; "
    "the first is also its common name.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=pathlib.Path),
    help="Prefix of the files written: PREFIX.crt, PREFIX.key (mode 0600), PREFIX.cas.",
)
@click.option("--ttl", help="How long the certificate is valid; default: the most the CA signs.")
@click.pass_context
@run_async
async def auth_sign(
    ctx: click.Context, fmt: str, host: str, out: pathlib.Path, ttl: str | None
) -> None:
    """Sign a server's certificate with a CA a plugin declares (tctl auth sign).

    \b
    tetherctl auth sign --format=db --host=db.example.com --out=server --ttl=2190h
        writes server.crt (signed by the cluster's db CA), server.key, and server.cas
        (the CA certificates the server trusts for its clients), for the server's
        TLS settings.

    A new key is generated here and never leaves this machine; auth signs its public half.
    """
    types = _ca_types(ctx)
    by_format = {t.sign_format: t for t in types.values() if t.sign_format}
    ca_type = by_format.get(fmt)
    if ca_type is None:  # with formats declared, click refused it already
        raise click.BadParameter(
            f"no plugin installed here declares the format {fmt!r} (declared: "
            f"{', '.join(by_format) or 'none'}); install the plugin that does",
            param_hint="--format",
        )
    try:
        ttl_delta = parse_duration(ttl) if ttl else ca_type.max_ttl
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    if not hosts:
        raise click.BadParameter("name at least one host name or address", param_hint="--host")
    if not out.parent.is_dir():
        raise TetherError(
            f"cannot write {out}.crt: directory {out.parent} does not exist",
            hint="create it, or pass another --out",
        )
    ips, names = pki.split_host_addresses(hosts)
    key = pki.generate_private_key(pki.WEB_ALGORITHM)
    async with connect(ctx).client as client:
        cluster = str((await client.cluster())["name"])
        signed = await client.sign_certificate(
            ca_type.name,
            key.public_key(),
            hosts[0],
            usage="server",
            ttl=ttl_delta,
            dns_names=names,
            ip_addresses=ips,
        )
        trusted: list[str] = []
        for name in ca_type.format_trusts:
            trusted += await client.authority_certificates(name, cluster)
    paths = {suffix: out.with_name(f"{out.name}.{suffix}") for suffix in ("crt", "key", "cas")}
    pki.write_secret_file(paths["key"], pki.private_key_to_pem(key))
    pki.write_secret_file(paths["crt"], signed.certificate.encode(), mode=0o644)
    cas = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in trusted)
    pki.write_secret_file(paths["cas"], cas.encode(), mode=0o644)
    click.echo(
        f"Wrote {paths['crt']} (signed by the {ca_type.name} CA of {cluster}, valid "
        f"{format_duration(ttl_delta)}), {paths['key']} and {paths['cas']}"
        + (f" (the {', '.join(ca_type.format_trusts)} CA)" if ca_type.format_trusts else "")
        + "."
    )


async def _check_trust_enabled(client: AuthClient, registry: KindRegistry, cluster: str) -> None:
    """:raises TetherError: ``cluster`` is a root whose trusted_cluster is disabled, which
    deactivates its CAs here."""
    for doc in await client.get_resources("trusted_cluster"):
        trusted = resource_from_dict(doc, registry)
        if trusted.metadata.name == cluster and not trusted.spec.enabled:
            raise TetherError(
                f"the trust in root cluster {cluster!r} is disabled, so its CAs are not "
                f"active here; set enabled: true in trusted_cluster/{cluster} to export them"
            )


def _export_lines(spec: CertAuthoritySpec, fingerprint: bool) -> str:
    """One CA's active and additional trusted keys, in the form its users' tools read."""
    if spec.type not in ("user", "host"):  # tls, and the X.509 CAs plugins declare
        pems = dict.fromkeys((*spec.active_keys.tls, *spec.additional_trusted_keys.tls))
        if fingerprint:
            return "".join(
                f"{spec.type} {pki.ca_pin(pki.load_cert(pem.encode()))}\n" for pem in pems
            )
        return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems)
    lines = dict.fromkeys(
        line.strip() for line in (*spec.active_keys.ssh, *spec.additional_trusted_keys.ssh)
    )
    if fingerprint:
        return "".join(f"{spec.type} {pki.ssh_fingerprint(line)}\n" for line in lines)
    if spec.type == "host":
        return "".join(pki.known_hosts_ca_line(line, spec.cluster_name) + "\n" for line in lines)
    # TrustedUserCAKeys takes bare key lines, one per line (sshd_config(5)), not the
    # authorized_keys form `cert-authority KEY` that tctl prints for --type=user
    return "".join(line + "\n" for line in lines)


def describe_ca_types(types: Mapping[str, CertAuthorityType]) -> None:
    """Offer the CA types plugins declare to ``auth export --type`` and their formats to
    ``auth sign --format``; auth checks them against its own list."""
    for param in auth_export.params:
        if param.name == "ca_type" and isinstance(param, click.Option):
            param.type = click.Choice((*CA_TYPES, *types))
    formats = {t.sign_format: t for t in types.values() if t.sign_format}
    for param in auth_sign.params:
        if param.name == "fmt" and isinstance(param, click.Option):
            if formats:  # else the command says that no plugin declares one
                param.type = click.Choice(tuple(formats))
            described = "; ".join(
                f"{name}: a server's certificate signed by the {t.name} CA ({t.description})"
                for name, t in formats.items()
            )
            param.help = f"What the files are for: {described or 'no plugin declares a format'}."
