"""Every block of commands in the documentation, and the test that runs it.

``TESTED_BY`` names, for each shell block of every page (``doc_sections.shell_blocks``), the test
that runs it; ``tests/test_docs.py`` checks it both ways, so a new block without a test fails the
suite, and so does an entry for a block that is gone. Most blocks are run as written by
:class:`DocRun` (for the test named here); the few that cannot run inside the suite (installing
Tether, running the suite itself) name the scenario tests that do what they do.

:class:`DocRun` types a page's commands into a shell on this machine, in order, as the page's
readers would, with only what differs between their machines and this one filled in:

- every host a page names (``proxy.example.com:3080``) is an address of 127/8 of its own, so
  each keeps the default ports without meeting another test's;
- ``sha256:...`` is the CA pin, and ``TOKEN`` (or ``--token=...``) the token, that an earlier
  command printed: read from its output, so a command that stops printing them fails here;
- ``tetherd configure > FILE`` is followed by the edit the page asks for (its host's address,
  data directory and name); a ``tetherd start`` without a file runs with that host's edited
  ``tetherd configure`` output, which is what ``tetherd start`` runs without one;
- ``tetherd start`` runs in the background until it is up, and stops at the end;
- passwords are typed at the prompt, on a terminal, as a person types them;
- ``tether ssh -N`` runs beside the block's other commands, and gets Ctrl-C at its end;
- a ``console`` block is a transcript: its ``$ `` lines are typed, and the lines it shows after
  one must begin as the command's output does (an ``Error`` line: the command must fail).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from doc_sections import CodeBlock, code_blocks, shell_blocks
from tether.datadir import PROCESS_FILE
from tether.testing.cluster import stop_process
from tether.testing.terminal import Step, run_in_terminal

PASSWORD = "correct horse battery staple"

README_RUN = "tests/test_docs.py::test_newcomer_follows_the_readme_from_one_cluster_to_ssh"
GUIDE_RUN = "tests/test_docs.py::test_admins_and_a_root_user_follow_the_trusted_clusters_guide"
SSH_RUN = "tests/test_docs.py::test_openssh_user_types_the_commands_of_the_ssh_page"
GUIDE = "docs/trusted-clusters.md"
SSH_PAGE = "docs/ssh.md"
OPERATING = "docs/operating.md"
DATABASES = "docs/databases.md"
DB_TESTS = "plugins/tether-db/tests/test_db_through_leaf.py::"
KUBERNETES = "docs/kubernetes.md"
KUBE_TESTS = "plugins/tether-kube/tests/test_kube_through_leaf.py::"
SYSTEMD_TESTS = tuple(
    f"tests/test_systemd_unit.py::{name}"
    for name in (
        "test_install_systemd_writes_the_unit_and_says_how_to_start_it",
        "test_systemd_accepts_the_printed_unit",
        "test_printed_unit_starts_tetherd_and_systemctl_stop_stops_it_cleanly",
    )
)

#: (page, section, index of the shell block in its section) -> the tests that run it
TESTED_BY: dict[tuple[str, str, int], tuple[str, ...]] = {
    ("README.md", "Tether", 0): (
        "tests/test_docs.py::test_newcomer_installs_tether_and_the_ssh_plugin_as_the_readme_says",
        "plugins/tether-ssh/tests/test_demo.py::"
        "test_newcomer_runs_the_demo_and_reaches_the_leaf_node_through_the_root",
        "tests/test_docs.py::test_the_readme_test_command_runs_this_suite",
    ),
    ("README.md", "A single cluster, step by step", 0): (README_RUN,),
    ("README.md", "A single cluster, step by step", 1): (README_RUN,),
    ("README.md", "SSH access (plugins/tether-ssh)", 0): (README_RUN,),
    (GUIDE, "Step 1: the leaf's role and the root user's login", 0): (GUIDE_RUN,),
    (GUIDE, "Step 1: the leaf's role and the root user's login", 1): (GUIDE_RUN,),
    (GUIDE, "Step 2: the invitation, on the root", 0): (GUIDE_RUN,),
    (GUIDE, "Step 3: the trusted_cluster, on the leaf", 0): (GUIDE_RUN,),
    (GUIDE, "Step 4: use the leaf, as a root user", 0): (GUIDE_RUN,),
    (GUIDE, "Step 5: manage access, on the root", 0): (GUIDE_RUN,),
    (GUIDE, "High availability: several root proxies", 0): (GUIDE_RUN,),
    (SSH_PAGE, "Logins", 0): (SSH_RUN,),
    (SSH_PAGE, "-o Option=value", 0): (SSH_RUN,),
    (SSH_PAGE, "-o Option=value", 1): (SSH_RUN,),
    (SSH_PAGE, "Port forwarding: -L, -R, -D, -N", 0): (SSH_RUN,),
    (SSH_PAGE, "Several nodes at once", 0): (SSH_RUN,),
    # systemd does not run here: the unit is verified by systemd-analyze, and its ExecStart run
    # and stopped as systemctl would
    (OPERATING, "Running tetherd under systemd", 0): SYSTEMD_TESTS,
    (OPERATING, "Running tetherd under systemd", 1): SYSTEMD_TESTS,
    (OPERATING, "Is everything connected?", 0): (
        "tests/test_status.py::test_root_admin_sees_the_ca_pins_the_proxy_the_node_and_the_leaf_online",
    ),
    # the database pages' commands are typed by the scenario tests of the plugin, against
    # private PostgreSQL and MariaDB servers set up with the files auth sign wrote
    (DATABASES, "The database service", 0): (
        DB_TESTS + "test_root_user_lists_the_leafs_databases_with_the_users_their_roles_allow",
    ),
    (DATABASES, "Certificates for the database server", 0): (
        DB_TESTS + "test_root_user_reaches_leaf_postgres_with_psql_through_a_local_tunnel",
        DB_TESTS + "test_root_user_reaches_leaf_mariadb_with_tether_db_connect",
    ),
    (DATABASES, "Using a database", 0): (
        DB_TESTS + "test_root_user_lists_the_leafs_databases_with_the_users_their_roles_allow",
        DB_TESTS + "test_tether_db_connect_runs_psql_and_the_leaf_audits_each_query",
        DB_TESTS + "test_root_user_reaches_leaf_postgres_with_psql_through_a_local_tunnel",
        DB_TESTS + "test_a_user_configures_a_gui_client_and_logs_out",
    ),
    # the Kubernetes page's commands are typed by the scenario tests of the plugin, against a
    # real API server (tether.testing.kube)
    (KUBERNETES, "The Kubernetes service", 0): (
        KUBE_TESTS + "test_root_user_lists_the_leafs_kubernetes_clusters",
    ),
    (KUBERNETES, "Using a cluster", 0): (
        KUBE_TESTS + "test_root_user_lists_the_leafs_kubernetes_clusters",
        KUBE_TESTS + "test_root_user_creates_and_lists_configmaps_in_the_leafs_cluster",
        KUBE_TESTS + "test_kube_logout_removes_only_tethers_contexts",
    ),
    # systemctl does not run here: the scenario stops the cluster's tetherd, migrates, and
    # starts it on the new store
    ("docs/high-availability.md", "Moving a cluster to PostgreSQL or etcd, backing it up", 0): (
        "tests/test_migrate.py::test_admin_moves_a_cluster_from_sqlite_to_a_shared_store",
        "tests/test_migrate.py::test_admin_backs_a_cluster_up_and_restores_it",
    ),
    ("README.md", "Output for scripts, shell completion, progress", 0): (
        "tests/test_shell_completion.py::test_bash_completes_resource_names_with_the_printed_script",
        "tests/test_shell_completion.py::test_user_prints_the_completion_script_of_each_shell",
    ),
}


def blocks_run_by(test: str) -> list[CodeBlock]:
    """The shell blocks ``TESTED_BY`` gives to ``test`` (``tests/test_docs.py::NAME``), in the
    order of their pages."""
    return [block for block in shell_blocks() if test in TESTED_BY.get(block.ref, ())]


def the_block(page: str, section: str, language: str, index: int = 0) -> str:
    """The text of a page's code block: a file a page shows, for the commands that use it."""
    for block in code_blocks(page):
        if (block.section, block.language, block.index) == (section, language, index):
            return block.text
    raise AssertionError(f"{page} has no {language} block {index} in {section!r}")


