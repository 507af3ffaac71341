"""The resource model: metadata, resources, kinds and the registry that merges plugins' kinds.

Every object an admin manages (roles, users, tokens, certificate authorities, and whatever
plugins add) has the same envelope as in Teleport: ``kind``, ``version``, ``metadata`` and a
kind-specific ``spec``, plus ``status`` for what the system reports rather than what a person
writes. Kinds are data (:class:`ResourceKind`), contributed through the
``tether_resource_kinds`` hook, so a plugin adds a kind without touching the kernel.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from tether.errors import ResourceError
from tether.structuring import did_you_mean

__all__ = ["KindRegistry", "Metadata", "Resource", "ResourceKind", "secret_paths_for"]

SecretPath = tuple[str, ...]


@attrs.frozen
class Metadata:
    """What every resource has: its name, labels, optional expiry and description.

    ``revision`` is set by storage when a resource is read and shown as ``metadata.revision``;
    storage ignores it on create and may compare it on update.
    """

    name: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    expires: datetime.datetime | None = None
    description: str = ""
    revision: int | None = None


@attrs.frozen
class Resource:
    """One resource: the envelope plus the kind's typed ``spec`` (and ``status``)."""

    kind: str
    version: str
    metadata: Metadata
    spec: Any
    status: Any | None = None

    @property
    def name(self) -> str:
        """Shorthand for ``metadata.name``."""
        return self.metadata.name


# Secret paths are attached to the spec type, not only to the kind, so that a Resource (which
# names its kind only by string) can be dumped without a registry at hand and still hide its
# secrets: forgetting to pass a registry must not leak a private key.
_SECRETS: dict[type, set[SecretPath]] = {}


def secret_paths_for(spec_type: type) -> frozenset[SecretPath]:
    """The paths hidden unless ``--with-secrets``, for resources whose spec is ``spec_type``."""
    return frozenset(_SECRETS.get(spec_type, ()))


def _check_prefix(instance: ResourceKind, attribute: attrs.Attribute[str], value: str) -> None:
    if not (value.startswith("/") and value.endswith("/") and len(value) > 2):
        raise ValueError(
            f"kind {instance.name!r}: storage_prefix must look like '/things/', got {value!r}"
        )


@attrs.frozen(kw_only=True)
class ResourceKind:
    """A kind of resource: its names, accepted versions, spec type and storage place.

    :param name: the canonical name used in documents (``kind: role``).
    :param aliases: other names ``tetherctl get`` accepts (``roles``, ``rc``).
    :param versions: accepted versions; the first is the default when a document omits it.
    :param spec_type: attrs class of ``spec``; every field needs a default unless required.
    :param status_type: attrs class of ``status``, or None when the kind has none.
    :param secret_paths: paths (from the resource root, ``"*"`` matches any list item or map
        key) hidden unless the caller asks for secrets.
    :param storage_prefix: key prefix in the backend, e.g. ``/roles/``.
    :param validate: semantic checks beyond types; raises ``InvalidField`` (or
        ``ResourceError``) naming the field.
    :param ref: the name of a resource within its kind when ``metadata.name`` alone is not
        unique (certificate authorities are ``<type>/<cluster>``); default ``metadata.name``.
    :param published_by: for inventory kinds (``node``): the identity kind of the hosts that
        publish their own entries (with an expiry renewed by heartbeats).
    :param publisher_role: for inventory kinds: the host role (``Node``; a plugin's
        ``TokenType`` with ``host_role=True``) a host's certificate must carry to publish
        entries of this kind, which it has only if its join token allowed it. None: any host
        of kind ``published_by``.
    :param publisher: for inventory kinds whose entries are named freely (a database service
        publishes one entry per database, named by the database): the host id of the host an
        entry belongs to (read from its spec); auth accepts an entry only from that host, and
        refuses one whose name a live entry of another host holds. None: entries are named by
        their host's id (``metadata.name``), one per host, as nodes.
    :param readable_by: identity kinds of the cluster's own hosts (``node``, ``proxy``) that may
        list and read this kind without a role, e.g. nodes read roles to authorize logins.
    :param access_labels: the role condition (``node_labels``) that grants users access to
        resources of this kind: users list only the ones whose labels their roles match,
        without needing a ``list`` rule, as ``tsh ls`` shows only the nodes one can reach.
    :param dialed_addr: for inventory kinds the proxy dials (a node in direct mode): the
        ``host:port`` an entry asks to be dialled at, or ``""`` for none. Auth accepts an entry
        only if its certificate names that host and it is none of the cluster's own listening
        addresses.
    :param user_view: what a user is shown of one resource of this kind, when auth lists or
        reads it for a user: called with the resource, the user's ``RoleSet`` (a root's user:
        the mapped roles) and traits, it returns the resource to show, e.g. with a status that
        says what the roles allow on it (``tether db ls``'s allowed database users). Never
        called for the cluster's hosts and admins, who see the resource as stored.
    """

    name: str
    versions: tuple[str, ...]
    spec_type: type
    storage_prefix: str = attrs.field(validator=_check_prefix)
    aliases: tuple[str, ...] = ()
    status_type: type | None = None
    secret_paths: tuple[SecretPath, ...] = ()
    validate: Callable[[Resource], None] | None = None
    ref: Callable[[Resource], str] | None = None
    published_by: str | None = None
    publisher_role: str | None = None
    publisher: Callable[[Resource], str] | None = None
    readable_by: tuple[str, ...] = ()
    access_labels: str | None = None
    dialed_addr: Callable[[Resource], str] | None = None
    user_view: Callable[[Resource, Any, Mapping[str, Sequence[str]]], Resource] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.versions:
            raise ValueError(f"kind {self.name!r} must accept at least one version")
        if self.secret_paths:
            _SECRETS.setdefault(self.spec_type, set()).update(self.secret_paths)

    @property
    def default_version(self) -> str:
        """The version written when a document leaves it out."""
        return self.versions[0]

    def key(self, ref: str) -> str:
        """The storage key of the resource called ``ref`` (see :attr:`ref`)."""
        return self.storage_prefix + ref

    def ref_of(self, resource: Resource) -> str:
        """The name that identifies ``resource`` within this kind (``kind/ref`` on the CLI)."""
        return self.ref(resource) if self.ref is not None else resource.metadata.name

    def publisher_of(self, resource: Resource) -> str:
        """The host id of the host that ``resource``, an inventory entry, belongs to (see
        :attr:`publisher`)."""
        return self.publisher(resource) if self.publisher is not None else resource.metadata.name

    def key_for(self, resource: Resource) -> str:
        """The storage key of ``resource``."""
        return self.key(self.ref_of(resource))

    def new(
        self,
        name: str,
        spec: Any,
        *,
        labels: Mapping[str, str] | None = None,
        expires: datetime.datetime | None = None,
        description: str = "",
        status: Any | None = None,
        version: str | None = None,
    ) -> Resource:
        """Build a resource of this kind in code (services creating users, tokens, CAs).

        Runs the kind's ``validate`` so code cannot create what a document could not.
        """
        resource = Resource(
            kind=self.name,
            version=version or self.default_version,
            metadata=Metadata(
                name=name, labels=dict(labels or {}), expires=expires, description=description
            ),
            spec=spec,
            status=status,
        )
        if self.validate is not None:
            self.validate(resource)
        return resource


