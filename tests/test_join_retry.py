"""A join whose answer was lost is sent again under the same host id.

Auth records the hold on a host id before its answer leaves; if the answer is lost (the auth
server is killed, the host crashes), the host sends the join again, with the key it kept in
its data directory, and auth accepts it for the id the first join took: same kind, same keys.
Anything else stays refused. Real processes on 127.0.0.1 (the lost answer is one the test
drops), but the record from before holds named keys, which needs the store in the test's hands.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import stat

import pytest

from tether import pki
from tether.auth.host_ids import HOST_ID_PREFIX
from tether.auth.service import AuthService
from tether.backend import open_sqlite
from tether.config import default_config
from tether.errors import AccessDenied
from tether.node.join import (
    join_cluster,
    load_identity,
    load_or_join_current,
    pending_join_key,
)
from tether.plugins import get_plugin_manager
from tether.testing.cluster import RunningCluster


def token(cluster: RunningCluster, kind: str = "node") -> str:
    out = cluster.tetherctl("tokens", "add", f"--type={kind}", "--format=json").stdout
    return str(json.loads(out)["token"])


def public_pem(key: pki.PrivateKey) -> bytes:
    return pki.public_key_to_pem(key.public_key())


async def test_a_join_sent_again_with_the_same_key_gets_the_id_its_first_join_took(
    tether_cluster: RunningCluster,
) -> None:
    cluster = tether_cluster
    node_token = token(cluster)
    key = pki.generate_private_key()

    async def join(key: pki.PrivateKey, *, role: str = "node", secret: str = node_token) -> None:
        joined = await join_cluster(
            cluster.proxy_addr,
            secret,
            host_id="node-retrying",
            hostname="web-3",
            role=role,
            ca_pin=cluster.ca_pin,
            key=key,
        )
        assert (joined.identity.username, joined.identity.kind) == ("node-retrying", role)
        certified = pki.spki_fingerprint(joined.tls_cert.public_key())
        assert certified == pki.spki_fingerprint(key.public_key())

    await join(key)  # auth recorded the hold; the answer never reached the host
    await join(key)  # sent again: the same host
    await join(key)  # and again, for the hold the retry recorded
    joined = [e for e in audit(cluster, "host.joined") if e["user"] == "node-retrying"]
    assert len(joined) == 3

    # another key is another host, still refused
    with pytest.raises(AccessDenied, match="host id 'node-retrying' is held by node 'web-3'"):
        await join(pki.generate_private_key())
    # so is the same key joining as another kind of host
    with pytest.raises(AccessDenied, match="host id 'node-retrying' is held by node 'web-3'"):
        await join(key, role="proxy", secret=token(cluster, "proxy"))


async def test_a_host_whose_join_answer_was_lost_joins_again_with_the_key_it_kept(
    tether_cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    cluster = tether_cluster
    directory = tmp_path / "data"
    secret = token(cluster)
    key = pending_join_key(directory, "node")
    pending = directory / "join_key.pem"
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # a restart finds the same key
    assert public_pem(pending_join_key(directory, "node")) == public_pem(key)

    # the host sent its join with that key; the answer was lost before it was saved
    await join_cluster(
        cluster.proxy_addr,
        secret,
        host_id="node-lost-answer",
        hostname="web-4",
        ca_pin=cluster.ca_pin,
        key=key,
    )
    assert load_identity(directory) is None

    joined = await load_or_join_current(
        directory,
        cluster.proxy_addr,
        secret,
        role="node",
        host_id="node-lost-answer",
        hostname="web-4",
        ca_pin=cluster.ca_pin,
    )
    assert joined.identity.username == "node-lost-answer"
    assert public_pem(joined.private_key) == public_pem(key)
    saved = load_identity(directory)
    assert saved is not None and public_pem(saved.private_key) == public_pem(key)
    assert not pending.exists(), "the key of the finished join is the identity's now"
    # and the next join from this directory gets a new key
    assert public_pem(pending_join_key(directory, "node")) != public_pem(key)


def test_a_pending_key_of_another_type_than_the_hosts_is_replaced(tmp_path: pathlib.Path) -> None:
    node_key = pending_join_key(tmp_path, "node")
    proxy_key = pending_join_key(tmp_path, "proxy")
    assert pki.key_algorithm(node_key) == "ed25519"
    assert pki.key_algorithm(proxy_key) == pki.WEB_ALGORITHM
    assert public_pem(pending_join_key(tmp_path, "proxy")) == public_pem(proxy_key)


async def test_a_hold_recorded_before_holds_named_keys_refuses_every_join(
    tmp_path: pathlib.Path,
) -> None:
    pm = get_plugin_manager()
    config = default_config(data_dir=tmp_path, cluster_name="main")
    admin = pki.Identity(
        username="admin",
        cluster="main",
        roles=(),
        traits={},
        logins=(),
        expires=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
        kind="admin",
    )
    key = pki.generate_private_key()
    request = {
        "role": "node",
        "host_id": "node-old",
        "hostname": "web-5",
        "addresses": ["127.0.0.1"],
        "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
        "tls_public_key_pem": public_pem(key).decode(),
    }
    async with open_sqlite(f"sqlite://{tmp_path / 'backend.sqlite'}") as backend:
        auth = await AuthService.open(config=config, pm=pm, backend=backend)
        secret = (await auth.add_token(admin, "node", datetime.timedelta(hours=1))).token
        await auth.join(secret, **request)
        await auth.join(secret, **request)  # the same host again

        # the record as a release before this one wrote it: no keys
        item = await backend.get(HOST_ID_PREFIX + "node-old")
        assert item is not None
        record = json.loads(item.value)
        assert set(record["keys"]) == {"ssh", "tls"}
        del record["keys"]
        await backend.put(HOST_ID_PREFIX + "node-old", json.dumps(record).encode(), ttl=3600)
        with pytest.raises(AccessDenied, match="host id 'node-old' is held by node 'web-5'"):
            await auth.join(secret, **request)


def audit(cluster: RunningCluster, event_type: str) -> list[dict[str, object]]:
    out = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json").stdout
    return list(json.loads(out))
