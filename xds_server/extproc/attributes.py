"""Reading ext_proc request attributes: Envoy puts them under the filter's canonical name, one Struct per filter."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import struct_pb2

from translators.xds.names import EXTPROC_ATTRIBUTES_KEY


def attribute(attributes: Mapping[str, struct_pb2.Struct], name: str) -> str:
    """The attribute's string value; "" when Envoy did not send it (e.g. no such metadata)."""
    found = attributes.get(EXTPROC_ATTRIBUTES_KEY)
    value = found.fields.get(name) if found is not None else None
    return value.string_value if value is not None else ""