class KindRegistry:
    """The kinds known to this process, looked up by name or alias.

    Built from every plugin's ``tether_resource_kinds`` so that ``tetherctl create`` and the
    auth service agree on what exists. A name or alias claimed twice is refused with both
    plugins named, because silently preferring one would make behaviour depend on load order.
    """

    def __init__(self, kinds: Iterable[ResourceKind] = (), *, plugin: str = "<direct>") -> None:
        self._kinds: dict[str, ResourceKind] = {}
        self._names: dict[str, tuple[ResourceKind, str]] = {}
        for kind in kinds:
            self.register(kind, plugin=plugin)

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> KindRegistry:
        """Merge the kinds of every plugin that implements ``tether_resource_kinds``, with the
        fields plugins add to roles (``tether_role_fields``).

        :raises ResourceError: a name or alias is declared twice (both plugins named) or a
            plugin returned something that is not a ``ResourceKind``.
        """
        registry = cls()
        for impl in pm.hook.tether_resource_kinds.get_hookimpls():
            kinds: object = impl.function()
            if not isinstance(kinds, list | tuple):
                raise ResourceError(
                    f"plugin {impl.plugin_name!r} returned {kinds!r} from "
                    "tether_resource_kinds; expected a list of ResourceKind objects"
                )
            for kind in kinds:
                if not isinstance(kind, ResourceKind):
                    raise ResourceError(
                        f"plugin {impl.plugin_name!r} returned {kind!r} from "
                        "tether_resource_kinds; expected ResourceKind objects"
                    )
                registry.register(kind, plugin=impl.plugin_name)
        from tether.resources._role_fields import extend_role_kind, role_fields  # builds on ROLE

        fields = role_fields(pm)
        if fields and "role" in registry:
            registry._replace(extend_role_kind(list(fields.values())))
        return registry

    def _replace(self, kind: ResourceKind) -> None:
        """Put ``kind`` in place of the registered kind of the same name and aliases."""
        for word in (kind.name, *kind.aliases):
            self._names[word.lower()] = (kind, self._names[word.lower()][1])
        self._kinds[kind.name] = kind

    def register(self, kind: ResourceKind, *, plugin: str = "<direct>") -> None:
        """Add ``kind``, declared by ``plugin``.

        :raises ResourceError: its name or an alias is taken.
        """
        for word in (kind.name, *kind.aliases):
            taken = self._names.get(word.lower())
            if taken is not None:
                other, other_plugin = taken
                raise ResourceError(
                    f"resource kind name {word!r} is declared twice: kind {other.name!r} by "
                    f"plugin {other_plugin!r} and kind {kind.name!r} by plugin {plugin!r}",
                    hint="disable one of the plugins",
                )
        for word in (kind.name, *kind.aliases):
            self._names[word.lower()] = (kind, plugin)
        self._kinds[kind.name] = kind

    def get(self, name_or_alias: str) -> ResourceKind:
        """Look a kind up by name or alias (case-insensitive).

        :raises ResourceError: unknown, with a suggestion and the known kinds.
        """
        found = self._names.get(name_or_alias.lower())
        if found is not None:
            return found[0]
        known = ", ".join(sorted(self._kinds))
        guess = did_you_mean(name_or_alias.lower(), self._names)
        suggestion = f" (did you mean {self._names[guess][0].name}?)" if guess else ""
        raise ResourceError(
            f"unknown resource kind {name_or_alias!r}{suggestion}; known kinds: {known}"
        )

    def kinds(self) -> list[ResourceKind]:
        """Every kind, sorted by name."""
        return [self._kinds[name] for name in sorted(self._kinds)]

    def __contains__(self, name_or_alias: object) -> bool:
        return isinstance(name_or_alias, str) and name_or_alias.lower() in self._names
