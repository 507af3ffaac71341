"""How the service reads what an API request asks for, as the API server reads it."""

from __future__ import annotations

import pytest
from tether_kube.requests import KubeRequest, read_request


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("GET", "/api/v1/namespaces/dev/configmaps",
         KubeRequest(verb="list", resource="configmaps", namespace="dev")),
        ("GET", "/api/v1/namespaces/dev/configmaps/app?timeout=5s",
         KubeRequest(verb="get", resource="configmaps", namespace="dev", name="app")),
        ("GET", "/api/v1/namespaces/dev/configmaps?watch=true&resourceVersion=1",
         KubeRequest(verb="watch", resource="configmaps", namespace="dev")),
        ("GET", "/api/v1/watch/namespaces/dev/configmaps",
         KubeRequest(verb="watch", resource="configmaps", namespace="dev")),
        ("POST", "/api/v1/namespaces/dev/configmaps",
         KubeRequest(verb="create", resource="configmaps", namespace="dev")),
        ("DELETE", "/api/v1/namespaces/dev/configmaps",
         KubeRequest(verb="deletecollection", resource="configmaps", namespace="dev")),
        ("PATCH", "/apis/apps/v1/namespaces/dev/deployments/web/scale",
         KubeRequest(verb="patch", api_group="apps", resource="deployments", namespace="dev",
                     name="web", subresource="scale")),
        ("GET", "/api/v1/configmaps",
         KubeRequest(verb="list", resource="configmaps")),
        ("GET", "/api/v1/nodes/n1", KubeRequest(verb="get", resource="nodes", name="n1")),
        ("GET", "/api/v1/namespaces/dev",
         KubeRequest(verb="get", resource="namespaces", namespace="dev", name="dev")),
        ("PUT", "/api/v1/namespaces/dev/finalize",
         KubeRequest(verb="update", resource="namespaces", namespace="dev", name="dev",
                     subresource="finalize")),
        ("POST", "/api/v1/namespaces/dev/pods/web/exec?command=sh",
         KubeRequest(verb="exec", resource="pods", namespace="dev", name="web",
                     subresource="exec")),
        ("GET", "/api/v1/namespaces/dev/pods/web/attach",
         KubeRequest(verb="exec", resource="pods", namespace="dev", name="web",
                     subresource="attach")),
        ("POST", "/api/v1/namespaces/dev/pods/web/portforward",
         KubeRequest(verb="portforward", resource="pods", namespace="dev", name="web",
                     subresource="portforward")),
        ("GET", "/api/v1/namespaces/dev/pods/web/log?follow=true",
         KubeRequest(verb="get", resource="pods", namespace="dev", name="web",
                     subresource="log")),
    ],
)  # fmt: skip
def test_resource_requests_are_read_as_the_api_server_reads_them(
    method: str, target: str, expected: KubeRequest
) -> None:
    read = read_request(method, target)

    assert read == KubeRequest(**{**_fields(expected), "path": target.split("?")[0]})
    assert read.is_resource


def _fields(request: KubeRequest) -> dict[str, str]:
    return {
        "verb": request.verb,
        "api_group": request.api_group,
        "resource": request.resource,
        "namespace": request.namespace,
        "name": request.name,
        "subresource": request.subresource,
    }


@pytest.mark.parametrize(
    "target", ["/version", "/api", "/api/v1", "/apis", "/apis/apps/v1", "/openapi/v2", "/healthz"]
)
def test_discovery_is_no_resource_request(target: str) -> None:
    assert not read_request("GET", target).is_resource
