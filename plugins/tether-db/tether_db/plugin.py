"""The ``db`` plugin as Tether's plugin manager sees it (entry point group ``tether``).

The hooks arrive with the database service; the engines (:mod:`tether_db.engine`) come first.
"""

from __future__ import annotations

__all__: list[str] = []
