"""Tether storage on etcd v3: leases for TTLs, transactions for compare-and-swap, native
watches, one global revision (etcd's own). See :mod:`tether_etcd.backend`."""

from tether_etcd.backend import EtcdBackend, open_etcd

__all__ = ["EtcdBackend", "open_etcd"]
