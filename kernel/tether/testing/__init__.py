"""Testing support for Tether and its plugins.

- :mod:`tether.testing.cluster`: start real ``tetherd`` processes and run the CLIs.
- :mod:`tether.testing.fixtures`: the pytest fixtures (registered automatically by the
  ``pytest11`` entry point when the kernel is installed).
- :mod:`tether.testing.backend_conformance`: the suite every storage backend must pass.
- :mod:`tether.testing.accounts`: real OS accounts for sessions of protocol plugins.
- :mod:`tether.testing.roles`: role sets from YAML, for servers that authorize.
- :mod:`tether.testing.impostor`: a hostile cluster's handshake and tunnels, for trust tests.
- :mod:`tether.testing.trusted_clusters`: a leaf joined to a root as the guide's admins do it.
"""
