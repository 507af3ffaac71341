"""The cluster's certificate authorities: created on first start, published as
``cert_authority`` resources, and the certificates of the cluster's own daemons.

Separate from the other jobs because it runs before any of them (bootstrap) and is the only
one that touches the CA keys: in the store, shared by every auth server of the cluster, with
a copy in the data directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from cryptography import x509

from tether import pki
from tether.auth import ca_sealing
from tether.auth.context import AuthContext
from tether.backend import Backend, Op
from tether.config import Config
from tether.errors import AlreadyExists, CompareFailed, ConfigError, NotFound, TrustError
from tether.resources import KindRegistry, preset_roles, resource_to_bytes
from tether.trust.handshake import TrustExchange, ca_resources

__all__ = [
    "CA_KEYS_PREFIX",
    "create_preset_roles",
    "issue_system_certificate",
    "load_authorities",
    "publish",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


#: where the cluster's CA keys are stored, so that every auth server of the store signs with
#: the same CAs: not a resource kind, so no API route lists them
CA_KEYS_PREFIX = "/ca_keys/"
CLUSTER_CA_KEYS = f"{CA_KEYS_PREFIX}cluster"


def declared_ca_keys(name: str) -> str:
    """The storage key of the declared X.509 CA ``name`` (a plugin's)."""
    return f"{CA_KEYS_PREFIX}declared/{name}"


async def load_authorities(
    config: Config, backend: Backend, declared: Sequence[str] = ()
) -> pki.ClusterAuthorities:
    """The cluster's CAs, and the X.509 CAs of the ``declared`` types
    (``tether_cert_authorities``, with the X.509 CA's algorithm: what databases accept of the
    cluster's CA), the same for every auth server of the store.

    The store holds them, in plain text (who can read the store can sign as the cluster)
    unless ``auth_service.ca_keys_key_file`` names a key file that seals them (who can read
    the store and that file can; see :mod:`tether.auth.ca_sealing`), and the data
    directory's ``keys`` a copy. The first auth server to start creates them with a
    compare-and-swap (create only if absent): one that starts at the same moment and loses
    takes the winner's. A data directory holding CAs from before they were stored puts them
    in the store; one holding other CAs than the store's is refused, as signing with either
    would break what the other issued.
    """
    keys_dir = pathlib.Path(config.data_dir) / "keys"
    sealing = _Sealing.of(config)
    authorities = await _shared(
        backend,
        CLUSTER_CA_KEYS,
        keys_dir,
        sealing,
        cached=lambda: pki.ClusterAuthorities.load(keys_dir, config.cluster_name),
        fresh=lambda: pki.ClusterAuthorities.generate(
            config.cluster_name,
            algorithm=config.auth_service.ca_algorithm,
            tls_algorithm=config.auth_service.tls_ca_algorithm,
        ),
        encode=lambda cas: cas.to_record(),
        decode=lambda record: pki.ClusterAuthorities.from_record(
            record, config.cluster_name, where="the storage"
        ),
        save=lambda cas: cas.save(keys_dir),
        same=lambda a, b: a.fingerprints() == b.fingerprints(),
    )
    found = dict(authorities.declared)
    for name in declared:
        found[name] = await _shared_declared(backend, config, keys_dir, sealing, name)
    return attrs.evolve(authorities, declared=found)


async def _shared_declared(
    backend: Backend,
    config: Config,
    keys_dir: pathlib.Path,
    sealing: _Sealing | None,
    name: str,
) -> pki.X509CertAuthority:
    cluster = config.cluster_name
    return await _shared(
        backend,
        declared_ca_keys(name),
        keys_dir,
        sealing,
        cached=lambda: pki.load_declared(keys_dir, cluster, name),
        fresh=lambda: pki.X509CertAuthority.create(
            cluster,
            pki.generate_private_key(config.auth_service.tls_ca_algorithm),
            unit=pki.declared_unit(name),
        ),
        encode=pki.declared_record,
        decode=lambda record: pki.declared_from_record(record, cluster, name, where="the storage"),
        save=lambda ca: pki.save_declared(keys_dir, name, ca),
        same=lambda a, b: a.pin() == b.pin(),
    )


@attrs.frozen
class _Sealing:
    """The key that seals the stored CA keys, and the previous ones that may still have sealed
    them (rotating the key file), each with the file it came from, the current one first."""

    keys: tuple[tuple[bytes, str], ...] = attrs.field(repr=False)

    @property
    def key(self) -> bytes:
        return self.keys[0][0]

    @classmethod
    def of(cls, config: Config) -> _Sealing | None:
        """The sealing ``auth_service`` configures; None: the CA keys are stored plain.

        :raises ConfigError: a key file cannot be read, is readable by others, or is not a
            key; previous key files without a current one.
        """
        service = config.auth_service
        current, previous = service.ca_keys_key_file, service.ca_keys_previous_key_files
        if current is None:
            if previous:
                raise ConfigError(
                    "auth_service.ca_keys_previous_key_files is set without ca_keys_key_file",
                    hint="set ca_keys_key_file to the key file the CA keys are sealed with now",
                )
            return None
        keys = [(ca_sealing.read_key_file(current), str(current))]
        for path in previous:
            setting = "auth_service.ca_keys_previous_key_files"
            keys.append((ca_sealing.read_key_file(path, setting), str(path)))
        return cls(tuple(keys))


async def _shared(
    backend: Backend,
    key: str,
    keys_dir: pathlib.Path,
    sealing: _Sealing | None,
    *,
    cached: Callable[[], T | None],
    fresh: Callable[[], T],
    encode: Callable[[T], Mapping[str, str]],
    decode: Callable[[Mapping[str, Any]], T],
    save: Callable[[T], None],
    same: Callable[[T, T], bool],
) -> T:
    """CAs stored at ``key``, with their copy in ``keys_dir`` (see :func:`load_authorities`)."""

    def stored_form(cas: T) -> bytes:
        record = dict(encode(cas))
        sealed = ca_sealing.seal(record, sealing.key, key) if sealing else record
        return json.dumps(sealed).encode()

    local = cached()
    stored = await backend.get(key)
    if stored is None:
        mine = local if local is not None else fresh()
        try:
            await backend.create(key, stored_form(mine))
        except AlreadyExists:
            stored = await backend.get(key)  # another auth server stored its own first
            if stored is None:
                raise TrustError(
                    f"the CA keys at {key} in the storage were created and removed at once",
                    hint="another auth server of the storage is misbehaving; start again",
                ) from None
        else:
            if local is None:
                save(mine)
            return mine
    try:
        record = json.loads(stored.value)
    except ValueError as exc:
        raise TrustError(f"the CA keys at {key} in the storage are not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise TrustError(f"the CA keys at {key} in the storage are not a JSON object")
    opened, opened_with = ca_sealing.open_record(record, sealing.keys if sealing else (), key)
    chosen = decode(opened)
    if sealing is not None and opened_with != 0:
        # a key file given to a cluster whose CAs were stored plain, or a new key file while
        # they are sealed with a previous one: seal them with it now (another auth server
        # doing the same at once wins; either sealed them with the same key)
        if opened_with is not None:
            log.warning(
                "the CA keys at %s were sealed with the previous key file %s; sealing them with %s",
                key,
                sealing.keys[opened_with][1],
                sealing.keys[0][1],
            )
        with contextlib.suppress(CompareFailed, NotFound):
            await backend.compare_and_swap(
                key, stored_form(chosen), expected_revision=stored.revision
            )
    if local is None:
        save(chosen)
    elif not same(local, chosen):
        raise TrustError(
            f"the CA keys in {keys_dir} are not those the storage holds ({key})",
            hint="this data directory belongs to another cluster, or another auth server of "
            "the storage created the cluster's CAs first: move the keys directory away to use "
            "the storage's",
        )
    return chosen


async def publish(ctx: AuthContext) -> None:
    """Store this cluster's public CAs, so that ``tetherctl get cert_authority`` shows them:
    the kernel's and those plugins declare (which the trust exchange never sends).

    Only those that differ from the stored ones are written, in one batch: a restart with the
    same CAs writes nothing, so the trust snapshot keeps the revision hosts hold (see
    :mod:`tether.auth.trust_feed`) and none of them downloads it again. Each write expects
    the stored item it compared with; when another auth server of the store wrote in between,
    the comparison starts again.
    """
    kind = ctx.registry.get("cert_authority")
    own = TrustExchange.of(ctx.cluster_name, ctx.authorities)
    resources = ca_resources(ctx.registry, own, ("user", "host", "tls"))
    for name, ca in ctx.authorities.declared.items():
        spec = {
            "type": name,
            "cluster_name": ctx.cluster_name,
            "active_keys": {"ssh": [], "tls": [ca.cert_pem().decode()]},
        }
        resources.append(ctx.make("cert_authority", ctx.cluster_name, spec))
    wanted = {kind.key(kind.ref_of(res)): resource_to_bytes(res) for res in resources}
    while True:
        changed = []
        for key, value in wanted.items():
            stored = await ctx.backend.get(key)
            if stored is None or stored.value != value:
                expected = 0 if stored is None else stored.revision
                changed.append(Op.put(key, value, expected_revision=expected))
        if not changed:
            return
        try:
            await ctx.backend.apply(changed)
            return
        except (AlreadyExists, CompareFailed, NotFound):
            continue  # written meanwhile by another auth server of the store: compare again


async def create_preset_roles(backend: Backend, registry: KindRegistry) -> None:
    """Create the preset roles that do not exist yet (an edited one is kept as it is)."""
    kind = registry.get("role")
    for role in preset_roles():
        with contextlib.suppress(AlreadyExists):
            await backend.create(kind.key(role.metadata.name), resource_to_bytes(role))


def issue_system_certificate(
    ctx: AuthContext,
    kind: str,
    name: str,
    public_key: Any,
    *,
    ttl: datetime.timedelta,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """Issue the X.509 certificate of one of the cluster's own daemons (or the local
    admin identity ``tetherctl -c`` uses)."""
    identity = pki.Identity(
        username=name,
        cluster=ctx.cluster_name,
        roles=(),
        traits={},
        logins=(),
        expires=ctx.now() + ttl,
        kind=kind,
    )
    return pki.issue_x509_cert(
        ctx.authorities.tls,
        public_key,
        identity,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        server=kind in ("proxy", "auth"),
        now=ctx.now(),
    )
