"""PostgreSQL for the database service: the wire protocol (:mod:`.wire`, sans-IO) and the
engine that relays it (:mod:`.engine`)."""

from tether_db.postgres.engine import PostgresEngine

__all__ = ["PostgresEngine"]
