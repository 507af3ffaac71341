"""Single sign-on logins, as the auth service runs them: started by a client, completed by the
identity provider's callback, collected once by the client that started them.

Separate from password logins (:mod:`tether.auth.login`), whose certificates it reuses: this
job stores the logins in flight and their outcomes, and holds the checks every redirect
connector relies on (:mod:`tether.auth.sso_flows` has the pure values and checks).
"""

from __future__ import annotations

import datetime
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from tether import audit, pki
from tether.auth import sso_flows
from tether.auth.context import AuthContext
from tether.auth.login import LoginResult, Logins
from tether.auth.users import created_by_connector
from tether.backend import Item, Op
from tether.connectors import (
    ExternalIdentity,
    IdentityConnector,
    LoginIdentity,
    PasswordConnector,
    RedirectConnector,
)
from tether.errors import AccessDenied, NotFound, TetherError
from tether.resources import Resource, resource_from_bytes, resource_to_bytes

__all__ = ["SSO_REQUEST_PREFIX", "SSO_RESULT_PREFIX", "SingleSignOn"]

log = logging.getLogger(__name__)

#: single sign-on logins in flight (by state) and their outcomes (by id), both expiring
SSO_REQUEST_PREFIX = "/secrets/sso/requests/"
SSO_RESULT_PREFIX = "/secrets/sso/results/"


def _requested_ttl(request: sso_flows.SSORequest) -> datetime.timedelta | None:
    """The certificate lifetime a single sign-on client asked for, if it did."""
    return datetime.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None


