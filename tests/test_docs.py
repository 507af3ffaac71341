"""Every command the README and ``docs/`` show is run by a test, and the pages say only what exists.

The blocks of commands are run as written by :class:`doc_commands.DocRun`, against real daemons
on addresses of 127/8 (each host a page names gets one of its own), with passwords typed on a
terminal; ``doc_commands.TESTED_BY`` names the test of every block, and the first tests here
check it both ways, so a page that gains a block without a test fails the suite. Assertions are
on exit statuses and on what each step must have done, not on the programs' exact output.
"""

from __future__ import annotations

import ast
import configparser
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from doc_commands import (
    GUIDE,
    GUIDE_RUN,
    PASSWORD,
    README_RUN,
    SSH_PAGE,
    SSH_RUN,
    TESTED_BY,
    DocRun,
    Host,
    Person,
    Ran,
    blocks_run_by,
    run_blocks,
    the_block,
)
from doc_sections import ROOT, SHELL_LANGUAGES, anchors, code_blocks, mentions, pages, shell_blocks
from tether.testing.accounts import can_create_accounts, os_account
from tether.testing.cluster import (
    RunningCluster,
    run_cli,
    start_cluster,
    start_node,
    wait_for,
)
from tether.testing.http import free_port, loopback_address, serve_http
from tether.testing.trusted_clusters import connection

needs_accounts = pytest.mark.skipif(
    not can_create_accounts(), reason="sessions run as OS accounts (needs root and useradd)"
)
needs_openssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")

VISITOR_YAML = the_block(GUIDE, "Step 1: the leaf's role and the root user's login", "yaml")
TRUSTED_CLUSTER_YAML = the_block(GUIDE, "Step 3: the trusted_cluster, on the leaf", "yaml")


def resources(text: str) -> list[Any]:
    """The resources a ``--format=json`` listing printed: a list, or a list resource's items."""
    data = json.loads(text)
    items: list[Any] = data["items"] if isinstance(data, dict) else data
    return items


def output_of(results: list[Ran], typed_start: str) -> str:
    """The output of the one command of a block typed as ``typed_start...``."""
    found = [r.output for r in results if r.typed.startswith(typed_start)]
    assert len(found) == 1, [r.typed for r in results]
    return found[0]


# --- the registry, both ways ----------------------------------------------------------------


def test_every_block_of_commands_in_the_docs_names_the_test_that_runs_it() -> None:
    blocks = {block.ref: block for block in shell_blocks()}
    untested = [
        f"{b.page}:{b.line} ({b.section})" for ref, b in blocks.items() if ref not in TESTED_BY
    ]
    assert not untested, (
        "these blocks of commands have no test; run them in tests/test_docs.py (DocRun) or name "
        f"the test that does in tests/doc_commands.py TESTED_BY: {untested}"
    )
    gone = [ref for ref in TESTED_BY if ref not in blocks]
    assert not gone, f"TESTED_BY names blocks the pages no longer have: {gone}"


def test_every_test_the_registry_names_exists() -> None:
    for ref, tests in TESTED_BY.items():
        assert tests, ref
        for test in tests:
            path, _, name = test.partition("::")
            tree = ast.parse((ROOT / path).read_text())
            names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert name in names, f"{ref}: {test} does not exist"


def test_every_code_block_says_what_it_holds() -> None:
    """A block without a language could hold commands no test runs; ``text`` marks drawings."""
    unnamed = [
        f"{block.page}:{block.line}"
        for page in pages()
        for block in code_blocks(page)
        if not block.language
    ]
    assert not unnamed, f"code blocks without a language (sh, yaml, python, text...): {unnamed}"
    assert {b.language for b in shell_blocks()} <= SHELL_LANGUAGES


# --- the README's first two commands ---------------------------------------------------------


