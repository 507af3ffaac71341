"""Hosts joining the cluster and renewing their certificates: nodes and proxies with a token,
services in auth's own process without one, and renewals proved by the current certificate.

Separate from users' logins: a host's certificates name its host id and addresses, and for a
node its host roles (Teleport's system roles: what its token allowed it to serve, see
:mod:`tether.token_types`), never a user's roles; who may hold a host id is decided by
:mod:`tether.auth.host_ids`. A host names itself, except for wildcards and the route names
under :data:`~tether.route_names.ROUTE_NAME_SUFFIX`: clients that route by server name
(kubectl) trust whatever the cluster's CA signed for those, so only a proxy gets one, the
wildcard :data:`~tether.route_names.ROUTE_NAME_WILDCARD`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from cryptography import x509

from tether import pki
from tether.auth.context import AuthContext
from tether.auth.host_ids import HOST_ID, HostIds, host_keys
from tether.auth.tokens import Tokens
from tether.backend import Item
from tether.errors import AccessDenied, TetherError
from tether.route_names import ROUTE_NAME_SUFFIX, ROUTE_NAME_WILDCARD, is_route_domain
from tether.token_types import LEGACY_NODE_ROLES, host_roles, token_types

__all__ = ["JOIN_ROLES", "JoinResult", "Joins"]

#: what may join a cluster with a token, and the token role each needs
JOIN_ROLES = {"node": "Node", "proxy": "Proxy"}


@attrs.frozen
class JoinResult:
    """What a node or proxy that joined receives: its certificates and the cluster's CAs."""

    identity: pki.Identity
    ssh_host_cert: str
    tls_cert_pem: str
    tls_ca_pems: tuple[str, ...]
    ssh_user_ca_lines: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]


def _check_host(role: str, host_id: str) -> None:
    """Refuse a kind no host joins as, and a host id that is not one."""
    if role not in JOIN_ROLES:
        raise TetherError(f"cannot join as {role!r}", hint="join as node or proxy")
    if not HOST_ID.match(host_id):
        raise TetherError(
            f"host id {host_id!r} is not valid",
            hint="use letters, digits, dots, dashes and underscores",
        )


def _check_names(role: str, names: Sequence[str]) -> None:
    """Refuse the names a host of kind ``role`` may not have in its certificates: a wildcard,
    or a name under the route domain, but a proxy's route wildcard.

    :raises AccessDenied: one such name, said with why.
    """
    for name in names:
        if role == "proxy" and name == ROUTE_NAME_WILDCARD:
            continue
        if is_route_domain(name):
            raise AccessDenied(
                f"a {role} may not be named {name!r}: names under {ROUTE_NAME_SUFFIX} are the "
                "proxies' route names, which clients that route by server name trust",
                hint="name the host by its own names and addresses",
            )
        if "*" in name:
            raise AccessDenied(
                f"a {role} may not have the wildcard name {name!r}",
                hint="name the host by its own names and addresses",
            )


def _public_keys(
    ssh_public_key: str, tls_public_key_pem: str
) -> tuple[pki.SubjectPublicKey, pki.SubjectPublicKey]:
    """The SSH and TLS public keys a host asks certificates for.

    :raises TetherError: one is no public key.
    """
    try:
        return (
            pki.load_public_key(ssh_public_key.encode()),
            pki.load_public_key(tls_public_key_pem.encode()),
        )
    except ValueError as exc:
        raise TetherError(f"join request carries an unusable public key: {exc}") from None


