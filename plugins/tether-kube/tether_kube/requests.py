"""What a Kubernetes API request asks for, read from its method, path and query.

The API server decides this itself (``RequestInfo``: verb, API group, resource, namespace,
name, subresource); the service needs the same reading before it forwards, to judge the
request against the roles' ``kubernetes_resources``. Pure: no I/O, no HTTP library.

Paths are ``/api/v1/...`` (the core group) or ``/apis/GROUP/VERSION/...``, then
``namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]`` or ``RESOURCE[/NAME[/SUBRESOURCE]]``. Everything
else (``/version``, ``/api``, ``/apis``, ``/openapi/v2``, ``/healthz``) is a non-resource
request: discovery, which every client needs and Kubernetes' RBAC governs.
"""

from __future__ import annotations

import urllib.parse

import attrs

__all__ = ["KubeRequest", "read_request"]

#: What a method does to a named object, and to a collection.
_VERBS = {
    "GET": ("get", "list"),
    "HEAD": ("get", "list"),
    "POST": ("create", "create"),
    "PUT": ("update", "update"),
    "PATCH": ("patch", "patch"),
    "DELETE": ("delete", "deletecollection"),
}
#: Subresources of a namespace object itself (``namespaces/dev/status``), not resources in it.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
#: Pod subresources that open a session in a container; their verb is what roles name.
_SESSION_VERBS = {"exec": "exec", "attach": "exec", "portforward": "portforward"}


@attrs.frozen(kw_only=True)
class KubeRequest:
    """One API request as the roles see it.

    :ivar verb: ``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``,
        ``deletecollection``, ``exec`` (exec and attach) or ``portforward``; for a
        non-resource request, the method in lower case.
    :ivar api_group: ``""`` for the core group, e.g. ``apps``.
    :ivar resource: the plural resource (``configmaps``); ``""`` for a non-resource request.
    :ivar namespace: ``""`` for cluster-scoped resources and lists across namespaces.
    :ivar name: the object's name; ``""`` for collections (lists, watches, creates).
    :ivar subresource: ``status``, ``exec``, ``log``...; ``""`` for the object itself.
    :ivar path: the path as sent (without the query), for the audit log.
    """

    verb: str
    api_group: str = ""
    resource: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    path: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    @property
    def opens_session(self) -> bool:
        """An exec, attach or port-forward: a stream to a container, upgraded from HTTP."""
        return self.verb in ("exec", "portforward")


def read_request(method: str, target: str) -> KubeRequest:
    """Read a request from its method and target (``/api/v1/namespaces/dev/pods?watch=1``)."""
    split = urllib.parse.urlsplit(target)
    path = split.path
    query = urllib.parse.parse_qs(split.query)
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
    plain = KubeRequest(verb=method.lower(), path=path)
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return plain
    watch = False
    if rest[:1] == ["watch"]:  # the old /api/v1/watch/... form
        watch, rest = True, rest[1:]
    if not rest:
        return plain  # /api/v1, /apis/apps/v1: the group's discovery
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) == 2 or rest[2] in _NAMESPACE_SUBRESOURCES:
            # the namespace object itself: resource namespaces, named after itself
            rest = ["namespaces", namespace, *rest[2:3]]
            namespace = ""
        else:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    verbs = _VERBS.get(method.upper())
    verb = method.lower() if verbs is None else verbs[0 if name else 1]
    if verb in ("get", "list") and (watch or query.get("watch", [""])[-1] in ("1", "true")):
        verb = "watch"
    if resource == "pods" and subresource in _SESSION_VERBS:
        verb = _SESSION_VERBS[subresource]
    if resource == "namespaces" and name:
        namespace = name  # a namespace object is in itself, as roles name it
    return KubeRequest(
        verb=verb,
        api_group=group,
        resource=resource,
        namespace=namespace,
        name=name,
        subresource=subresource,
        path=path,
    )