def test_newcomer_installs_tether_and_the_ssh_plugin_as_the_readme_says(
    tmp_path: pathlib.Path,
) -> None:
    """``pip install . ./plugins/tether-ssh`` as written, from the checkout: resolved and both
    distributions built, without installing (``--dry-run``: the suite already runs in an
    environment that has them); ``tetherd demo`` has its own tests (``TESTED_BY``)."""
    first = the_block("README.md", "Tether", "sh").splitlines()[0]
    install, _, demo = first.partition(" && ")
    assert demo == "tetherd demo"
    args = install.split()
    assert args[:2] == ["pip", "install"]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", *args, "--dry-run", "--quiet", "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installed = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert {"tether", "tether-ssh"} <= installed


def test_the_readme_test_command_runs_this_suite() -> None:
    """``pip install tox && tox``, which CI runs as it is: tox's default environment installs
    Tether with its test extras, the plugins and the tools the tests use, then this suite."""
    second = the_block("README.md", "Tether", "sh").splitlines()[1]
    assert second == "pip install tox && tox"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == second, "CI runs the README's test command, as written"
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert tox["tox"]["envlist"].strip() == "py311"
    env = tox["testenv"]
    assert env["extras"].strip() == "test"
    # this suite, in xdist workers; what follows `tox --` reaches pytest (a seed, `-n 0`)
    command = env["commands"].strip().split()
    assert command[0] == "pytest" and command[-1] == "{posargs}", command
    assert "-n" in command, "the README says the files run in pytest-xdist workers"
    for line in env["commands_pre"].strip().splitlines():
        script = line.split()[1].replace("{toxinidir}", str(ROOT))
        assert pathlib.Path(script).is_file(), line


# --- the README, from one cluster to SSH -----------------------------------------------------


SERVED = b"served through the forward\n"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(SERVED)))
        self.end_headers()
        self.wfile.write(SERVED)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web_page() -> Iterator[int]:
    """An HTTP server on 127.0.0.1, where the README's ``localhost:80`` is here."""
    with serve_http(_Page) as url:
        yield int(url.rsplit(":", 1)[1].strip("/"))


@needs_accounts
@needs_openssh
def test_newcomer_follows_the_readme_from_one_cluster_to_ssh(
    tmp_path: pathlib.Path, web_page: int
) -> None:
    proxy = Host("proxy", loopback_address(), tmp_path / "proxy")
    web_1 = Host("web-1", loopback_address(), tmp_path / "web-1")
    web_2 = Host("web-2", loopback_address(), tmp_path / "web-2")
    you = Person("you", tmp_path / "home")
    (you.home / ".ssh").mkdir(parents=True, mode=0o700)
    workdir = tmp_path / "work"
    (workdir / "etc" / "ssh").mkdir(parents=True)
    (workdir / "site").mkdir()
    (workdir / "site" / "index.html").write_text("<p>hello</p>\n")
    forwarded = loopback_address()

    def through_the_forward() -> str:
        with urllib.request.urlopen(f"http://{forwarded}:8080/", timeout=10) as answer:
            assert answer.read() == SERVED
        return "exit"

    run = DocRun(
        workdir,
        {"you": you},
        addresses={
            "proxy.example.com:3080": f"{proxy.addr}:3080",
            "auth.example.com:3025": f"{proxy.addr}:3025",
        },
        config_hosts={"tether.yaml": proxy, "node.yaml": web_2},
        new_hosts=[Host("proxy-2", loopback_address(), tmp_path / "proxy-2"), web_1],
        replacements={
            "/etc/ssh/": f"{workdir}/etc/ssh/",
            "-L 8080:localhost:80": f"-L {forwarded}:8080:localhost:{web_page}",
        },
        sessions={"tether ssh -L": [(b"$ ", through_the_forward)]},
    )
    run.write_file("visitor.yaml", VISITOR_YAML)
    blocks = blocks_run_by(README_RUN)
    single, more_proxies, ssh = (
        ("README.md", "A single cluster, step by step", 0),
        ("README.md", "A single cluster, step by step", 1),
        ("README.md", "SSH access (plugins/tether-ssh)", 0),
    )
    assert [b.ref for b in blocks] == [single, more_proxies, ssh]

    def one_cluster(results: list[Ran]) -> None:
        assert run.ca_pin and run.ca_pin in output_of(results, "tetherctl -c tether.yaml status")
        assert "ssh-" in (workdir / "etc" / "ssh" / "tether_user_ca.pub").read_text()
        status = json.loads(output_of(results, "tether status -f json"))
        assert '"alice"' in json.dumps(status), status
        assert "name: alice" in (workdir / "alice.yaml").read_text()

    def two_proxies(results: list[Ran]) -> None:
        config = str(workdir / "tether.yaml")
        listed = run_cli("tetherctl", "-c", config, "get", "proxies", "--format=json").stdout
        assert len(resources(listed)) == 2, listed

    def nodes(results: list[Ran]) -> None:
        listed = output_of(results, "tether ls")
        assert "web-1" in listed and "web-2" in listed, listed
        assert "load average" in output_of(results, "tether ssh alice@web-1 uptime")
        assert (pathlib.Path("~alice").expanduser() / "www" / "index.html").exists()
        assert "load average" in output_of(results, "ssh -F")

    try:
        with os_account("alice"):
            run_blocks(
                run,
                blocks,
                who=dict.fromkeys((single, more_proxies, ssh), "you"),
                after={single: one_cluster, more_proxies: two_proxies, ssh: nodes},
            )
        stopped = run.stop()
        assert set(stopped.values()) == {0}, stopped
    finally:
        run.stop()


