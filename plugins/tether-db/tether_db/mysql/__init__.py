"""The MySQL/MariaDB engine of the database service: :mod:`.wire` speaks the protocol
without I/O, :mod:`.engine` drives it over trio streams."""

from __future__ import annotations

from tether_db.mysql.engine import MySQLEngine

__all__ = ["MySQLEngine"]
