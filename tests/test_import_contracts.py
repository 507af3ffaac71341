"""The import contract "plugins import only tether.api and tether.testing" forbids every
other kernel module by name (import-linter has no "all but"): a kernel module added later
must be added to it, or plugins could import it unnoticed."""

from __future__ import annotations

import configparser
import pathlib

import tether

ROOT = pathlib.Path(__file__).resolve().parent.parent
ALLOWED = {"api", "testing"}


def test_plugins_contract_forbids_every_kernel_module_but_the_api_and_testing() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contract = config["importlinter:contract:plugins-import-only-the-api"]
    forbidden = set(contract["forbidden_modules"].split())
    kernel = pathlib.Path(tether.__file__).parent
    modules = {
        f"tether.{path.stem if path.is_file() else path.name}"
        for path in kernel.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    missing = modules - forbidden - {f"tether.{name}" for name in ALLOWED}
    assert not missing, f".importlinter: add {sorted(missing)} to the plugins' forbidden_modules"
    assert not forbidden & {f"tether.{name}" for name in ALLOWED}
