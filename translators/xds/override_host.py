"""OverrideHost's `selected_host_key`, a field Envoy has and the `xds-protos` package does not know yet.

Envoy writes the endpoint that served a request (after retries) into the dynamic metadata `selected_host_key`
names; the picker filter forwards that metadata, which is how the picker hears of the "served" endpoint the
Endpoint Picker protocol asks for. Envoy 1.40 has the field, as number 2 of type
`envoy.type.metadata.v3.MetadataKey` (read from the descriptor embedded in its binary), but the generated Python
classes predate it. So the field is appended to the serialized message as an unknown field: upb keeps unknown
fields when parsing and writes them back when serializing, so the packed config carries it to Envoy, which parses
it as the real field.

MessageToJson drops unknown fields, so output meant to be read (golden files, `xds-server translate`, the
bootstrap that `envoy --mode validate` checks) is rendered with `json_descriptor_pool()`, whose OverrideHost
descriptor has the field.
"""

from __future__ import annotations

import functools

from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.type.metadata.v3 import metadata_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from translators.xds.serialized import field_header

SELECTED_HOST_KEY_NUMBER = 2


def with_selected_host_key(
    override: override_host_pb2.OverrideHost, key: metadata_pb2.MetadataKey
) -> override_host_pb2.OverrideHost:
    """A copy of `override` that also sets selected_host_key (as an unknown field, see the module docstring)."""
    value = key.SerializeToString(deterministic=True)
    raw = override.SerializeToString(deterministic=True) + field_header(SELECTED_HOST_KEY_NUMBER, len(value)) + value
    return override_host_pb2.OverrideHost.FromString(raw)


class _DescriptorsWithSelectedHostKey:
    """A descriptor database: the default pool's files, with selected_host_key added to OverrideHost."""

    def __init__(self) -> None:
        self._default = descriptor_pool.Default()
        self._patched_file = override_host_pb2.DESCRIPTOR.name

    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:  # protobuf's method names
        file = descriptor_pb2.FileDescriptorProto()
        self._default.FindFileByName(name).CopyToProto(file)
        if name == self._patched_file:
            message = next(m for m in file.message_type if m.name == "OverrideHost")
            message.field.add(
                name="selected_host_key",
                json_name="selectedHostKey",
                number=SELECTED_HOST_KEY_NUMBER,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                type_name=f".{metadata_pb2.MetadataKey.DESCRIPTOR.full_name}",
            )
        return file

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:
        return self.FindFileByName(self._default.FindFileContainingSymbol(symbol).name)


@functools.cache
def json_descriptor_pool() -> descriptor_pool.DescriptorPool:
    """Resolves `Any` types for MessageToJson like the default pool, except that OverrideHost has the field."""
    return descriptor_pool.DescriptorPool(descriptor_db=_DescriptorsWithSelectedHostKey())
