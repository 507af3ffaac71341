"""``htpasswd``: a Tether identity connector for users of an Apache htpasswd file.

An example of a third-party connector, written against the documented hook only
(``docs/connectors.md``). Settings, in ``tether.yaml``::

    plugins:
      settings:
        htpasswd:
          file: /etc/tether/htpasswd        # written with `htpasswd -B` (bcrypt)
          roles: {alice: [access, editor]}  # per user; others get default_roles
          default_roles: [access]

Users log in with ``tether login --auth=htpasswd --user=alice``; their login is their name.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tether.api import AccessDenied, ConfigError, hookimpl

if TYPE_CHECKING:  # every command-line start loads this module: auth alone logs users in
    from tether.api import Config, ConnectorContext, LoginIdentity

_settings: dict[str, Any] = {}


@functools.cache
def _dummy() -> bytes:
    """Checked when the user is unknown too, so the time taken does not tell who exists."""
    import bcrypt  # here, not at the top: every tether command loads plugins, auth alone logs in

    return bcrypt.hashpw(b"dummy", bcrypt.gensalt())


def read_htpasswd(text: str) -> dict[str, bytes]:
    """User -> bcrypt hash; other hash schemes (MD5, SHA1, crypt) are refused as too weak."""
    users = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.strip().partition(":")
        if not sep or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise ConfigError(f"htpasswd line {number}: expected user:bcrypt-hash (htpasswd -B)")
        users[user] = hashed.encode()
    return users


class HtpasswdConnector:
    name = "htpasswd"

    async def authenticate_password(
        self, ctx: ConnectorContext, username: str, password: str
    ) -> LoginIdentity:
        import bcrypt
        import trio

        from tether.api import LoginIdentity

        text = await trio.Path(_settings["file"]).read_text()
        hashed = read_htpasswd(text).get(username)
        ok = await trio.to_thread.run_sync(bcrypt.checkpw, password.encode(), hashed or _dummy())
        if not ok or hashed is None:
            raise AccessDenied("invalid user name or password")
        roles: Mapping[str, list[str]] = _settings.get("roles", {})
        granted = roles.get(username, _settings.get("default_roles", []))
        return LoginIdentity(username, tuple(granted), {"logins": (username,)})


@hookimpl
def tether_configure(config: Config) -> None:
    settings = dict(config.plugins.settings_for("htpasswd"))
    if settings and not pathlib.Path(str(settings.get("file"))).is_file():
        raise ConfigError("plugins.settings.htpasswd.file must name an htpasswd file")
    _settings.clear()
    _settings.update(settings)  # no settings: the connector is not offered


@hookimpl
def tether_identity_connectors() -> list[HtpasswdConnector]:
    return [HtpasswdConnector()] if _settings else []
