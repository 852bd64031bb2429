"""Model routing and usage inside Envoy: the configs of the filters an AI request meets, shared by the listener (where
the filters sit, disabled) and the AI virtual hosts' entry routes (which turn them on)."""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.transform.v3 import transform_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import wrappers_pb2

from translators.xds.names import JSON_BODY_HEADER, METERING_METADATA_NAMESPACE, MODEL_HEADER, STREAM_HEADER


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
        for name, value in (
            (MODEL_HEADER, "%REQUEST_BODY(model)%"),
            (JSON_BODY_HEADER, "json"),
            (STREAM_HEADER, "%REQUEST_BODY(stream)%"),
        )
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


Rule = json_to_metadata_pb2.JsonToMetadata.Rule
# A JSON Content-Type, with parameters (a charset) and in any case: Envoy compares the whole value.
JSON_CONTENT_TYPE = r"(?i)application/json\s*(;.*)?"
# Where an OpenAI answer says what was used, and the metadata key each value goes to.
USAGE_FIELDS = (
    (("model",), "response_model", json_to_metadata_pb2.JsonToMetadata.STRING),
    (("usage", "prompt_tokens"), "input_tokens", json_to_metadata_pb2.JsonToMetadata.NUMBER),
    (("usage", "completion_tokens"), "output_tokens", json_to_metadata_pb2.JsonToMetadata.NUMBER),
    (("usage", "total_tokens"), "total_tokens", json_to_metadata_pb2.JsonToMetadata.NUMBER),
    # Anthropic's Messages API, passed through to Anthropic backends (an answer has one shape or the other).
    (("usage", "input_tokens"), "input_tokens", json_to_metadata_pb2.JsonToMetadata.NUMBER),
    (("usage", "output_tokens"), "output_tokens", json_to_metadata_pb2.JsonToMetadata.NUMBER),
)


def usage_config() -> json_to_metadata_pb2.JsonToMetadata:
    """The usage of a JSON answer into METERING_METADATA_NAMESPACE, read by Envoy itself (event streams are not JSON
    and are left to stream metering)."""
    rules = [
        Rule(
            selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key=key) for key in path],
            on_present=json_to_metadata_pb2.JsonToMetadata.KeyValuePair(
                metadata_namespace=METERING_METADATA_NAMESPACE, key=metadata_key, type=value_type
            ),
        )
        for path, metadata_key, value_type in USAGE_FIELDS
    ]
    return json_to_metadata_pb2.JsonToMetadata(
        response_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(
            rules=rules, allow_content_types_regex=regex_pb2.RegexMatcher(regex=JSON_CONTENT_TYPE)
        )
    )


def content_length_config() -> buffer_pb2.Buffer:
    """The buffer filter sets Content-Length once it holds the whole body. The model filter before it already holds
    the body (within the connection's buffer limit, 413 beyond), so this filter's own limit never applies."""
    return buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=2**32 - 1))


def content_length_route_config() -> buffer_pb2.BufferPerRoute:
    return buffer_pb2.BufferPerRoute(buffer=content_length_config())
