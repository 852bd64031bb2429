"""IR -> Envoy protobufs. `gateway.gateway_resources` builds one Gateway's four resource types; `names` holds the wire
contracts (type URLs, headers, metadata keys, filter names, processing modes) that the per-request services share."""