@attrs.define
class Host:
    """A machine a page names, simulated here: an address and a directory of its own."""

    name: str
    addr: str
    directory: pathlib.Path

    @property
    def data_dir(self) -> pathlib.Path:
        return self.directory / "data"

    def edit_config(self, text: str) -> str:
        """What a reader changes in ``tetherd configure``'s output for this host: its name, its
        data directory, and its addresses in place of the defaults' loopback and any-address."""
        text = re.sub(r"^nodename: .*$", f"nodename: {self.name}", text, flags=re.M)
        text = re.sub(r"^data_dir: .*$", f"data_dir: {self.data_dir}", text, flags=re.M)
        text = re.sub(
            r"^(\s*listen_addr: )(?:127\.0\.0\.1|0\.0\.0\.0):",
            rf"\g<1>{self.addr}:",
            text,
            flags=re.M,
        )
        settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        left = [line for line in settings if re.search(r"\b(127\.0\.0\.1|0\.0\.0\.0):", line)]
        assert not left, f"tetherd configure printed addresses this edit misses: {left}"
        assert f"data_dir: {self.data_dir}" in settings, "tetherd configure printed no data_dir"
        return text


@attrs.define
class Person:
    """Who types a block: their home directory holds their login (``~/.tether``)."""

    name: str
    home: pathlib.Path


