"""Keys and certificates of the current login, under ``TETHER_HOME`` (``~/.tether``).

Layout: ``current-profile`` names the active proxy; ``keys/<proxy>/`` holds the private key
(OpenSSH format for ``ssh``, PKCS#8 PEM for TLS), the SSH certificate, the X.509 certificate,
the cluster's X.509 CAs, a known-hosts file with the cluster's host CA, and ``profile.json``.
Every file is 0600 and every directory 0700, because the key is the user's login.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import ssl
from collections.abc import Sequence
from typing import Any

import attrs

from tether import pki
from tether.client.env import CLUSTER_ENV, HOME_ENV, LOGIN_ENV, PROXY_ENV, USER_ENV
from tether.errors import AccessDenied, TetherError

__all__ = [
    "CLUSTER_ENV",
    "HOME_ENV",
    "LOGIN_ENV",
    "PROXY_ENV",
    "USER_ENV",
    "Profile",
    "clear_profiles",
    "current_profile",
    "find_profile",
    "not_logged_in",
    "profile_ssl_context",
    "require_profile",
    "save_profile",
    "select_cluster",
    "tether_home",
]


def tether_home() -> pathlib.Path:
    return pathlib.Path(os.environ.get(HOME_ENV) or pathlib.Path.home() / ".tether").expanduser()


def _dir_name(proxy: str) -> str:
    return proxy.replace(":", "_").replace("/", "_")


def _write(path: pathlib.Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_secret_file(path, data.encode() if isinstance(data, str) else data)


@attrs.frozen
class Profile:
    """One login: where the files are and what the certificate says."""

    proxy: str
    directory: pathlib.Path
    insecure: bool
    ca_pin: str | None
    #: the cluster later commands target by default (``tether login --proxy=ROOT LEAF``);
    #: None for the cluster logged in to
    selected_cluster: str | None = None

    @property
    def cluster(self) -> str:
        """The cluster commands target: the selected one, else the one logged in to."""
        return self.selected_cluster or self.identity().cluster

    @property
    def private_key_file(self) -> pathlib.Path:
        return self.directory / "key"

    @property
    def tls_key_file(self) -> pathlib.Path:
        return self.directory / "tls.key"

    @property
    def ssh_cert_file(self) -> pathlib.Path:
        return self.directory / "key-cert.pub"

    @property
    def tls_cert_file(self) -> pathlib.Path:
        return self.directory / "tls.crt"

    @property
    def tls_ca_file(self) -> pathlib.Path:
        return self.directory / "cas.pem"

    @property
    def known_hosts_file(self) -> pathlib.Path:
        return self.directory / "known_hosts"

    def identity(self) -> pki.Identity:
        """The identity in the X.509 certificate (not re-verified: it is our own file)."""
        return pki.read_x509_identity(self.tls_cert_file.read_bytes())

    def trusted_cas(self) -> list[Any]:
        return pki.load_certs(self.tls_ca_file.read_bytes())


def save_profile(
    proxy: str,
    *,
    private_key: Any,
    ssh_cert: str,
    tls_cert_pem: str,
    tls_ca_pems: list[str],
    ssh_host_ca_lines: list[str],
    cluster: str,
    insecure: bool,
    ca_pin: str | None,
    home: pathlib.Path | None = None,
) -> Profile:
    """Write a login's files and make it the current profile."""
    home = home or tether_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    profile = Profile(
        proxy=proxy, directory=home / "keys" / _dir_name(proxy), insecure=insecure, ca_pin=ca_pin
    )
    _write(profile.private_key_file, pki.private_key_to_openssh(private_key))
    _write(profile.directory / "key.pub", pki.ssh_public_key_line(private_key.public_key()) + "\n")
    _write(profile.tls_key_file, pki.private_key_to_pem(private_key))
    _write(profile.ssh_cert_file, ssh_cert.strip() + "\n")
    _write(profile.tls_cert_file, tls_cert_pem)
    _write(profile.tls_ca_file, "".join(tls_ca_pems))
    _write(
        profile.known_hosts_file,
        "".join(pki.known_hosts_ca_line(line) + "\n" for line in ssh_host_ca_lines),
    )
    _write(
        profile.directory / "profile.json",
        json.dumps(
            {"proxy": proxy, "cluster": cluster, "insecure": insecure, "ca_pin": ca_pin}, indent=2
        ),
    )
    _write(home / "current-profile", proxy + "\n")
    return profile


def current_profile(home: pathlib.Path | None = None) -> Profile | None:
    """The active login, or None after ``tether logout`` (or before any login)."""
    home = home or tether_home()
    try:
        proxy = (home / "current-profile").read_text().strip()
    except FileNotFoundError:
        return None
    return _load_profile(home, proxy)


