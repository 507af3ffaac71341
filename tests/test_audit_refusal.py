"""An action that must be audited happens only once its event is stored.

The builtin ``jsonl-audit`` sink of a real ``tetherd`` is made unable to write, as a full or
failed disk would: its ``events.jsonl`` replaced by a directory, so every append fails with
the operating system's error. With ``auth_service.audit.on_failure: refuse`` (the default)
the admin's change and the user's login are refused, and nothing of them takes effect; with
``continue`` they go on and the daemon's log says what was not recorded. A host's forwarded
events wait in its backlog until the log is back, and arrive once each.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest
import trio

from host_identity import host_client
from tether.builtins.jsonl_audit import FILE_NAME
from tether.node.audit_forwarding import AuditBacklog
from tether.testing.cluster import RunningCluster, start_cluster, start_proxy, wait_for

ROLE = """kind: role
version: v7
metadata:
  name: {name}
spec:
  allow:
    logins: [ubuntu]
"""


@contextlib.contextmanager
def audit_log_down(cluster: RunningCluster) -> Iterator[pathlib.Path]:
    """The cluster's audit file cannot be written while the block runs."""
    path = cluster.data_dir / "log" / FILE_NAME
    saved = path.with_name("events.saved")
    had_events = path.exists()
    if had_events:
        path.rename(saved)
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()
        if had_events:
            saved.rename(path)


def recorded(cluster: RunningCluster, event_type: str) -> list[dict[str, object]]:
    found = cluster.tetherctl("audit", "search", f"--type={event_type}", "--format=json")
    return list(json.loads(found.stdout))


def create_role(
    cluster: RunningCluster, tmp_path: pathlib.Path, name: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(ROLE.format(name=name))
    return cluster.tetherctl("create", "-f", str(spec), check=check)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("refuse"), "refuse")
    try:
        running.add_user("alice", "correct horse battery", roles=["access"])
        yield running
    finally:
        running.stop()