class SingleSignOn:
    """Begins, completes and hands out single sign-on logins through redirect connectors."""

    def __init__(
        self,
        ctx: AuthContext,
        connectors: Mapping[str, IdentityConnector],
        *,
        logins: Logins,
    ) -> None:
        self._ctx = ctx
        self._connectors = connectors
        self._logins = logins

    async def _redirect_connector(self, name: str) -> tuple[RedirectConnector, Resource]:
        """The redirect connector whose resource is called ``name``, and that resource."""
        ctx = self._ctx
        found = []
        for connector in self._connectors.values():
            if not isinstance(connector, RedirectConnector):
                continue
            kind = ctx.registry.get(connector.name)
            item = await ctx.backend.get(kind.key(name))
            if item is not None:
                found.append((connector, resource_from_bytes(item.value, ctx.registry)))
        if len(found) > 1:  # users name a connector by its name alone: it must be unique
            kinds = " and ".join(f"{c.name}/{name}" for c, _ in found)
            raise TetherError(
                f"connector name {name!r} is ambiguous ({kinds})",
                hint="rename one of them with tetherctl",
            )
        if found:
            return found[0]
        raise NotFound(
            f"no single sign-on connector is called {name!r}",
            hint="`tetherctl get connectors` lists them; `--auth=local` logs in with a password",
        )

    async def list_connectors(self) -> list[dict[str, str]]:
        """Every way to log in here, by name: ``{"name", "type"}``, where ``type`` is
        ``password`` or a redirect connector's resource kind (``oidc``). Names and types only:
        a client needs them to choose a login flow before the user is known."""
        ctx = self._ctx
        found = []
        for connector in self._connectors.values():
            if isinstance(connector, RedirectConnector):
                kind = ctx.registry.get(connector.name)
                for item in await ctx.backend.range(kind.storage_prefix):
                    res = resource_from_bytes(item.value, ctx.registry)
                    found.append({"name": res.metadata.name, "type": connector.name})
            elif isinstance(connector, PasswordConnector):
                found.append({"name": connector.name, "type": "password"})
        return sorted(found, key=lambda c: (c["type"] != "password", c["name"]))

    async def begin_sso(
        self,
        connector_name: str,
        *,
        client_redirect_url: str,
        client_secret_hash: str,
        ssh_public_key: str,
        tls_public_key_pem: str,
        ttl: datetime.timedelta | None = None,
    ) -> tuple[str, str]:
        """Start a single sign-on login; returns its id and the URL to send the browser to.

        The login is stored, one-time, under its random ``state`` until the provider calls
        back or :data:`tether.auth.sso_flows.REQUEST_TTL` passes.
        """
        connector, resource = await self._redirect_connector(connector_name)
        try:  # refuse unusable keys now, not after the user went through the provider
            pki.load_public_key(ssh_public_key.encode())
            pki.load_public_key(tls_public_key_pem.encode())
        except ValueError as exc:
            raise TetherError(f"login request carries an unusable public key: {exc}") from None
        request = sso_flows.new_request(
            connector_kind=connector.name,
            connector_name=resource.metadata.name,
            client_redirect_url=client_redirect_url,
            client_secret_hash=client_secret_hash,
            ssh_public_key=ssh_public_key,
            tls_public_key=tls_public_key_pem,
            ttl_seconds=ttl.total_seconds() if ttl else None,
            now=self._ctx.clock(),
        )
        url = await connector.login_url(self._logins.connector_context, resource, request)
        await self._ctx.backend.put(
            SSO_REQUEST_PREFIX + request.state,
            json.dumps(request.to_json()).encode(),
            ttl=sso_flows.REQUEST_TTL.total_seconds(),
        )
        return request.id, url

    async def complete_sso(self, params: Mapping[str, str]) -> sso_flows.Approval | str:
        """Finish a login from the provider's callback: what the browser is to approve, or,
        for a refused login, where to send the browser (the client, to collect the refusal).

        The state is spent first, so a replayed callback finds nothing. Whatever happens
        after that, success or refusal, is kept for the client to collect under a one-time
        code minted here, which only the browser carries on to the client's loopback
        listener. Certificates are issued when the client collects, not before.

        :raises AccessDenied: no login in flight has this state (unknown, expired or used).
        """
        ctx = self._ctx
        state = params.get("state") or params.get("RelayState") or ""
        key = SSO_REQUEST_PREFIX + state
        item = await ctx.backend.get(key) if state else None
        # delete() is the atomic step: of two identical callbacks only one gets True
        if item is None or not await ctx.backend.delete(key):
            await ctx.audit_event(
                audit.USER_LOGIN_FAILED,
                "",
                {"method": "sso", "reason": "unknown, expired or already used login state"},
                success=False,
            )
            raise AccessDenied(
                "this login is unknown, expired or already used",
                hint="run `tether login --auth=...` again",
            )
        request = sso_flows.SSORequest.from_json(json.loads(item.value))
        method = request.method
        code = sso_flows.new_code()
        outcome: dict[str, Any] = {
            "request": request.to_json(),
            "client_secret_hash": request.client_secret_hash,
            "code_hash": sso_flows.hash_code(code),
        }
        approval: sso_flows.Approval | None = None
        try:
            if ctx.clock() > request.expires:
                raise AccessDenied("the login took too long; it expired")
            external, roles = await self._verify_sso(request, params)
            roleset = await ctx.roleset(roles)
            certificate_ttl = self._logins.session_ttl(roleset, _requested_ttl(request))
        except (AccessDenied, TetherError) as exc:
            await self._logins.audit_login_failure("", method, exc.message)
            outcome |= {"error": exc.message, "hint": exc.hint}
        else:
            outcome |= {"identity": external.to_json(), "roles": list(roles)}
            approval = sso_flows.Approval(
                request_id=request.id,
                username=external.username,
                method=method,
                roles=roles,
                cluster=ctx.cluster_name,
                client=request.client_address(),
                certificate_ttl_seconds=certificate_ttl.total_seconds(),
                expires=ctx.clock() + sso_flows.RESULT_TTL.total_seconds(),
                redirect=request.client_redirect(code),
            )
        await ctx.backend.put(
            SSO_RESULT_PREFIX + request.id,
            json.dumps(outcome).encode(),
            ttl=sso_flows.RESULT_TTL.total_seconds(),
        )
        return approval or request.client_redirect(code)

    async def _verify_sso(
        self, request: sso_flows.SSORequest, params: Mapping[str, str]
    ) -> tuple[ExternalIdentity, tuple[str, ...]]:
        """Who the provider's callback says logged in, and their roles; refuses what the
        certificates would be refused for."""
        connector, resource = await self._redirect_connector(request.connector_name)
        if connector.name != request.connector_kind:
            raise AccessDenied(f"connector {request.connector_name!r} changed during the login")
        method = request.method
        context = self._logins.connector_context
        try:
            external = await connector.complete(context, resource, request, params)
            roles = connector.claim_rules.roles(self._ctx.pm, resource, external)
        except TetherError:
            raise
        except Exception as exc:  # a connector's bug must not leave the user waiting
            log.exception("connector %s failed to complete a login", method)
            raise TetherError(f"connector {method!r} failed: {exc!r}") from None
        if external.nonce is not None and not hmac.compare_digest(external.nonce, request.nonce):
            raise AccessDenied("the identity provider's answer is for another login (nonce)")
        if not roles:
            raise AccessDenied(
                f"no role is mapped to {external.username!r} by connector {method!r}",
                hint="the connector's claims_to_roles (or equivalent) decides",
            )
        await self._sso_user_record(external.username, method)
        return external, roles

    async def _sso_user_record(self, username: str, method: str) -> Item | None:
        """The stored user ``username``, if any, which a login through ``method`` replaces.

        :raises AccessDenied: it is a local user, whose name a provider's user never takes.
        """
        ctx = self._ctx
        existing = await ctx.backend.get(ctx.registry.get("user").key(username))
        if existing is not None and not created_by_connector(
            resource_from_bytes(existing.value, ctx.registry)
        ):
            raise AccessDenied(
                f"a local user {username!r} already exists; a login through "
                f"connector {method!r} cannot take its name",
                hint=f"remove the local user (`tetherctl users rm {username}`) if "
                "the same person now signs in through the provider",
            )
        return existing

    async def _issue_sso(
        self,
        request: sso_flows.SSORequest,
        external: ExternalIdentity,
        roles: tuple[str, ...],
    ) -> LoginResult:
        """The certificates of a login the browser approved and its client collected."""
        ctx = self._ctx
        method = request.method
        existing = await self._sso_user_record(external.username, method)
        login = LoginIdentity(username=external.username, roles=roles, traits=external.claims)
        result = await self._logins.issue_user_certs(
            login,
            ssh_public_key=request.ssh_public_key,
            tls_public_key_pem=request.tls_public_key,
            ttl=_requested_ttl(request),
        )
        # the user is kept while the certificate lasts, as Teleport keeps SSO users: listed by
        # `tetherctl get users`, and the name stays the provider's (a local user can't take
        # it). Conditional on what was read above: a local user created meanwhile wins, and
        # the certificates just issued are then never handed out.
        user = ctx.make(
            "user",
            external.username,
            {
                "roles": list(roles),
                "traits": {k: list(v) for k, v in external.claims.items()},
                "created_by": {
                    "time": ctx.now().isoformat(),
                    "connector": {
                        "type": request.connector_kind,
                        "id": request.connector_name,
                        "identity": external.subject,
                    },
                },
            },
            expires=result.identity.expires,
        )
        lifetime = (result.identity.expires - ctx.now()).total_seconds()
        await ctx.backend.apply(
            [
                Op.put(
                    ctx.registry.get("user").key(external.username),
                    resource_to_bytes(user),
                    ttl=max(lifetime, 1.0),
                    expected_revision=existing.revision if existing is not None else 0,
                )
            ]
        )
        await ctx.audit_event(
            audit.USER_LOGIN,
            external.username,
            {
                "method": method,
                "subject": external.subject,
                "roles": list(roles),
                "expires": result.identity.expires.isoformat(),
            },
        )
        return result

    async def collect_sso(self, request_id: str, client_secret: str, code: str) -> dict[str, Any]:
        """The outcome of a login, once, for the client that started it and received its
        one-time code from the browser that approved it.

        A client that started the login but brings no code, or a wrong one, is the one who
        shared the login's link, or an old client: the login is void (audited), whoever
        signed in.

        :raises AccessDenied: unknown or already collected, another client's secret, no code
            or a wrong one, or the login was refused (with the reason).
        """
        backend = self._ctx.backend
        key = SSO_RESULT_PREFIX + request_id
        item = await backend.get(key) if request_id else None
        if item is None:
            raise AccessDenied("no login result is waiting under this id (expired or collected)")
        outcome = json.loads(item.value)
        request = sso_flows.SSORequest.from_json(outcome["request"])
        method = request.method
        if not hmac.compare_digest(
            sso_flows.hash_client_secret(client_secret), str(outcome["client_secret_hash"])
        ):
            # the login stands for its own client; the stranger's try is on the record
            await self._logins.audit_login_failure(
                "", method, "a client without this login's secret tried to collect it"
            )
            raise AccessDenied("this login was started by another client")
        if not hmac.compare_digest(sso_flows.hash_code(code), str(outcome["code_hash"])):
            await backend.delete(key)  # one try: the login is void for everyone
            username = str(outcome.get("identity", {}).get("username", ""))
            await self._logins.audit_login_failure(
                username,
                method,
                "collected without the one-time code the browser delivers to the client's "
                f"loopback address {request.client_address()} (a shared login link?)",
            )
            raise AccessDenied(
                "this login was not approved in a browser for this client: the one-time code "
                "from the browser is missing or wrong",
                hint=f"run `tether login --auth={request.connector_name}` again (a tether "
                "client as new as the cluster) and approve in a browser on the computer it runs on",
            )
        if not await backend.delete(key):
            raise AccessDenied("no login result is waiting under this id (expired or collected)")
        if "error" in outcome:
            raise AccessDenied(str(outcome["error"]), hint=outcome.get("hint"))
        external = ExternalIdentity.from_json(outcome["identity"])
        try:
            result = await self._issue_sso(request, external, tuple(outcome["roles"]))
        except (AccessDenied, TetherError) as exc:
            await self._logins.audit_login_failure(external.username, method, exc.message)
            raise
        return result.to_json()