@attrs.define
class Ran:
    """A command as typed, as run (placeholders filled in), its exit status and output."""

    typed: str
    command: str
    status: int
    output: str


def _commands(block: CodeBlock) -> list[tuple[str, list[str]]]:
    """The commands of a block, each with the output the page shows for it: in a ``console``
    transcript, the lines after a ``$ `` line; in a shell block, none (continuation lines
    joined, comment lines dropped)."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    lines = [line for line in joined.splitlines() if line.strip()]
    if block.language != "console":
        return [(line, []) for line in lines if not line.lstrip().startswith("#")]
    commands: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{block.page}:{block.line}: output before any $ command"
            commands[-1][1].append(line)
    return commands


def _local_ports(words: Sequence[str]) -> list[int]:
    """The ports a ``tether ssh`` command line listens on here (``-L``, ``-D`` and their
    ``-o`` forms), or on the node for ``-R`` with a port: all on loopback, on this machine."""
    ports = []
    for flag, value in itertools.pairwise(words):
        spec = value
        if flag == "-o":
            option, _, spec = value.partition("=")
            if option not in ("LocalForward", "RemoteForward", "DynamicForward"):
                continue
            spec = spec.split()[0]
        elif flag not in ("-L", "-D", "-R"):
            continue
        parts = spec.split(":")
        port = parts[1] if len(parts) in (2, 4) else parts[0]
        if port.isdigit() and int(port):
            ports.append(int(port))
    return ports


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@attrs.define
class DocRun:
    """A page's commands, typed on this machine in order; see the module's docstring.

    :param addresses: each ``host:port`` a page names -> where it is here.
    :param config_hosts: each configuration file a page writes -> the host it is for.
    :param new_hosts: the hosts that ``tetherd start`` without ``-c`` runs on, in order.
    :param sessions: a command (as typed, placeholders left) -> the lines typed into it once
        it runs, for the commands that open an interactive session.
    """

    workdir: pathlib.Path
    people: dict[str, Person]
    addresses: dict[str, str] = attrs.field(factory=dict)
    config_hosts: dict[str, Host] = attrs.field(factory=dict)
    new_hosts: list[Host] = attrs.field(factory=list)
    sessions: dict[str, Sequence[Step]] = attrs.field(factory=dict)
    replacements: dict[str, str] = attrs.field(factory=dict)
    ca_pin: str | None = None
    tokens: dict[str, str] = attrs.field(factory=dict)
    daemons: list[tuple[str, subprocess.Popen[bytes]]] = attrs.field(factory=list)
    forwards: list[tuple[str, subprocess.Popen[bytes]]] = attrs.field(factory=list)

    # --- the environment ------------------------------------------------------------------

    def env(self, person: Person) -> dict[str, str]:
        """A login shell's environment for ``person``, with this Python's programs first."""
        bin_dir = os.path.dirname(sys.executable)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("TETHER_") and key not in ("PYTEST_CURRENT_TEST", "COLUMNS")
        }
        return {**env, "HOME": str(person.home), "PATH": f"{bin_dir}:{env.get('PATH', '')}"}

    # --- filling in what differs here ------------------------------------------------------

    def fill_in(self, text: str) -> str:
        """``text`` with the page's hosts, CA pin and tokens made this machine's."""
        for typed, here in {**self.addresses, **self.replacements}.items():
            text = text.replace(typed, here)
        if "sha256:..." in text:
            assert self.ca_pin, f"no command printed a CA pin before {text!r}"
            text = text.replace("sha256:...", self.ca_pin)
        return re.sub(
            r"(--token=|\btoken: )(TOKEN|\.\.\.|abcd123-insecure-do-not-use-this)",
            lambda m: m.group(1) + self._token_for(text, m.group(2)),
            text,
        )

    def _token_for(self, text: str, placeholder: str) -> str:
        if text.startswith("tether signup"):
            kind = "signup"
        elif "kind: trusted_cluster" in text:
            kind = "trusted_cluster"
        else:
            roles = re.search(r"--roles=(\S+)", text)
            kind = roles.group(1) if roles else "node"
        assert kind in self.tokens, f"{placeholder} in {text!r}: no command printed a {kind} token"
        return self.tokens[kind]

    def learn(self, command: str, output: str) -> None:
        """What a later command takes from this one's output: CA pins and tokens."""
        pin = re.search(r"sha256:[0-9a-f]{64}", output)
        if pin and self.ca_pin is None:
            self.ca_pin = pin.group(0)
        words = shlex.split(command, comments=True)
        if "tokens" in words and "add" in words:
            kind = next((w.split("=", 1)[1] for w in words if w.startswith("--type=")), "")
            token = re.search(r"\b[0-9a-f]{32}\b", output)
            assert token, f"{command!r} printed no token:\n{output}"
            self.tokens[kind] = token.group(0)
        if "users" in words and "add" in words:
            token = re.search(r"--token=([0-9a-f]+)", output)
            assert token, f"{command!r} printed no sign-up command:\n{output}"
            self.tokens["signup"] = token.group(1)

    def write_file(self, name: str, text: str) -> pathlib.Path:
        """A file the page shows (a role, a trusted_cluster), as the reader saves it."""
        path = self.workdir / name
        path.write_text(self.fill_in(text))
        return path

    # --- running ------------------------------------------------------------------------

    def run_block(self, block: CodeBlock, person: str) -> list[Ran]:
        """Type every command of ``block`` as ``person``. Each must succeed, unless the page
        shows it failing (an ``Error``); the lines a transcript shows must begin as shown."""
        results = []
        for typed, shown in _commands(block):
            result = self.run(typed, person)
            where = f"{block.page}:{block.line} ({block.section}): `{typed}`"
            said = f"\nran: {result.command}\n{result.output}"
            fails = any(re.match(r"(?i)error\b", line) for line in shown)
            assert (result.status != 0) == fails, f"{where} exited {result.status}{said}"
            for line in shown:
                start = line.split()[0]
                assert start in result.output, f"{where} printed no {start!r} as shown{said}"
            results.append(result)
        return results

    def end_block(self) -> None:
        """Press Ctrl-C in each forward a block left running (``tether ssh -N``): it must end
        with 130, as the page says."""
        for typed, process in self.forwards:
            process.send_signal(signal.SIGINT)
            status = process.wait(timeout=30)
            assert status == 130, f"`{typed}` exited {status} on Ctrl-C"
        self.forwards.clear()

    def run(self, typed: str, person: str) -> Ran:
        """Type one command as ``person``: daemons start in the background and are waited for."""
        command = self.fill_in(typed)
        who = self.people[person]
        words = shlex.split(command, comments=True)
        if words[:2] == ["tetherd", "start"]:
            result = self._start_daemon(typed, command, who)
        elif words[:2] == ["tether", "ssh"] and "-N" in words:
            result = self._start_forward(typed, command, words, who)
        else:
            script = next((s for t, s in self.sessions.items() if typed.startswith(t)), ())
            status, output = run_in_terminal(
                ["bash", "-c", command],
                env=self.env(who),
                cwd=self.workdir,
                answers={b"assword: ": PASSWORD},
                script=script,
                timeout=120,
            )
            result = Ran(typed, command, status, output)
            if words[:2] == ["tetherd", "configure"] and ">" in words:
                target = words[words.index(">") + 1]
                config = self.workdir / target
                config.write_text(self.config_hosts[target].edit_config(config.read_text()))
        self.learn(command, result.output)
        return result

    def _start_daemon(self, typed: str, command: str, who: Person) -> Ran:
        words = shlex.split(command, comments=True)
        config = next((words[i + 1] for i, w in enumerate(words) if w in ("-c", "--config")), None)
        if config is None:
            host = self.new_hosts.pop(0)
            host.directory.mkdir(parents=True, exist_ok=True)
            printed = subprocess.run(
                ["tetherd", "configure"], env=self.env(who), capture_output=True, check=True
            ).stdout.decode()
            config_path = host.directory / "tether.yaml"
            config_path.write_text(host.edit_config(printed))
            command = f"{command} -c {shlex.quote(str(config_path))}"
        else:
            host = self.config_hosts[config]
        host.directory.mkdir(parents=True, exist_ok=True)
        log_path = host.directory / "tetherd.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(who),
                cwd=self.workdir,
            )
        self.daemons.append((host.name, process))
        deadline = time.monotonic() + 60
        while not self._is_up(host, process):
            output = log_path.read_text(errors="replace")
            if process.poll() is not None or time.monotonic() > deadline:
                return Ran(typed, command, process.returncode or -1, output)
            time.sleep(0.1)
        return Ran(typed, command, 0, log_path.read_text(errors="replace"))

    def _start_forward(self, typed: str, command: str, words: list[str], who: Person) -> Ran:
        """``tether ssh -N``: its forwards last until Ctrl-C, so it runs beside the commands
        that use them until the block ends; up once it listens, or printed the port the node
        chose (``-R 0:...``)."""
        log_path = self.workdir / f"forward-{len(self.forwards)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(who),
                cwd=self.workdir,
            )
        self.forwards.append((typed, process))
        ports = _local_ports(words)
        deadline = time.monotonic() + 60
        while True:
            output = log_path.read_text(errors="replace")
            up = all(_listens(port) for port in ports) if ports else "port" in output
            if up:
                return Ran(typed, command, 0, output)
            if process.poll() is not None or time.monotonic() > deadline:
                return Ran(typed, command, process.returncode or -1, output)
            time.sleep(0.1)

    @staticmethod
    def _is_up(host: Host, process: subprocess.Popen[bytes]) -> bool:
        try:
            info = json.loads((host.data_dir / PROCESS_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return False
        return bool(info.get("pid") == process.pid)

    def stop(self) -> dict[str, int]:
        """Stop every daemon the page started, the last started first (SIGTERM, as systemd
        does); returns each host's exit status."""
        for _, process in self.forwards:
            stop_process(process)
        self.forwards.clear()
        statuses = {}
        for name, process in reversed(self.daemons):
            statuses[name] = stop_process(process, signal.SIGTERM)
        self.daemons.clear()
        return statuses


def run_blocks(
    run: DocRun,
    blocks: Sequence[CodeBlock],
    who: Mapping[tuple[str, str, int], str],
    after: Mapping[tuple[str, str, int], Callable[[list[Ran]], None]] | None = None,
) -> None:
    """Run ``blocks`` in order, each as the person ``who`` names, then its check in ``after``."""
    for block in blocks:
        results = run.run_block(block, who[block.ref])
        if after and block.ref in after:
            after[block.ref](results)
        run.end_block()