def test_admin_change_is_refused_while_the_audit_log_cannot_record_it(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    with audit_log_down(cluster):
        refused = create_role(cluster, tmp_path, "unaudited", check=False)
        assert refused.returncode == 1
        assert "refused: the audit log could not record resource.created" in refused.stderr
        assert "jsonl-audit" in refused.stderr  # the sink that failed is named
        # the change did not happen: nobody can see or use a role nobody recorded
        missing = cluster.tetherctl("get", "role/unaudited", check=False)
        assert missing.returncode == 1, missing.stdout
    create_role(cluster, tmp_path, "audited")
    names = [e["name"] for e in recorded(cluster, "resource.created")]
    assert "audited" in names
    assert "unaudited" not in names
    assert "plugin 'jsonl-audit' failed in tether_audit_events" in cluster.log_text()


def test_auditor_searching_an_unreadable_audit_log_is_told_why(cluster: RunningCluster) -> None:
    with audit_log_down(cluster) as path:
        found = cluster.tetherctl("audit", "search", check=False)
    assert found.returncode == 1
    assert f"cannot read the audit log {path}: Is a directory" in found.stderr


def test_user_login_is_refused_while_the_audit_log_cannot_record_it(
    cluster: RunningCluster,
) -> None:
    with audit_log_down(cluster):
        refused = cluster.login("alice", "correct horse battery", check=False)
        assert refused.returncode == 1
        assert "the audit log could not record" in refused.stderr
        profile = cluster.user_home("alice")
        assert not any(profile.rglob("*-cert.pub")), "a certificate was handed out unaudited"
    cluster.login("alice", "correct horse battery")
    assert [e["user"] for e in recorded(cluster, "user.login")][-1] == "alice"


def test_signup_is_refused_while_the_audit_log_cannot_record_it(cluster: RunningCluster) -> None:
    added = cluster.tetherctl("users", "add", "newcomer-nina", "--roles=access")
    token = re.search(r"--token=(\S+)", added.stdout)
    assert token, added.stdout

    def signup() -> subprocess.CompletedProcess[str]:
        return cluster.tether(
            "newcomer-nina",
            "signup",
            f"--proxy={cluster.proxy_addr}",
            f"--token={token.group(1)}",
            "--password-stdin",
            f"--ca-pin={cluster.ca_pin}",
            input="ninas own password\n",
            check=False,
        )

    with audit_log_down(cluster):
        refused = signup()
        assert refused.returncode == 1
        assert "the audit log could not record" in refused.stderr
    # the password was not set and the token was not spent: the same sign-up works now
    assert cluster.login("newcomer-nina", "ninas own password", check=False).returncode == 1
    assert signup().returncode == 0, "the refused sign-up spent its token"
    cluster.login("newcomer-nina", "ninas own password")
    changes = recorded(cluster, "user.password.change")
    assert [(e["user"], e["success"]) for e in changes][-1] == ("newcomer-nina", True)


def test_deleting_while_the_audit_log_is_down_leaves_the_resource(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    create_role(cluster, tmp_path, "kept")
    with audit_log_down(cluster):
        refused = cluster.tetherctl("rm", "role/kept", check=False)
        assert refused.returncode == 1
        assert "resource.deleted" in refused.stderr
    cluster.tetherctl("get", "role/kept")  # still there


async def test_a_hosts_events_wait_in_its_backlog_until_the_audit_log_is_back(
    cluster: RunningCluster,
) -> None:
    run = uuid.uuid4().hex
    backlog = AuditBacklog()

    def failures() -> int:
        return cluster.log_text().count("failed in tether_audit_events")

    async def arrived() -> list[int]:
        found = await trio.to_thread.run_sync(recorded, cluster, "ssh.session.start")
        return [int(str(e["seq"])) for e in found if e.get("run") == run]

    async with host_client(cluster) as api, trio.open_nursery() as nursery:
        with audit_log_down(cluster):
            before = failures()
            nursery.start_soon(backlog.forward, api.record_events)
            for seq in range(3):
                backlog.audit_nowait("ssh.session.start", {"user": "alice", "seq": seq, "run": run})
            # auth refuses the batch (HTTP 503) and the host keeps it, trying again
            with trio.fail_after(30):
                while failures() < before + 2:  # noqa: ASYNC110 (auth is another process)
                    await trio.sleep(0.1)
        with trio.fail_after(60):
            while len(await arrived()) < 3:  # noqa: ASYNC110
                await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert await arrived() == [0, 1, 2]  # in order, each once
    assert backlog.statistics() == {"queued": 0, "spooled": 0, "dropped": 0}


def test_a_proxys_refusals_wait_on_its_disk_until_the_audit_log_is_back(
    cluster: RunningCluster, tmp_path: pathlib.Path
) -> None:
    proxy = start_proxy(cluster, tmp_path / "proxy", "edge-proxy")
    context = ssl.create_default_context(cafile=str(cluster.data_dir / "keys" / "tls_ca.crt"))
    context.check_hostname = False

    def post_too_much(path: str) -> None:
        # an anonymous client posts a body over proxy_service.max_request_body (1 MiB)
        with httpx.Client(base_url=f"https://{proxy.proxy_addr}", verify=context) as web:
            answer = web.post(path, content=bytes(2 * 1024 * 1024))
        assert answer.status_code == 413, answer.text

    def refused_paths() -> list[str]:
        return [str(e["path"]) for e in recorded(cluster, "proxy.request.refused")]

    try:
        with audit_log_down(cluster):
            post_too_much("/webapi/sso/collect")
            # auth refuses the proxy's batch; the proxy keeps it and tries again
            wait_for(
                lambda: "proxy: cannot record 1 audit events" in proxy.log_text(),
                "the proxy to be refused by auth",
            )
            proxy.restart()  # stopping, it spools what auth would not take
            assert "kept on disk" in proxy.log_text()
            post_too_much("/webapi/trustedclusters/validate")
        # both refusals arrive, in order, each once: the first sent again after the restart
        wait_for(lambda: len(refused_paths()) >= 2, "the proxy's refusals to be recorded")
        assert refused_paths()[-2:] == ["/webapi/sso/collect", "/webapi/trustedclusters/validate"]
        assert len(refused_paths()) == 2
    finally:
        proxy.stop()


def test_with_on_failure_continue_changes_go_on_and_the_log_says_what_was_lost(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: pathlib.Path
) -> None:
    lenient = start_cluster(
        tmp_path_factory.mktemp("continue"),
        "lenient",
        config={"auth_service": {"audit": {"on_failure": "continue"}}},
    )
    try:
        with audit_log_down(lenient):
            create_role(lenient, tmp_path, "unaudited")
        lenient.tetherctl("get", "role/unaudited")
        assert "plugin 'jsonl-audit' failed in tether_audit_events" in lenient.log_text()
    finally:
        lenient.stop()
    shutil.rmtree(lenient.directory, ignore_errors=True)
