"""Gateway API Inference Extension kinds: InferencePool (v1) and InferenceObjective (v1alpha2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from translators.resources.base import K8sModel, LabelSelector, ObjectName, PortNumber, Resource

INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_X_GROUP = "inference.networking.x-k8s.io"


class Port(K8sModel):
    number: PortNumber


class EndpointPickerRef(K8sModel):
    group: str = ""
    kind: str = "Service"
    name: ObjectName
    port: Port | None = None
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"

    @model_validator(mode="after")
    def _port_for_service(self) -> EndpointPickerRef:
        if self.kind == "Service" and self.port is None:
            raise ValueError("port is required when kind is Service")
        return self


class InferencePoolSpec(K8sModel):
    selector: LabelSelector
    target_ports: list[Port] = Field(min_length=1, max_length=8)
    app_protocol: Literal["http", "kubernetes.io/h2c"] = "http"
    endpoint_picker_ref: EndpointPickerRef | None = None

    @model_validator(mode="after")
    def _selector_not_empty(self) -> InferencePoolSpec:
        if not self.selector.match_labels:
            raise ValueError("selector.matchLabels needs at least one label")
        if len({p.number for p in self.target_ports}) != len(self.target_ports):
            raise ValueError("targetPorts must be unique")
        return self


class InferencePool(Resource):
    group = INFERENCE_GROUP
    kind = "InferencePool"
    versions = ("v1",)

    spec: InferencePoolSpec


class PoolObjectRef(K8sModel):
    group: str = INFERENCE_GROUP
    kind: str = "InferencePool"
    name: ObjectName


class InferenceObjectiveSpec(K8sModel):
    priority: int | None = None
    pool_ref: PoolObjectRef


class InferenceObjective(Resource):
    group = INFERENCE_X_GROUP
    kind = "InferenceObjective"
    versions = ("v1alpha2",)

    spec: InferenceObjectiveSpec
