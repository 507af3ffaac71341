"""The environment variables of the ``tether`` client, as tsh's ``TELEPORT_*``.

A module of their own, with no imports: every command-line start names them in its options.
"""

__all__ = ["CLUSTER_ENV", "HOME_ENV", "LOGIN_ENV", "PROXY_ENV", "USER_ENV"]

#: where logins are kept (default ``~/.tether``; tsh's ``TELEPORT_HOME``)
HOME_ENV = "TETHER_HOME"
#: the proxy ``tether login`` and ``signup`` use when ``--proxy`` is not given (tsh's
#: ``TELEPORT_PROXY``)
PROXY_ENV = "TETHER_PROXY"
#: the Tether user ``tether login`` logs in as (tsh's ``TELEPORT_USER``)
USER_ENV = "TETHER_USER"
#: the cluster commands target when ``--cluster`` is not given (tsh's ``TELEPORT_CLUSTER``)
CLUSTER_ENV = "TETHER_CLUSTER"
#: the login on nodes when a command names none (tsh's ``TELEPORT_LOGIN``)
LOGIN_ENV = "TETHER_LOGIN"