# --- the trusted clusters guide --------------------------------------------------------------


def _logged_in(cluster: RunningCluster, person: Person) -> Person:
    run_cli(
        "tether",
        "login",
        f"--proxy={cluster.proxy_addr}",
        f"--user={person.name}",
        f"--ca-pin={cluster.ca_pin}",
        "--password-stdin",
        env={"TETHER_HOME": str(person.home / ".tether")},
        input=PASSWORD + "\n",
    )
    return person


@pytest.fixture
def guide_clusters(tmp_path: pathlib.Path) -> Iterator[tuple[RunningCluster, RunningCluster]]:
    """What the guide starts from: a root with a user ``myuser``, a leaf with ``leaf-node``,
    and an admin of each, logged in with ``editor``."""
    root = start_cluster(tmp_path / "root", "rootcluster.example.com")
    leaf = start_cluster(tmp_path / "leaf", "leafcluster.example.com")
    nodes = []
    try:
        nodes.append(start_node(leaf, tmp_path / "leaf-node", "leaf-node"))
        root.add_user("myuser", PASSWORD, roles=("access",), logins=("myuser",))
        for cluster in (root, leaf):
            cluster.add_user("admin", PASSWORD, roles=("editor",))
        yield root, leaf
    finally:
        for node in nodes:  # a node left running outlives the test run
            node.stop()
        leaf.stop()
        root.stop()


