"""Model routing inside Envoy: the configs of its two filters, shared by the listener (where the filters sit,
disabled) and the AI virtual hosts' entry routes (which turn them on)."""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.transform.v3 import transform_pb2

from translators.xds.names import JSON_BODY_HEADER, MODEL_HEADER


def model_config() -> transform_pb2.TransformConfig:
    """The body's `model` into MODEL_HEADER and a JSON_BODY_HEADER marker, then a new route match. Envoy sets neither
    header when the body is not one JSON object (malformed, another type, or a repeated key), and no MODEL_HEADER
    when `model` is missing, null or "": the routes after the model routes tell these cases apart."""
    mutations = [
        mutation_rules_pb2.HeaderMutation(
            append=base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=name, value=value),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        )
        for name, value in ((MODEL_HEADER, "%REQUEST_BODY(model)%"), (JSON_BODY_HEADER, "json"))
    ]
    return transform_pb2.TransformConfig(
        request_transformation=transform_pb2.Transformation(headers_mutations=mutations), clear_route_cache=True
    )


def json_content_type_config() -> header_mutation_pb2.HeaderMutationPerRoute:
    """Envoy's transform filter reads only bodies declared `application/json`; OpenAI's API reads a body without a
    Content-Type as JSON too, so one is added where none was sent (a declared other type is left as it is: such a
    body is refused as not JSON)."""
    content_type = mutation_rules_pb2.HeaderMutation(
        append=base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="content-type", value="application/json"),
            append_action=base_pb2.HeaderValueOption.ADD_IF_ABSENT,
        )
    )
    return header_mutation_pb2.HeaderMutationPerRoute(
        mutations=header_mutation_pb2.Mutations(request_mutations=[content_type])
    )
