"""Assemble the plugin manager: builtins first, then the ``tether`` entry-point group.

Builtins are plugins like any other (datasette's ``DEFAULT_PLUGINS``), so configuration can
disable one by name and a third-party distribution can replace it. Setting
``TETHER_DISABLE_PLUGIN_AUTOLOAD=1`` stops entry points from loading (as pytest's
``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), which keeps tests and broken installs debuggable.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from importlib import metadata
from typing import Any, TypeVar

import attrs
import pluggy

import tether
from tether import hookspecs
from tether.errors import PluginError

__all__ = [
    "AUTOLOAD_ENV",
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "TetherPluginManager",
    "autoload_enabled",
    "await_maybe",
    "call_each",
    "describe_plugins",
    "get_plugin_manager",
    "plugin_packages",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tether"
AUTOLOAD_ENV = "TETHER_DISABLE_PLUGIN_AUTOLOAD"

#: (name, object) of the plugins that ship inside the kernel distribution, the object written as
#: in an entry point: ``module`` or ``module:attribute`` (see :func:`_plugin_object`).
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("core-kinds", "tether.builtins.core_kinds"),
    ("sqlite", "tether.builtins.sqlite_backend"),
    ("jsonl-audit", "tether.builtins.jsonl_audit:JsonlAuditSink"),
    ("local", "tether.builtins.local_users"),
    ("role-maps", "tether.builtins.role_maps"),
    ("node-agent", "tether.builtins.node_agent"),
    ("core-services", "tether.builtins.core_services"),
)

T = TypeVar("T")


@attrs.frozen
class PluginInfo:
    """One row of ``tetherd plugins``."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]


class TetherPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution each plugin came from."""

    def __init__(self) -> None:
        super().__init__("tether")
        self.add_hookspecs(hookspecs)
        #: plugin name -> (distribution, version), for entry-point plugins
        self.distributions: dict[str, tuple[str, str]] = {}


def _plugin_object(loaded: object) -> object:
    """What to register for an object an entry point (or a builtin's) names: a module or any
    object as it is; a class is instantiated, so a plugin that keeps state (settings, files)
    has an instance of its own in each plugin manager, one per daemon."""
    return loaded() if isinstance(loaded, type) else loaded


def autoload_enabled() -> bool:
    """Whether installed plugins load: unless ``TETHER_DISABLE_PLUGIN_AUTOLOAD`` is set (to
    anything but empty, ``0``, ``false`` or ``no``)."""
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")


def get_plugin_manager(
    disabled: Iterable[str] = (), *, autoload: bool | None = None
) -> TetherPluginManager:
    """Build a plugin manager with the builtins and (unless turned off) installed plugins.

    :param disabled: plugin names not to load (builtin names or entry-point names).
    :param autoload: load the ``tether`` entry-point group; default: unless
        ``TETHER_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :raises PluginError: a plugin failed to import or implements a hook that does not exist;
        the message names the distribution.
    """
    blocked = set(disabled)
    pm = TetherPluginManager()
    for name, value in DEFAULT_PLUGINS:
        if name in blocked:
            pm.set_blocked(name)
            continue
        builtin = metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
        pm.register(_plugin_object(builtin.load()), name=name)
    if autoload is None:
        autoload = autoload_enabled()
    if autoload:
        builtin_names = {name for name, _ in DEFAULT_PLUGINS}
        seen: dict[str, str] = {}
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            if ep.name in builtin_names:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist!r} has the name of a builtin",
                    hint="rename its entry point; to replace the builtin, also list the "
                    f"builtin in plugins.disabled: [{ep.name}]",
                )
            if ep.name in seen:
                if seen[ep.name] == dist:  # the same distribution seen twice on sys.path
                    continue
                raise PluginError(
                    f"plugin name {ep.name!r} is used by distributions {seen[ep.name]!r} "
                    f"and {dist!r}",
                    hint="uninstall one of them",
                )
            seen[ep.name] = dist
            if ep.name in blocked:
                pm.set_blocked(ep.name)
                continue
            try:
                plugin = _plugin_object(ep.load())
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist!r} failed to import: "
                    f"{type(exc).__name__}: {exc}",
                    hint=f"reinstall it, or disable it with plugins.disabled: [{ep.name}]",
                ) from exc
            try:
                pm.register(plugin, name=ep.name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                # pluggy's validation messages span lines; a user sees one line
                detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist!r} cannot be registered: {detail}",
                    hint=f"upgrade it, or disable it with plugins.disabled: [{ep.name}]",
                ) from exc
            pm.distributions[ep.name] = (dist, ep.dist.version if ep.dist else "")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin_name = pm.get_name(exc.plugin) or repr(exc.plugin)
        dist, _ = pm.distributions.get(plugin_name, ("tether", ""))
        raise PluginError(
            f"plugin {plugin_name!r} from distribution {dist!r} implements an unknown hook: {exc}",
            hint=(
                "it was written for another version of Tether; upgrade one or the other, "
                f"or disable it with plugins.disabled: [{plugin_name}]"
            ),
        ) from exc
    return pm


def describe_plugins(pm: TetherPluginManager) -> list[PluginInfo]:
    """What is loaded and from where: the rows of ``tetherd plugins``."""
    kernel_version = tether.__version__
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist, version = pm.distributions.get(name, ("tether", kernel_version))
        hooks = tuple(
            sorted(
                hc.name for hc in pm.get_hookcallers(plugin) or () if hc.name.startswith("tether_")
            )
        )
        rows.append(PluginInfo(name=name, distribution=dist, version=version, hooks=hooks))
    return rows


def plugin_packages(pm: TetherPluginManager) -> frozenset[str]:
    """The top-level packages the loaded plugins live in (``tether``, ``tether_ssh``, ...):
    their loggers are Tether's own, logged at the configured severity."""
    packages = set()
    for _, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
        packages.add(module.partition(".")[0])
    return frozenset(packages)


async def await_maybe(value: T | Awaitable[T]) -> T:
    """Await ``value`` if a hook returned an awaitable, else return it (datasette's idiom)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def call_each(
    hook: pluggy.HookCaller,
    *,
    on_error: Callable[[str, BaseException], None] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Call every implementation of ``hook`` separately, awaiting awaitables.

    One failing implementation is logged with the plugin and hook named and does not stop the
    others (mitmproxy's ``safecall``): used for hooks such as audit sinks where one broken
    plugin must not silence the rest.
    """
    results = []
    for impl in reversed(hook.get_hookimpls()):
        try:
            value = impl.function(**{k: kwargs[k] for k in impl.argnames})
            results.append(await await_maybe(value))
        except Exception as exc:
            log.error(
                "plugin %r failed in %s: %s",
                impl.plugin_name,
                hook.name,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if on_error is not None:
                on_error(impl.plugin_name, exc)
    return results
