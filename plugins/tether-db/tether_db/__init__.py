"""Database access for Tether: a database service that serves PostgreSQL and MySQL/MariaDB
databases through the node agent, and the ``tether db`` commands that reach them."""

#: The plugin's version, which the databases it serves publish.
VERSION = "0.1.0"
