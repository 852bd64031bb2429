"""Manifests into a cluster as `kubectl apply --server-side -f` puts them."""

from __future__ import annotations

import uuid
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind")]


def apply(dynamic: DynamicClient, docs: list[dict[str, Any]], namespace: str = "default") -> None:
    """Server-side apply, as `kubectl apply --server-side` does: an object that names no namespace goes to
    `namespace`."""
    for doc in docs:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        target = doc["metadata"].get("namespace", namespace) if resource.namespaced else None
        if target is None:
            doc = {**doc, "metadata": {k: v for k, v in doc["metadata"].items() if k != "namespace"}}
        dynamic.server_side_apply(  # type: ignore[no-untyped-call]  # the kubernetes client is unannotated
            resource, body=doc, namespace=target, field_manager="e2e", force_conflicts=True
        )


def fresh_namespace(core: k8s.CoreV1Api, prefix: str = "t") -> str:
    """A new namespace with a random name, so tests sharing a cluster never see each other's objects."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name
