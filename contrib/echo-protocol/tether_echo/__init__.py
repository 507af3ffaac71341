"""An example protocol plugin: an echo service each node serves, reached from any cluster.

Everything it imports from Tether comes from :mod:`tether.api`. Walk-through:
``docs/plugins.md``.
"""