class Joins:
    """Issues hosts their certificates: on joining, in auth's process, and on renewal."""

    def __init__(
        self,
        ctx: AuthContext,
        *,
        tokens: Tokens,
        host_ids: HostIds,
        verify_client: Callable[[bytes | x509.Certificate], pki.Identity],
    ) -> None:
        self._ctx = ctx
        self._tokens = tokens
        self._host_ids = host_ids
        self._verify_client = verify_client
        #: the roles a node may ask for: those of the token types that are host roles
        self._host_roles = {t.role: t.name for t in token_types(ctx.pm).values() if t.host_role}

    def _asked_roles(self, role: str, roles: Sequence[str] | None) -> tuple[str, ...]:
        """The host roles a host of kind ``role`` asks for, checked: a node asks for host
        roles only (none: it is an agent from before host roles, which served ``Node``); a
        proxy asks for none."""
        if role != "node":
            if roles:
                raise TetherError(
                    f"a {role} joins with no host roles, not {', '.join(roles)}",
                    hint="host roles are for nodes (tetherd start --roles=node,...)",
                )
            return ()
        if not roles:
            return LEGACY_NODE_ROLES
        unknown = [r for r in roles if r not in self._host_roles]
        if unknown:
            known = ", ".join(sorted(self._host_roles)) or "none"
            raise TetherError(
                f"cannot join a host as {', '.join(unknown)}: no installed plugin declares "
                "that host role",
                hint=f"the host roles here are {known}; install the same plugins as the host",
            )
        return tuple(sorted(set(roles)))

    async def join(
        self,
        token: str,
        *,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
        roles: Sequence[str] | None = None,
    ) -> JoinResult:
        """Let a node or proxy join with a token: issue its SSH host certificate and its X.509
        certificate (identity kind ``role``), and hand it the CAs it must trust.

        The token lets the joiner choose its host id, but not one another host holds (until
        that host's certificates expire): the id is what its inventory entry, its tunnel and
        its SSH host certificate are known by. A host that holds the id may send its join
        again with the same public keys, when the answer to the first was lost (see
        :meth:`tether.auth.host_ids.HostIds.holder` for why that gives nothing away).

        A node names the host roles it asks for (``roles``: those of the protocols it runs);
        the token must carry every one, and the certificate then carries them
        (``Identity.roles``). A node that names none asks for ``Node``, as every node did
        before host roles.
        """
        _check_host(role, host_id)
        try:
            asked = self._asked_roles(role, roles)
            if role == "node":
                await self._tokens.check_host_token(token, asked)
            else:
                await self._tokens.check_token(token, JOIN_ROLES[role])
            keys = host_keys(*_public_keys(ssh_public_key, tls_public_key_pem))
            held = await self._host_ids.holder(host_id, kind=role, keys=keys)
            return await self._admit(
                role,
                asked,
                host_id,
                hostname,
                addresses,
                ssh_public_key,
                tls_public_key_pem,
                replaces=held,
            )
        except AccessDenied as exc:
            fields = {"role": role, "host_roles": list(roles or ()), "reason": exc.message}
            await self._ctx.audit_event("host.join.failed", host_id, fields, success=False)
            raise

    async def issue_host_identity(
        self,
        *,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
        roles: Sequence[str] | None = None,
    ) -> JoinResult:
        """Issue a host's certificates without a token: for a service in this auth's own
        process (``ssh_service.enabled`` beside ``auth_service``), which needs no proof. A
        node gets the host roles ``roles`` (those of the protocols it runs).

        The SSH host certificate names the host id, the host name and addresses, and both
        names qualified by the cluster (``web-1.main``), which is what OpenSSH checks when a
        user runs ``ssh visitor@web-1.main`` with ``tether config``'s configuration.
        """
        _check_host(role, host_id)
        return await self._admit(
            role,
            self._asked_roles(role, roles),
            host_id,
            hostname,
            addresses,
            ssh_public_key,
            tls_public_key_pem,
            replaces=True,
        )

    async def renew_host_identity(
        self,
        certificate: bytes,
        *,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
        roles: Sequence[str] | None = None,
        token: str | None = None,
    ) -> JoinResult:
        """Issue new certificates to a joined host that proves itself with its current, still
        valid one (DER): same host id and kind, new key, a full ``host_cert_ttl``. Hosts call
        this once two thirds of their certificate's lifetime have passed.

        The names asked for must be among those of the current certificate: a renewal never
        widens what a host may claim to be (joining again with a token does), but for a
        proxy's route wildcard, which every proxy has and one that joined before route names
        existed gains here. Its host roles are the current certificate's (for a node from
        before host roles, ``Node``), or ``roles`` when given: a node that now runs protocols
        of more host roles renews with a token that carries every role it asks for (it keeps
        its host id, which it proves it holds); fewer roles need no token.
        """
        identity = self._verify_client(certificate)
        if identity.kind not in JOIN_ROLES or identity.cluster != self._ctx.cluster_name:
            raise AccessDenied(
                f"{identity.kind} {identity.username!r} of cluster {identity.cluster!r} has no "
                "host certificates to renew here",
                hint="only this cluster's nodes and proxies renew theirs",
            )
        held = pki.x509_host_names(certificate)
        if identity.kind == "proxy":
            held |= {ROUTE_NAME_WILDCARD}
        beyond = {hostname, *addresses} - held
        if beyond:
            raise AccessDenied(
                f"{identity.kind} {identity.username!r} asks to renew for names its certificate "
                f"does not hold: {', '.join(sorted(beyond))}",
                hint="a host renews for the names it joined with; to change them, join again "
                "with a token",
            )
        granted = await self._renewed_roles(identity, roles, token)
        result, principals = self._issue_host_certs(
            identity.kind,
            granted,
            identity.username,
            hostname,
            addresses,
            ssh_public_key,
            tls_public_key_pem,
        )
        fields = {
            "role": identity.kind,
            "host_roles": list(result.identity.roles),
            "hostname": hostname,
            "addresses": principals,
            "expires": result.identity.expires.isoformat(),
        }
        keys = host_keys(*_public_keys(ssh_public_key, tls_public_key_pem))
        async with self._ctx.audited(identity.username, [("host.renewed", fields)]):
            await self._hold(result, hostname, keys, replaces=True)
        return result

    async def _renewed_roles(
        self, identity: pki.Identity, roles: Sequence[str] | None, token: str | None
    ) -> tuple[str, ...]:
        """The host roles a renewal issues: the certificate's, or ``roles`` when asked, with
        a token carrying all of them when they go beyond the certificate's (refusal audited
        as ``host.join.failed``)."""
        current = host_roles(identity)
        if roles is None:
            return current
        asked = self._asked_roles(identity.kind, roles)
        beyond = [r for r in asked if r not in current]
        if not beyond:
            return asked
        try:
            if not token:
                raise AccessDenied(
                    f"{identity.kind} {identity.username!r} asks for host roles its certificate "
                    f"does not carry: {', '.join(beyond)}",
                    hint="pass --token with a token for everything the host serves",
                )
            await self._tokens.check_host_token(token, asked)
        except AccessDenied as exc:
            fields = {"role": identity.kind, "host_roles": list(asked), "reason": exc.message}
            await self._ctx.audit_event(
                "host.join.failed", identity.username, fields, success=False
            )
            raise
        return asked

    async def _admit(
        self,
        role: str,
        roles: Sequence[str],
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
        *,
        replaces: Item | bool | None,
    ) -> JoinResult:
        """Issue a joining host its certificates, hold its id for it (``replaces`` as for
        :meth:`_hold`) and audit ``host.joined``."""
        result, principals = self._issue_host_certs(
            role, roles, host_id, hostname, addresses, ssh_public_key, tls_public_key_pem
        )
        fields = {"role": role, "host_roles": list(roles), "hostname": hostname}
        joined = ("host.joined", {**fields, "addresses": principals})
        keys = host_keys(*_public_keys(ssh_public_key, tls_public_key_pem))
        async with self._ctx.audited(host_id, [joined]):
            await self._hold(result, hostname, keys, replaces=replaces)
        return result

    async def _hold(
        self,
        result: JoinResult,
        hostname: str,
        keys: dict[str, str],
        *,
        replaces: Item | bool | None,
    ) -> None:
        """Record that the host ``result`` was issued to (for the public keys ``keys``) holds
        its id until its certificates expire (see :meth:`tether.auth.host_ids.HostIds.hold`
        for ``replaces``)."""
        identity = result.identity
        await self._host_ids.hold(
            identity.username, identity.kind, hostname, identity.expires, replaces, keys
        )

    def _issue_host_certs(
        self,
        role: str,
        roles: Sequence[str],
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
    ) -> tuple[JoinResult, list[str]]:
        """The host's certificates (identity kind ``role``, carrying host roles ``roles``) and
        the SSH principals they name.

        :raises AccessDenied: a name the host may not have (:func:`_check_names`); checked
            here, on every join and renewal, so a certificate issued before the rule keeps no
            such name past its renewal.
        """
        _check_names(role, [hostname, *addresses])
        ctx = self._ctx
        ssh_key, tls_key = _public_keys(ssh_public_key, tls_public_key_pem)
        ttl = ctx.config.auth_service.host_cert_ttl
        identity = pki.Identity(
            username=host_id,
            cluster=ctx.cluster_name,
            roles=tuple(roles),
            traits={},
            logins=(),
            expires=ctx.now() + ttl,
            kind=role,
        )
        ips, names = pki.split_host_addresses([hostname, *addresses])
        tls_cert = pki.issue_x509_cert(
            ctx.authorities.tls,
            tls_key,
            identity,
            dns_names=names,
            ip_addresses=ips,
            server=True,
            now=ctx.now(),
        )
        qualified = [f"{host_id}.{ctx.cluster_name}", f"{hostname}.{ctx.cluster_name}"]
        # the route wildcard is for TLS server names; OpenSSH would read it as a pattern
        ssh_names = [a for a in addresses if a != ROUTE_NAME_WILDCARD]
        principals = list(dict.fromkeys([host_id, hostname, *qualified, *ssh_names]))
        ssh_cert = pki.issue_ssh_host_cert(
            ctx.authorities.ssh_host,
            ssh_key,
            host_id=host_id,
            principals=principals,
            cluster=ctx.cluster_name,
            ttl=ttl,
            now=ctx.now(),
        )
        result = JoinResult(
            identity=identity,
            ssh_host_cert=ssh_cert,
            tls_cert_pem=pki.cert_to_pem(tls_cert).decode(),
            tls_ca_pems=tuple(pki.cert_to_pem(c).decode() for c in ctx.trusted_tls_cas()),
            ssh_user_ca_lines=(ctx.authorities.ssh_user.public_key_line(),),
            ssh_host_ca_lines=(ctx.authorities.ssh_host.public_key_line(),),
        )
        return result, principals
