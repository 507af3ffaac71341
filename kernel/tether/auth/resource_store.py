"""Resources as callers see them: who may get, create, replace and remove which, and what a
user may see of the kinds they have no rule for (visibility by labels).

Separate from storage (:mod:`tether.backend`) and from the resource model
(:mod:`tether.resources`): this is where a verified identity meets the role rules. What a
change means for trust (the handshake a trusted_cluster needs, CAs to forget) is done by the
callbacks the service passes in, so this module knows nothing of the trust job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tether import audit, pki
from tether.auth.context import AuthContext
from tether.auth.decoded import encode_json
from tether.auth.passwords import ATTEMPTS_PREFIX, PASSWORD_PREFIX
from tether.auth.remote_clusters import RemoteClusterCache
from tether.auth.target_lookup import TargetIndex
from tether.backend import Item, Op
from tether.errors import (
    AccessDenied,
    AlreadyExists,
    CompareFailed,
    NotFound,
    ResourceError,
    TetherError,
)
from tether.resources import (
    Resource,
    ResourceKind,
    resource_to_bytes,
    resource_to_dict,
)
from tether.targets import TargetQuery

__all__ = ["ResourceStore"]


def _everything(resource: Resource) -> bool:
    return True


def _nothing(resource: Resource) -> bool:
    return False


def _check_unchanged(
    kind: ResourceKind, name: str, existing: Item | None, expected_revision: int
) -> None:
    """The stored resource is still the one the caller read, at ``expected_revision``."""
    if existing is None:
        raise NotFound(f"{kind.name} {name!r} was deleted since you read it")
    if existing.revision != expected_revision:
        raise CompareFailed(
            f"{kind.name} {name!r} was changed by someone else since you read it "
            f"(revision {expected_revision}, now {existing.revision})"
        )


class ResourceStore:
    """Get, create and delete resources for a caller, all or none, audited.

    :param handshake: runs before a trusted_cluster is stored (the handshake with its root,
        when one is needed), given the resource and what was stored before.
    :param forget_cluster: removes another cluster's CAs, when its trusted_cluster or
        remote_cluster is deleted.
    :param remote_clusters: the remote_clusters with their status, kept by a watch; read
        from the store instead while it is not following it.
    :param targets: finds the entries of a target kind that a query names (routing's reads).
    """

    def __init__(
        self,
        ctx: AuthContext,
        *,
        handshake: Callable[[Resource, Item | None], Awaitable[None]],
        forget_cluster: Callable[[str], Awaitable[None]],
        remote_clusters: RemoteClusterCache,
        targets: TargetIndex,
    ) -> None:
        self._ctx = ctx
        self._handshake = handshake
        self._forget_cluster = forget_cluster
        self._remote_clusters = remote_clusters
        self._targets = targets

    async def get_resources(
        self,
        identity: pki.Identity,
        kind_name: str,
        name: str | None = None,
        *,
        with_secrets: bool = False,
        target: TargetQuery | None = None,
    ) -> list[Resource]:
        """The resources of ``kind_name`` that ``identity`` may see: all of them, the one
        named ``name``, or those a ``target`` query names (what a user typed to reach one:
        ``web-1``, ``env=prod``; the kind must be a protocol's target kind).

        A target query is matched against every stored entry first (held indexed in memory,
        :class:`~tether.auth.target_lookup.TargetIndex`) and the caller's roles applied to
        the matches only, which is what the caller's full listing would have
        matched: an entry the roles hide is not returned, whatever the query says.

        :raises NotFound: ``name`` does not exist, or the caller may not see it.
        :raises ResourceError: ``target`` with ``name`` or ``with_secrets``, or for a kind
            that is no target kind.
        """
        ctx = self._ctx
        kind = ctx.registry.get(kind_name)
        target_kind = None
        if target is not None:
            target_kind = self._targets.kind(kind.name)
            if target_kind is None:
                raise ResourceError(f"{kind.name} is not a kind of target; it takes no query")
            if name is not None or with_secrets:
                raise ResourceError("a target query reads neither by name nor with secrets")
        verb = "read" if name or with_secrets else "list"
        visible = await self._reader(identity, kind, verb, with_secrets=with_secrets)
        if target is not None and target_kind is not None:
            matches = await self._targets.matching(target_kind, target)
            shown = [res for res in matches if visible(res)]
        elif kind.name == "remote_cluster":
            # served from memory, with its status: a root with a thousand leaves neither
            # reads nor decodes them per listing
            shown = [res for res in await self._remote_cluster_list(name) if visible(res)]
            if name is not None and not shown:
                raise NotFound(f"{kind.name} {name!r} not found")
        elif name is not None:
            item = await ctx.backend.get(kind.key(name))
            found = None if item is None else ctx.decoded.decode(item)
            if found is None or not visible(found):
                # out of reach is "not found", not "denied": it does not confirm it exists
                raise NotFound(f"{kind.name} {name!r} not found")
            shown = [found]
        else:
            items = await ctx.backend.range(kind.storage_prefix)
            found_all = ctx.decoded.decode_range(kind.storage_prefix, items)
            shown = [res for res in found_all if visible(res)]
        if kind.user_view is not None and identity.kind == "user":
            roleset = await ctx.roleset(identity.roles)
            shown = [kind.user_view(res, roleset, identity.traits) for res in shown]
        return shown

    def documents(
        self, resources: Sequence[Resource], *, with_secrets: bool = False
    ) -> list[dict[str, Any]]:
        """``resources`` as the API sends them (:func:`~tether.resources.resource_to_dict`);
        a remote_cluster's document comes from the cache's memory while its status holds."""
        cached = self._remote_clusters.items
        return [
            cached.document(res)
            if res.kind == "remote_cluster" and not with_secrets
            else resource_to_dict(res, with_secrets=with_secrets)
            for res in resources
        ]

    def encoded_documents(
        self, resources: Sequence[Resource], *, with_secrets: bool = False
    ) -> bytes:
        """The API's answer listing ``resources`` (``{"resources": [documents]}``), as JSON:
        a stored entry's document is encoded once per revision (the decoded cache keeps it),
        so that listing thousands of nodes again encodes only those that changed."""
        if with_secrets:
            return encode_json({"resources": self.documents(resources, with_secrets=True)})
        cached = self._remote_clusters.items
        decoded = self._ctx.decoded
        parts = [
            encode_json(cached.document(res))
            if res.kind == "remote_cluster"
            else decoded.encoded(res)
            for res in resources
        ]
        return b'{"resources":[' + b",".join(parts) + b"]}"

    async def _remote_cluster_list(self, name: str | None) -> list[Resource]:
        """The remote_clusters (or the one named) with their status: from the cache, or from
        the store while the cache does not follow it."""
        cache = self._remote_clusters
        if cache.ready:
            return cache.current(name)
        return await cache.read(name)

    async def _reader(
        self, identity: pki.Identity, kind: ResourceKind, verb: str, *, with_secrets: bool
    ) -> Callable[[Resource], bool]:
        """Check that ``identity`` may ``verb`` ``kind``; return which resources it may see.

        As in Teleport, "list" shows resources without secrets and "read" with them. The
        cluster's own hosts read the kinds that name them in ``readable_by`` (nodes read roles
        to authorize logins). A user without a rule for an ``access_labels`` kind still sees
        the resources their roles reach, as ``tsh ls`` lists the nodes one may log in to.
        A user of another cluster (a root's, role-mapped here) sees none of this cluster's
        leaves: trust is not transitive, and a leaf of a leaf is "not found" to them.
        """
        ctx = self._ctx
        own_host = identity.kind in kind.readable_by and identity.cluster == ctx.cluster_name
        if own_host and not with_secrets:
            return _everything
        foreign_user = identity.kind == "user" and identity.cluster != ctx.cluster_name
        if foreign_user and kind.access_labels == "cluster_labels":
            return _nothing
        try:
            await ctx.authorize(identity, kind.name, verb)
        except AccessDenied:
            if kind.access_labels is None or identity.kind != "user" or with_secrets:
                raise
        else:
            # rules grant the kind; cluster visibility still applies to users, as the guide
            # says of a labelled leaf: "the Auth Service won't return any information about
            # the cluster unless you are assigned a role that allows" its labels
            if kind.access_labels != "cluster_labels" or identity.kind != "user":
                return _everything
        roleset = await ctx.roleset(identity.roles)
        field = kind.access_labels
        return lambda res: roleset.can_access(field, res.metadata.labels, identity.traits)

    async def create_resources(
        self,
        identity: pki.Identity,
        resources: Sequence[Resource],
        *,
        force: bool = False,
        expected_revision: int | None = None,
    ) -> list[str]:
        """Create (or with ``force`` replace) every resource, all or none.

        :param expected_revision: replace the one resource given only if it is still at this
            revision, as a read showed it (``tetherctl edit`` and ``update``, so that what
            someone else saved meanwhile is not lost).
        :raises CompareFailed: it changed since; :class:`NotFound`: it was deleted since.

        Returns one line per resource saying what happened, as ``tetherctl create`` prints.
        """
        ctx = self._ctx
        if expected_revision is not None and len(resources) != 1:
            raise ResourceError(f"expected_revision applies to one resource, got {len(resources)}")
        ops = []
        messages = []
        events = []
        for res in resources:
            kind = ctx.registry.get(res.kind)
            key = kind.key(kind.ref_of(res))
            existing = await ctx.backend.get(key)
            verb = "update" if existing is not None else "create"
            await ctx.authorize(identity, kind.name, verb)
            if existing is not None and not force:
                raise AlreadyExists(
                    f"{kind.name} {res.metadata.name!r} already exists",
                    hint="use `tetherctl create -f` to overwrite it",
                )
            if kind.name == "remote_cluster" and existing is None:
                raise TetherError(
                    "a remote_cluster is created by the handshake of a leaf, not by hand",
                    hint="create a trusted_cluster on the leaf with a token from "
                    "`tetherctl tokens add --type=trusted_cluster`",
                )
            if expected_revision is not None:
                _check_unchanged(kind, res.metadata.name, existing, expected_revision)
            if kind.name == "trusted_cluster":
                await self._handshake(res, existing)
            expected = existing.revision if existing is not None else 0
            ops.append(Op.put(key, resource_to_bytes(res), expected_revision=expected))
            done = "updated" if existing is not None else "created"
            messages.append(f'{kind.name} "{res.metadata.name}" has been {done}')
            event = audit.RESOURCE_UPDATED if existing else audit.RESOURCE_CREATED
            events.append((event, {"kind": kind.name, "name": res.metadata.name}))
        async with ctx.audited(identity.username, events):
            revision = await ctx.backend.apply(ops)
        for op, res in zip(ops, resources, strict=True):
            self._targets.written(op, revision, res)
        return messages

    async def _delete(self, key: str, missing: str) -> None:
        """Delete ``key`` whatever its revision, and tell the target index under which
        revision (a query right after ``tetherctl rm`` must not find the entry).

        :raises NotFound: with ``missing``, when nothing is stored at ``key``.
        """
        backend = self._ctx.backend
        while True:
            item = await backend.get(key)
            if item is None:
                raise NotFound(missing)
            op = Op.delete(key, expected_revision=item.revision)
            try:
                revision = await backend.apply([op])
            except (CompareFailed, NotFound):
                continue  # written or expired since it was read: read it again
            self._targets.written(op, revision)
            return

    async def delete_resource(self, identity: pki.Identity, kind_name: str, name: str) -> str:
        ctx = self._ctx
        kind = ctx.registry.get(kind_name)
        await ctx.authorize(identity, kind.name, "delete")
        missing = f"{kind.name} {name!r} not found"
        if await ctx.backend.get(kind.key(name)) is None:
            raise NotFound(missing)
        fields = {"kind": kind.name, "name": name}
        trust = kind.name in ("trusted_cluster", "remote_cluster")
        events = [("trust.removed", fields)] if trust else []
        async with ctx.audited(identity.username, [*events, (audit.RESOURCE_DELETED, fields)]):
            await self._delete(kind.key(name), missing)  # NotFound if deleted meanwhile
        if trust:
            await self._forget_cluster(name)
        if kind.name == "user":
            await ctx.backend.delete(PASSWORD_PREFIX + name)
            await ctx.backend.delete(ATTEMPTS_PREFIX + name)
        return f'{kind.name} "{name}" has been deleted'
