"""The node agent: this host as a member of a cluster, whatever protocols it serves.

Protocol servers (SSH, Kubernetes, databases) come from plugins (``tether_agent_protocols``);
this package owns what every one of them needs: joining the cluster and keeping the identity
(:mod:`~tether.node.join`), the agent that runs them (:mod:`~tether.node.agent`) and what they see
of it (:mod:`~tether.node.protocols`); the trust it decides with is the cache every host holds
(:mod:`~tether.trust.cache`).
"""
