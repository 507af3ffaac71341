"""Kubernetes access for Tether: a Kubernetes service that forwards kubectl's requests to API
servers as the user's mapped Kubernetes users and groups, the proxy's route for kubectl (by
TLS server name), and the ``tether kube`` commands."""

#: The plugin's version, which the clusters it serves publish.
VERSION = "0.1.0"
