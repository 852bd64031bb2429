"""The Endpoint Picker protocol's messages: reading a request's body and control headers, and the replies.

The pick goes to Envoy twice, with the same value: as the request header `x-gateway-destination-endpoint` and as
dynamic metadata `envoy.lb/x-gateway-destination-endpoint`, as the protocol asks. The pool cluster's override_host
policy reads the metadata only; it only ever connects to endpoints of the pool, whatever the value says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from google.protobuf import struct_pb2

from translators.xds.names import (
    DESTINATION_HEADER,
    LB_METADATA_NAMESPACE,
    SERVED_ENDPOINT_KEY,
    SUBSET_HINT_KEY,
    SUBSET_HINT_NAMESPACE,
)
from xds_server.extproc.protocol import BadRequestBody, ProcessingResponse, error, replaced_body, set_header

BODY_CHUNK_BYTES = 62_000  # some Envoy builds cap a streamed body message at 64 KiB


def no_prompt(message: str) -> BadRequestBody:
    return BadRequestBody("invalid_prompt", message)


def prompt_of(payload: dict[str, Any]) -> str:
    """The text the prefix index hashes: chat messages flattened in a chat-template shape, else the prompt."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                raise no_prompt("every entry of 'messages' must be an object")
            content = message.get("content")
            if isinstance(content, list):  # content parts: only text counts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            parts.append(f"<|im_start|>{message.get('role', '')}\n{content or ''}<|im_end|>\n")
        return "".join(parts)
    prompt = payload.get("prompt", payload.get("input"))
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "".join(prompt)
    raise no_prompt("no prompt found: the body needs 'messages' or 'prompt'")


def subset_hint(request: ext_proc_pb2.ProcessingRequest) -> list[str] | None:
    """The endpoints the data plane allows, when it says (None: no restriction)."""
    namespace = request.metadata_context.filter_metadata.get(SUBSET_HINT_NAMESPACE)
    if namespace is None or SUBSET_HINT_KEY not in namespace.fields:
        return None
    value = namespace.fields[SUBSET_HINT_KEY]
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values]
    return [value.string_value]


def served_endpoint(request: ext_proc_pb2.ProcessingRequest) -> str | None:
    namespace = request.metadata_context.filter_metadata.get(LB_METADATA_NAMESPACE)
    if namespace is None or SERVED_ENDPOINT_KEY not in namespace.fields:
        return None
    return str(namespace.fields[SERVED_ENDPOINT_KEY].string_value)


def _pick_metadata(destination: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.fields[LB_METADATA_NAMESPACE].struct_value.fields[DESTINATION_HEADER].string_value = destination
    return metadata


def routed(destination: str, phase: str, body: bytes | None = None) -> ProcessingResponse:
    """The reply that sends the request to `destination` ("ip:port[,ip:port...]"), answering `phase`
    (`request_headers` in full-duplex mode and for bodiless requests, `request_body` when buffered).
    `body` replaces a buffered body (a model rewrite)."""
    destination_header = set_header(DESTINATION_HEADER, destination.encode())
    if body is not None:
        response = replaced_body(phase, body, [destination_header])
    else:
        response = ProcessingResponse()
        getattr(response, phase).response.header_mutation.set_headers.append(destination_header)
    getattr(response, phase).response.clear_route_cache = True
    response.dynamic_metadata.CopyFrom(_pick_metadata(destination))
    return response


def streamed_body(body: bytes, end_of_stream: bool) -> list[ProcessingResponse]:
    """A full-duplex request body sent back to Envoy, in chunks it accepts (an empty body is one empty chunk)."""
    chunks = [body[i : i + BODY_CHUNK_BYTES] for i in range(0, len(body), BODY_CHUNK_BYTES)] or [b""]
    replies = []
    for index, chunk in enumerate(chunks):
        last = end_of_stream and index == len(chunks) - 1
        common = ext_proc_pb2.CommonResponse()
        common.body_mutation.streamed_response.body = chunk
        common.body_mutation.streamed_response.end_of_stream = last
        replies.append(ProcessingResponse(request_body=ext_proc_pb2.BodyResponse(response=common)))
    return replies


def response_headers(headers: Sequence[tuple[str, str]]) -> ProcessingResponse:
    mutation = ext_proc_pb2.HeaderMutation(set_headers=[set_header(k, v.encode()) for k, v in headers])
    return ProcessingResponse(
        response_headers=ext_proc_pb2.HeadersResponse(response=ext_proc_pb2.CommonResponse(header_mutation=mutation))
    )


def refusal(status: int, message: str, code: str) -> ProcessingResponse:
    return error(status, message, code, "endpoint_picker")
