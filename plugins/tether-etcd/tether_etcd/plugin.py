"""The ``etcd`` plugin as Tether's plugin manager sees it: ``etcd://`` storage URLs."""

from __future__ import annotations

from tether.api import BackendType, hookimpl

__all__ = ["tether_backends"]


@hookimpl
def tether_backends() -> list[BackendType]:
    """etcd v3 storage: ``etcd://`` (plain HTTP) and ``etcd+https://`` (TLS)."""
    from tether_etcd.backend import open_etcd

    return [
        BackendType(scheme="etcd", open=open_etcd),
        BackendType(scheme="etcd+https", open=open_etcd),
    ]