@needs_accounts
@needs_openssh
def test_admins_and_a_root_user_follow_the_trusted_clusters_guide(
    tmp_path: pathlib.Path, guide_clusters: tuple[RunningCluster, RunningCluster]
) -> None:
    root, leaf = guide_clusters
    shell = [(b"$ ", "echo tether-doc-$((6*7))"), (b"tether-doc-42", "exit")]
    run = DocRun(
        tmp_path / "work",
        {
            "root admin": _logged_in(root, Person("admin", tmp_path / "root-admin")),
            "leaf admin": _logged_in(leaf, Person("admin", tmp_path / "leaf-admin")),
            "myuser": Person("myuser", tmp_path / "myuser"),
        },
        addresses={"rootcluster.example.com:443": root.proxy_addr, "AUTH:3025": root.auth_addr},
        new_hosts=[Host("proxy-2", loopback_address(), tmp_path / "proxy-2")],
        sessions={"tether ssh visitor@leaf-node": shell, "tether config > ssh_config": shell},
        ca_pin=root.ca_pin,
    )
    run.workdir.mkdir()
    run.write_file("visitor.yaml", VISITOR_YAML)
    role, login, invite, trust, use, manage, more_proxies = (
        (GUIDE, "Step 1: the leaf's role and the root user's login", 0),
        (GUIDE, "Step 1: the leaf's role and the root user's login", 1),
        (GUIDE, "Step 2: the invitation, on the root", 0),
        (GUIDE, "Step 3: the trusted_cluster, on the leaf", 0),
        (GUIDE, "Step 4: use the leaf, as a root user", 0),
        (GUIDE, "Step 5: manage access, on the root", 0),
        (GUIDE, "High availability: several root proxies", 0),
    )
    who = {
        role: "leaf admin",
        login: "root admin",
        invite: "root admin",
        trust: "leaf admin",
        use: "myuser",
        manage: "root admin",
        more_proxies: "root admin",
    }
    blocks = blocks_run_by(GUIDE_RUN)
    assert [b.ref for b in blocks] == list(who)

    def invited(results: list[Ran]) -> None:
        run.write_file("trusted_cluster.yaml", TRUSTED_CLUSTER_YAML)

    def trusted(results: list[Ran]) -> None:
        assert "visitor" in output_of(results, "tetherctl rolemap test")
        wait_for(lambda: connection(root, "leafcluster.example.com") == "online", "the tunnel")

    def used(results: list[Ran]) -> None:
        assert "leafcluster.example.com" in output_of(results, "tether clusters")
        assert "leaf-node" in output_of(results, "tether ls --cluster=")
        assert "/home/visitor" in output_of(results, "tether ssh --cluster=")
        for session in ("tether ssh visitor@leaf-node", "tether config >"):
            assert "tether-doc-42" in output_of(results, session)

    def managed(results: list[Ran]) -> None:
        remote = resources(root.tetherctl("get", "rc", "--format=json").stdout)
        assert remote[0]["metadata"]["labels"] == {"env": "demo"}, remote

    def two_proxies(results: list[Ran]) -> None:
        listed = resources(root.tetherctl("get", "proxies", "--format=json").stdout)
        assert len(listed) == 2, listed

    try:
        with os_account("visitor"):
            run_blocks(
                run,
                blocks,
                who=who,
                after={
                    invite: invited,
                    trust: trusted,
                    use: used,
                    manage: managed,
                    more_proxies: two_proxies,
                },
            )
        stopped = run.stop()
        assert set(stopped.values()) == {0}, stopped
    finally:
        run.stop()


# --- tether ssh for OpenSSH users ----------------------------------------------------------

FORWARDER = """\
kind: role
version: v7
metadata: {name: forwarder}
spec:
  allow:
    logins: [visitor]
    node_labels: {'*': '*'}
  options:
    port_forwarding: true
"""


@pytest.fixture
def dev_nodes(tmp_path: pathlib.Path) -> Iterator[RunningCluster]:
    """The page's nodes: ``auth-node`` beside auth and ``tunnel-node`` in tunnel mode, both
    ``env=dev``; the user ``alice`` may forward ports as ``visitor``."""
    cluster = start_cluster(
        tmp_path / "main",
        "main",
        config={
            "nodename": "auth-node",
            "ssh_service": {
                "enabled": True,
                "listen_addr": "127.0.0.1:0",
                "labels": {"env": "dev"},
            },
        },
    )
    node = None
    try:
        node = start_node(cluster, tmp_path / "tunnel", "tunnel-node", labels={"env": "dev"})
        (tmp_path / "forwarder.yaml").write_text(FORWARDER)
        cluster.tetherctl("create", str(tmp_path / "forwarder.yaml"))
        cluster.add_user("alice", PASSWORD, roles=("forwarder",))
        yield cluster
    finally:
        if node is not None:
            node.stop()
        cluster.stop()


