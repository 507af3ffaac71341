"""Users' logins with a password, the failed-login lockout around them, and the user
certificates every login ends with (single sign-on's too).

Separate from users (:mod:`tether.auth.users`), which changes who exists: a login only reads
that, through a connector, and issues certificates. The lockout is counted here, before a
connector sees the password, so that no connector can get it wrong.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from typing import Any

import attrs
import pluggy

from tether import audit, pki
from tether.auth import passwords
from tether.auth.context import AuthContext
from tether.auth.passwords import ATTEMPTS_PREFIX, PASSWORD_PREFIX
from tether.backend import Item, Op
from tether.connectors import IdentityConnector, LoginIdentity, PasswordConnector
from tether.durations import format_duration
from tether.errors import AccessDenied, AlreadyExists, CompareFailed, NotFound, TetherError
from tether.rbac import RoleSet
from tether.resources import Resource, resource_from_bytes

__all__ = ["KernelConnectorContext", "LoginResult", "Logins"]


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


@attrs.frozen
class LoginResult:
    """What a successful login returns to the client."""

    identity: pki.Identity
    ssh_cert: str
    tls_cert_pem: str
    tls_ca_pems: tuple[str, ...]
    ssh_host_ca_lines: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The answer of ``/webapi/login`` (and of a collected single sign-on login)."""
        return {
            "identity": self.identity.to_json(),
            "ssh_cert": self.ssh_cert,
            "tls_cert": self.tls_cert_pem,
            "tls_ca_certs": list(self.tls_ca_pems),
            "ssh_host_ca": list(self.ssh_host_ca_lines),
        }


class KernelConnectorContext:
    """What the kernel lets a connector do (:class:`tether.connectors.ConnectorContext`):
    read users, check a local user's password, reach the plugin manager. Nothing more: a
    connector never issues certificates or writes storage."""

    def __init__(self, ctx: AuthContext) -> None:
        self._ctx = ctx

    @property
    def pm(self) -> pluggy.PluginManager:
        return self._ctx.pm

    async def user(self, name: str) -> Resource | None:
        item = await self._ctx.backend.get(self._ctx.registry.get("user").key(name))
        return None if item is None else resource_from_bytes(item.value, self._ctx.registry)

    async def password_matches(self, name: str, password: str) -> bool:
        stored = await self._ctx.backend.get(PASSWORD_PREFIX + name)
        # a missing hash costs the same time as a check
        return await passwords.verify_password_in_worker(
            stored.value.decode() if stored else None, password
        )