def require_profile() -> Profile:
    """The active login, for a command that needs one: refused with the ``tether login`` to
    run when there is none (:func:`not_logged_in`) or when its certificates expired."""
    profile = current_profile()
    if profile is None:
        raise not_logged_in()
    expires = profile.identity().expires
    if expires <= datetime.datetime.now(datetime.UTC):
        raise AccessDenied(
            f"your certificates expired at {expires:%Y-%m-%d %H:%M:%S} UTC",
            hint=f"run `tether login --proxy={profile.proxy}`",
        )
    return profile


def not_logged_in() -> TetherError:
    """The error a command that needs a login raises when there is none, with the ``tether
    login`` to run: as is when ``TETHER_PROXY`` names the proxy, else with the proxy's address
    to fill in (the one thing Tether cannot know)."""
    if os.environ.get(PROXY_ENV):
        return TetherError("not logged in", hint=f"run `tether login` (to ${PROXY_ENV})")
    return TetherError(
        "not logged in",
        hint="run `tether login --proxy=PROXY`, PROXY being your cluster's proxy address "
        f"(host or host:port), or set {PROXY_ENV} to it",
    )


def find_profile(proxy: str, home: pathlib.Path | None = None) -> Profile | None:
    """The stored login to ``proxy`` (``host:port``; a bare ``host`` matches a login to that
    host on any port), the current one first; None if there is none.

    ``tether login`` reuses its CA pin, user and, while its certificates are valid, the
    login itself.
    """
    home = home or tether_home()
    current = current_profile(home)
    candidates = [current] if current is not None else []
    keys = home / "keys"
    if keys.is_dir():
        for child in sorted(keys.iterdir()):
            try:
                stored = json.loads((child / "profile.json").read_text())["proxy"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found = _load_profile(home, str(stored))
            if found is not None:
                candidates.append(found)
    for profile in candidates:
        if proxy in (profile.proxy, profile.proxy.rpartition(":")[0]):
            return profile
    return None


def _load_profile(home: pathlib.Path, proxy: str) -> Profile | None:
    directory = home / "keys" / _dir_name(proxy)
    try:
        meta = json.loads((directory / "profile.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return Profile(
        proxy=proxy,
        directory=directory,
        insecure=bool(meta.get("insecure")),
        ca_pin=meta.get("ca_pin"),
        selected_cluster=meta.get("selected_cluster"),
    )


def select_cluster(profile: Profile, cluster: str | None) -> Profile:
    """Make ``profile`` the current login and ``cluster`` the default target of later
    commands (None: the login's own)."""
    path = profile.directory / "profile.json"
    meta = json.loads(path.read_text())
    meta["selected_cluster"] = cluster
    _write(path, json.dumps(meta, indent=2))
    _write(profile.directory.parent.parent / "current-profile", profile.proxy + "\n")
    return attrs.evolve(profile, selected_cluster=cluster)


def clear_profiles(home: pathlib.Path | None = None) -> list[str]:
    """Remove every login's keys (``tether logout``); returns the proxies logged out of."""
    home = home or tether_home()
    keys = home / "keys"
    removed = []
    if keys.is_dir():
        for child in keys.iterdir():
            try:
                removed.append(json.loads((child / "profile.json").read_text())["proxy"])
            except (FileNotFoundError, ValueError, KeyError):
                removed.append(child.name)
            shutil.rmtree(child)
    (home / "current-profile").unlink(missing_ok=True)
    return removed


def profile_ssl_context(
    profile: Profile, *, client_cert: bool = True, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """Verify the proxy the way the login did, presenting the user's certificate. Trusted
    through the cluster's CA (the CA pin), only a certificate of kind proxy is accepted.

    :param alpn: the protocols to offer (a plugin's front door, such as ``tether-ssh/1``);
        none for the web API.
    """
    cert = key = None
    if client_cert:
        cert = pki.load_cert(profile.tls_cert_file.read_bytes())
        key = pki.load_private_key(profile.tls_key_file.read_bytes())
    if profile.insecure:
        return pki.client_ssl_context(
            trusted_cas=None, cert=cert, key=key, alpn=alpn, insecure=True
        )
    if profile.ca_pin:
        return pki.client_ssl_context(
            trusted_cas=profile.trusted_cas(), cert=cert, key=key, alpn=alpn, peer_kinds=("proxy",)
        )
    return pki.client_ssl_context(trusted_cas=None, cert=cert, key=key, alpn=alpn)
