"""What the benchmarks' ``tetherd`` processes run with where it differs from the tests' cluster
(``tether.testing.cluster``): what an operator runs, so a figure is a deployment's.

Every harness records :data:`LOG_DESCRIPTION` in its results; a harness that changes anything
else from the defaults records that too, with the reason.
"""

from __future__ import annotations

__all__ = ["LOG", "LOG_DESCRIPTION"]

#: The daemons' log section: operators' INFO, not the tests' DEBUG, which writes lines per
#: request and connection and costs CPU a deployment does not spend.
LOG = {"severity": "INFO", "format": "text"}
LOG_DESCRIPTION = "INFO (an operator's setting; the tests' cluster runs DEBUG)"
