"""``benchmarks/backends.py`` at tiny sizes: its report's schema, and its logins through real
``tetherd`` auth servers and proxies.

Benchmarks measure, tests do not (benchmarks/README.md): nothing here asserts a speed, only
that every login measured ended with certificates, and went where the configuration sends it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import sys
from types import ModuleType

import pytest
import trio

from tether.testing.postgres import available, postgres_database

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.slow


def _load(name: str) -> ModuleType:
    """Load a harness as run_all.py does: from its path, registered under its name."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


backends = _load("backends")


def test_a_run_on_sqlite_reports_logins_and_says_two_auth_servers_are_not_possible(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "STORES", ("sqlite",))
    out = tmp_path / "backends.json"
    results_dir = tmp_path / "results"
    argv = ["--json", str(out), "--results-dir", str(results_dir)]
    argv += ["--writes", "20", "--watch-events", "5"]
    argv += ["--login-clients", "1,2", "--login-seconds", "0.5"]
    assert backends.main(argv) == 0

    report = json.loads(out.read_text())
    assert report["figures"]["sqlite"]["writes_per_s"] > 0
    logins = report["logins"]
    assert logins["clients"] == [1, 2]
    assert logins["password_hash"]["algorithm"] == "argon2id"
    assert logins["password_hash"]["verify_cpu_ms_here"] > 0
    assert logins["cpu"]["cores"] >= 1
    sqlite = logins["figures"]["sqlite"]
    assert set(sqlite) == {"one_auth", "two_auth"}
    assert sqlite["two_auth"].startswith("n/a")
    for clients in ("1", "2"):
        figure = sqlite["one_auth"][clients]
        assert figure["errors"] == 0, figure["first_errors"]
        assert figure["logins"] > 0 and figure["by_proxy"] == {"proxy-1": figure["logins"]}
        assert figure["logins_per_s"] > 0
        assert set(figure["cpu_percent"]) == {"auth-1", "proxy-1", "clients"}
    shown = backends.table(report)
    assert "sqlite, 1 auth" in shown and "one password check (argon2id m=" in shown
    index = (results_dir / "README.md").read_text()
    assert "logins/s with 2 clients" in index


@pytest.mark.skipif(available() is not None, reason=str(available()))
def test_two_auth_servers_take_logins_through_one_proxy_and_through_two(
    tmp_path: pathlib.Path,
) -> None:
    with postgres_database("tether_test_bench") as url:
        figures = trio.run(
            functools.partial(
                backends.logins.store_logins,
                url,
                tmp_path,
                two_auth_servers=True,
                clients=(2,),
                seconds=0.5,
            )
        )
    assert set(figures) == {"one_auth", "two_auth_one_proxy", "two_auth_two_proxies"}
    for setup in figures.values():
        assert setup["2"]["errors"] == 0, setup["2"]["first_errors"]
        assert setup["2"]["logins"] > 0
    one_proxy = figures["two_auth_one_proxy"]["2"]
    assert set(one_proxy["cpu_percent"]) == {"auth-1", "auth-2", "proxy-2", "clients"}
    two_proxies = figures["two_auth_two_proxies"]["2"]
    # the clients take the proxies in turn: each carried logins
    assert set(two_proxies["by_proxy"]) == {"proxy-2", "proxy-3"}
    assert min(two_proxies["by_proxy"].values()) > 0
