"""PostgreSQL storage for Tether: ``storage.url: postgresql://user@host/database``.

Several auth servers may share one database: revisions come from one counter row every write
transaction updates (so the revision order is the commit order), TTLs follow the database's
clock, and watches read an event log that ``LISTEN``/``NOTIFY`` announces.
"""

from tether_postgres.backend import PostgresBackend, open_postgres

__all__ = ["PostgresBackend", "open_postgres"]
