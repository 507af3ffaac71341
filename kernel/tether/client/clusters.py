"""Which clusters a login reaches: its own and the leaves its roles may see."""

from __future__ import annotations

from tether.auth.http_client import AuthClient
from tether.client.profile import Profile, profile_ssl_context

__all__ = ["leaf_clusters"]


async def leaf_clusters(profile: Profile) -> list[str]:
    """The names of the leaf clusters this login may see, sorted.

    The root's ``remote_cluster`` resources, filtered by the proxy with the user's roles
    (``cluster_labels``), so a client command (``tether config``) lists only leaves the user
    can reach.
    """
    async with AuthClient(f"https://{profile.proxy}", profile_ssl_context(profile)) as auth:
        docs = await auth.get_resources("remote_cluster")
    return sorted(doc["metadata"]["name"] for doc in docs)
