"""Testing support for Tether and its plugins: with :mod:`tether.api`, all a plugin's tests
import of ``tether`` (``docs/plugins.md``, "Testing with ``tether.testing``").

- :mod:`tether.testing.cluster`: start real ``tetherd`` processes and run the CLIs.
- :mod:`tether.testing.fixtures`: the pytest fixtures (registered automatically by the
  ``pytest11`` entry point when the kernel is installed): clusters, and ``os_user``.
- :mod:`tether.testing.backend_conformance`: the suite every storage backend must pass.
- :mod:`tether.testing.accounts`: real OS accounts for sessions of protocol plugins.
- :mod:`tether.testing.roles`: role sets from YAML, for servers that authorize.
- :mod:`tether.testing.certificates`: a cluster's CAs and certificates they sign, in memory.
- :mod:`tether.testing.config`: ``tether.yaml`` with a plugin's sections, read as ``tetherd`` does.
- :mod:`tether.testing.impostor`: a hostile cluster's handshake and tunnels, for trust tests.
- :mod:`tether.testing.trusted_clusters`: a leaf joined to a root as the guide's admins do it.
- :mod:`tether.testing.netns`: a network namespace behind a firewall that drops every
  connection the host opens to it, for a cluster that must work with no inbound port open.
- :mod:`tether.testing.etcd`: a real etcd of one or several members, for a storage test.
- :mod:`tether.testing.kube`: a real Kubernetes API server (etcd, kube-apiserver 1.20.2) and
  Debian's kubectl, for a plugin that reaches Kubernetes clusters.
- :mod:`tether.testing.kube_node`: a node of it (containerd, a kubelet) that runs pods, and
  :mod:`tether.testing.kube_machine`, which puts the machine back after it;
  :mod:`tether.testing.processes` starts such helper programs with their output logged.
"""
