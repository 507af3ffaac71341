"""Agents of a cluster that are not the auth service or the proxy: nodes joining with a token.

Protocol servers (SSH, Kubernetes, databases) come from plugins; this package owns what every
node needs whatever it serves: joining the cluster and keeping its identity.
"""