class Logins:
    """Checks passwords through connectors, with the lockout, and issues user certificates."""

    def __init__(self, ctx: AuthContext, connectors: Mapping[str, IdentityConnector]) -> None:
        self._ctx = ctx
        self._connectors = connectors
        #: what connectors are handed (never this object, nor the service)
        self.connector_context = KernelConnectorContext(ctx)

    async def login_password(
        self,
        username: str,
        password: str,
        *,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None = None,
        connector_name: str = "local",
    ) -> LoginResult:
        """Check a password through a password connector and issue the user's certificates.

        Failures say "invalid user name or password" whichever was wrong; after
        ``failed_login_limit`` consecutive failures the name is locked for
        ``lockout_duration``, whether or not the user exists. Each attempt is counted before
        its password is checked (:meth:`_count_login_attempt`), so concurrent guesses lock
        the name as the same guesses one after another would.
        """
        connector = self._connectors.get(connector_name)
        if not isinstance(connector, PasswordConnector):
            known = (
                ", ".join(
                    sorted(
                        n for n, c in self._connectors.items() if isinstance(c, PasswordConnector)
                    )
                )
                or "none"
            )
            raise TetherError(
                f"no password connector named {connector_name!r}",
                hint=f"password connectors here: {known}",
            )
        counted = await self._count_login_attempt(username, connector_name)
        try:
            login = await connector.authenticate_password(
                self.connector_context, username, password
            )
        except AccessDenied:
            await self.audit_login_failure(
                username, connector_name, "invalid user name or password"
            )
            failed, locked_until = passwords.decode_attempts(counted.value)
            if locked_until is not None:
                await self._ctx.audit_event(
                    audit.USER_LOCKED,
                    username,
                    {
                        "method": connector_name,
                        "failed": failed,
                        "until": _utc(locked_until).isoformat(),
                    },
                    success=False,
                )
            raise AccessDenied("invalid user name or password") from None
        # A success resets the count, unless an attempt was counted since this one: that one
        # may still fail, and forgetting it would give a guesser racing the user free tries.
        with contextlib.suppress(CompareFailed, NotFound):
            await self._ctx.backend.apply(
                [Op.delete(counted.key, expected_revision=counted.revision)]
            )
        result = await self.issue_user_certs(
            login, ssh_public_key=ssh_public_key, tls_public_key_pem=tls_public_key_pem, ttl=ttl
        )
        await self._ctx.audit_event(
            audit.USER_LOGIN,
            username,
            {
                "method": connector_name,
                "roles": list(result.identity.roles),
                "expires": result.identity.expires.isoformat(),
            },
        )
        return result

    async def _count_login_attempt(self, username: str, connector_name: str) -> Item:
        """Count one password attempt at ``username`` before its password is checked.

        The count is written with compare-and-swap, so of N attempts at once each sees the
        ones before it: the attempt that reaches ``failed_login_limit`` writes the lock with
        its count (it is lifted by a success, see :meth:`login_password`) and the ones after
        it are refused without a check. A lock that has run out starts a fresh count.

        :returns: the counter as this attempt wrote it.
        :raises AccessDenied: the name is locked, saying until when and why.
        """
        cfg = self._ctx.config.auth_service
        backend = self._ctx.backend
        key = ATTEMPTS_PREFIX + username
        ttl = cfg.lockout_duration.total_seconds()
        while True:
            item = await backend.get(key)
            failed, locked_until = passwords.decode_attempts(item.value if item else None)
            now = self._ctx.clock()
            if locked_until is not None and locked_until > now:
                await self.audit_login_failure(username, connector_name, "account locked")
                raise AccessDenied(
                    f"too many failed logins: {username!r} is locked until "
                    f"{_utc(locked_until):%Y-%m-%d %H:%M:%S} UTC after {failed} failed logins "
                    "in a row",
                    hint="wait until then and try again; auth_service.failed_login_limit and "
                    "lockout_duration set the lock",
                )
            if locked_until is not None:  # the lock ran out: its failures are forgiven
                failed = 0
            failed += 1
            lock = now + ttl if failed >= cfg.failed_login_limit else None
            value = passwords.encode_attempts(failed, lock)
            try:
                if item is None:
                    return await backend.create(key, value, ttl=ttl)
                return await backend.compare_and_swap(
                    key, value, expected_revision=item.revision, ttl=ttl
                )
            except (AlreadyExists, CompareFailed, NotFound):
                continue  # another attempt was counted (or the count expired) meanwhile

    async def audit_login_failure(self, username: str, connector_name: str, reason: str) -> None:
        await self._ctx.audit_event(
            audit.USER_LOGIN_FAILED,
            username,
            {"method": connector_name, "reason": reason},
            success=False,
        )

    def session_ttl(self, roleset: RoleSet, ttl: datetime.timedelta | None) -> datetime.timedelta:
        """How long a user's certificates last: what they asked for (or the cluster's
        default), capped by their roles."""
        return min(ttl or self._ctx.config.auth_service.session_ttl, roleset.max_session_ttl())

    async def issue_user_certs(
        self,
        login: LoginIdentity,
        *,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None,
    ) -> LoginResult:
        """The SSH and X.509 certificates of a user who logged in, for their roles' logins
        and no longer than their roles allow."""
        ctx = self._ctx
        roles = login.roles
        traits = dict(login.traits)
        roleset = await ctx.roleset(roles)
        ttl_effective = self.session_ttl(roleset, ttl)
        identity = pki.Identity(
            username=login.username,
            cluster=ctx.cluster_name,
            roles=roles,
            traits=traits,
            logins=tuple(roleset.logins(traits)),
            expires=ctx.now() + ttl_effective,
            kind="user",
        )
        try:
            ssh_key = pki.load_public_key(ssh_public_key.encode())
            tls_key = pki.load_public_key(tls_public_key_pem.encode())
        except ValueError as exc:
            raise TetherError(f"login request carries an unusable public key: {exc}") from None
        ssh_cert = pki.issue_ssh_user_cert(
            ctx.authorities.ssh_user,
            ssh_key,
            identity,
            now=ctx.now(),
            permit_port_forwarding=roleset.port_forwarding(),
            permit_agent_forwarding=roleset.forward_agent(),
        )
        tls_cert = pki.issue_x509_cert(ctx.authorities.tls, tls_key, identity, now=ctx.now())
        await ctx.audit_event(
            audit.CERT_ISSUED,
            identity.username,
            {
                "logins": list(identity.logins),
                "roles": list(roles),
                "ttl": format_duration(ttl_effective),
            },
        )
        return LoginResult(
            identity=identity,
            ssh_cert=ssh_cert,
            tls_cert_pem=pki.cert_to_pem(tls_cert).decode(),
            tls_ca_pems=tuple(pki.cert_to_pem(c).decode() for c in ctx.trusted_tls_cas()),
            ssh_host_ca_lines=(ctx.authorities.ssh_host.public_key_line(),),
        )