@needs_accounts
@needs_openssh
def test_openssh_user_types_the_commands_of_the_ssh_page(
    tmp_path: pathlib.Path, dev_nodes: RunningCluster, web_page: int
) -> None:
    you = _logged_in(dev_nodes, Person("alice", tmp_path / "home"))
    home = {"TETHER_HOME": str(you.home / ".tether")}
    wait_for(
        lambda: len(resources(run_cli("tether", "ls", "-f", "json", env=home).stdout)) == 2,
        "both nodes to be listed",
    )
    local, socks, remote = free_port(), free_port(), free_port()
    run = DocRun(
        tmp_path / "work",
        {"you": you},
        replacements={
            "8080": str(local),
            "1080": str(socks),
            "9000": str(remote),
            "127.0.0.1:3000": f"127.0.0.1:{web_page}",
            "127.0.0.1:80 ": f"127.0.0.1:{web_page} ",
            '127.0.0.1:80"': f'127.0.0.1:{web_page}"',
            "localhost:80/": f"localhost:{web_page}/",
        },
        sessions={
            "tether ssh -o ServerAliveInterval=30": [
                (b"$ ", "echo tether-doc-$((6*7))"),
                (b"tether-doc-42", "exit"),
            ]
        },
    )
    run.workdir.mkdir()
    logins, options, refused, forwarding, several = (
        (SSH_PAGE, "Logins", 0),
        (SSH_PAGE, "-o Option=value", 0),
        (SSH_PAGE, "-o Option=value", 1),
        (SSH_PAGE, "Port forwarding: -L, -R, -D, -N", 0),
        (SSH_PAGE, "Several nodes at once", 0),
    )
    blocks = blocks_run_by(SSH_RUN)
    assert [b.ref for b in blocks] == [logins, options, refused, forwarding, several]

    def through_the_forward(port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert answer.read() == SERVED

    def logged_in_as_visitor(results: list[Ran]) -> None:
        assert all(r.output.strip().endswith("visitor") for r in results), results

    def forwarded(results: list[Ran]) -> None:
        assert "tether-doc-42" in output_of(results, "tether ssh -o ServerAliveInterval")
        through_the_forward(local)

    def forwarded_every_way(results: list[Ran]) -> None:
        through_the_forward(local)
        assert SERVED.decode() in output_of(results, "curl --socks5-hostname")
        assert SERVED.decode() in output_of(results, "tether ssh -R")
        allocated = re.search(r"port (\d+)", output_of(results, "tether ssh -N -R 0:"))
        assert allocated, results
        through_the_forward(int(allocated.group(1)))

    try:
        with os_account("visitor"):
            run_blocks(
                run,
                blocks,
                who=dict.fromkeys([logins, options, refused, forwarding, several], "you"),
                after={
                    logins: logged_in_as_visitor,
                    options: forwarded,
                    forwarding: forwarded_every_way,
                },
            )
    finally:
        run.stop()


# --- what the pages name exists --------------------------------------------------------------

#: prints every command of the three programs, with the plugins' commands added as at start-up:
#: {"tetherctl auth export": {"options": {"--type": true, ...}, "commands": [...]}}, where an
#: option maps to whether it takes a value
COMMAND_TREE = """
import importlib, json
tree = {}
def walk(command, path):
    options = {"--help": False}
    for param in command.params:
        for name in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if name.startswith("-"):
                options[name] = not getattr(param, "is_flag", False) and not getattr(
                    param, "count", False
                )
    commands = getattr(command, "commands", {})
    tree[" ".join(path)] = {"options": options, "commands": sorted(commands)}
    for name, sub in commands.items():
        walk(sub, [*path, name])
for program in ("tether", "tetherctl", "tetherd"):
    cli = importlib.import_module(f"tether.cli.{program}").cli
    walk(cli.load_all(), [program])
print(json.dumps(tree))
"""

#: commands a page names that do not exist, and the page that says so: what a protocol plugin
#: would add (a Kubernetes or database plugin, which there is not yet)
NOT_YET = {
    ("docs/plugins.md", "tether kube"): "a kubeconfig-writing command of a Kubernetes plugin",
    ("docs/plugins.md", "tether proxy db"): "a database plugin's local listener",
    ("docs/plugins.md", "tether proxy echo"): "a subcommand a protocol plugin adds to the group",
}

PROGRAMS = ("tether", "tetherctl", "tetherd")
REPO_PATH = r"(plugins|contrib|docs|kernel|tests|scripts|benchmarks)/[^\s*]*"


def command_problems(text: str, tree: dict[str, dict[str, Any]]) -> list[str]:
    """What in the command line ``text`` names no command or option of its program."""
    words = [w.strip("[]") for w in text.split()]
    path = [words[0]]
    problems = []
    skip_value = False
    for word in words[1:]:
        if word in (">", "|", "&&", "<") or word.startswith("#"):
            break
        if skip_value or not word or word == "...":
            skip_value = False
            continue
        here = tree[" ".join(path)]
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            known = {
                option: takes
                for i in range(1, len(path) + 1)
                for option, takes in tree[" ".join(path[:i])]["options"].items()
            }
            if name not in known:
                problems.append(f"{' '.join(path)} has no option {name}")
            skip_value = known.get(name, False) and "=" not in word
        elif here["commands"]:
            choices = word.split("|")  # `get|rm|update`: each of them
            unknown = [choice for choice in choices if choice not in here["commands"]]
            if unknown:
                problems.append(f"{' '.join(path)} has no command {unknown[0]!r}")
                break
            path.append(choices[0])
    return problems


def test_every_command_the_docs_name_exists() -> None:
    """Commands the prose names (``tetherctl get rc``) and every command of the blocks: the
    programs, subcommands and options exist, with the installed plugins loaded."""
    printed = subprocess.run(
        [sys.executable, "-c", COMMAND_TREE], capture_output=True, text=True, check=True
    ).stdout
    tree: dict[str, dict[str, Any]] = json.loads(printed)
    named = [
        (m.page, m.line, m.text)
        for page in pages()
        for m in mentions(page)
        if m.kind == "code" and m.text.split(" ", 1)[0] in PROGRAMS and " " in m.text
    ]
    named += [
        (block.page, block.line, line.strip())
        for block in shell_blocks()
        for command in block.text.replace("\\\n", " ").splitlines()
        for line in command.split("&&")
        if line.strip().split(" ", 1)[0] in PROGRAMS
    ]
    problems, not_yet_seen = [], set(NOT_YET)
    for page, line, text in named:
        excused = [key for key in NOT_YET if key[0] == page and text.startswith(key[1])]
        not_yet_seen -= set(excused)
        if not excused:
            problems += [f"{page}:{line}: `{text}`: {p}" for p in command_problems(text, tree)]
    assert not problems, "\n".join(problems)
    assert not not_yet_seen, f"NOT_YET names commands no page names any more: {not_yet_seen}"


def page_anchors(path: pathlib.Path) -> set[str]:
    return anchors(path.relative_to(ROOT).as_posix())


def test_every_file_and_link_the_docs_name_exists() -> None:
    """Links resolve (to a heading, for an anchor), and every path of the repository a page
    names in code exists: from the root, or from a directory named before in that section."""
    missing = []
    for page in pages():
        bases: dict[str, list[pathlib.Path]] = {}
        for m in mentions(page):
            where = f"{m.page}:{m.line}"
            if m.kind == "link":
                target, _, anchor = m.text.partition("#")
                if re.match(r"[a-z]+:", target):
                    continue
                path = ((ROOT / page).parent / target).resolve() if target else ROOT / page
                if not path.exists():
                    missing.append(f"{where}: link to {m.text}")
                elif anchor and path.suffix == ".md" and anchor not in page_anchors(path):
                    missing.append(f"{where}: link to {m.text}: no such heading")
            elif re.fullmatch(REPO_PATH, m.text):
                dirs = bases.setdefault(m.section, [ROOT])
                if not any((base / m.text).exists() for base in dirs):
                    missing.append(f"{where}: {m.text}")
                elif (ROOT / m.text).is_dir():
                    dirs.append(ROOT / m.text)
    assert not missing, "the pages name what does not exist:\n" + "\n".join(missing)
