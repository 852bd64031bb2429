/*
 * The usage log: what the AI filter says of each AI request, for the control plane's GenAI metrics. The worker
 * that served a request encodes one OpenTelemetry log record (its body the lines below, its one attribute the
 * answer's model) into a batch the module holds; Envoy's main thread exports the batch to the control plane's
 * OpenTelemetry LogsService (a unary gRPC Export, as Envoy's OpenTelemetry access logger makes it) once per flush
 * interval, or as soon as it holds flush_bytes. Nothing of it is on a request's path but the encoding.
 */
#ifndef XDS_SERVER_USAGE_LOG_H
#define XDS_SERVER_USAGE_LOG_H

#include "abi.h"

/* The body's lines, in order: translators/xds/ai_listener.py's USAGE_RECORD_LINES, which `serve` reads by. */
enum usage_line {
  LINE_PATH,
  LINE_STATUS,
  LINE_BACKEND,
  LINE_CLUSTER,
  LINE_DURATION_US,
  LINE_STREAM_MS,
  LINE_INPUT_TOKENS,
  LINE_OUTPUT_TOKENS,
  LINE_FIRST_TOKEN_MS,
  LINE_MODEL, /* last: read as the rest of the body, whatever it holds */
  USAGE_LINES,
};

/* One request's record: a line with no bytes (ptr NULL) is written as "-", Envoy's word for a value it does not
 * have; no response model, no attribute. */
typedef struct {
  module_buffer lines[USAGE_LINES];
  module_buffer response_model;
} usage_record;

typedef struct usage_exporter usage_exporter;

/* A filter config that exports (Envoy's main thread): NULL when memory is short. */
usage_exporter *usage_log_start(void *envoy_config, const char *cluster, unsigned flush_ms, size_t flush_bytes);
void usage_log_stop(usage_exporter *exporter);
/* Any worker: the record joins the batch (dropped, and counted, past the batch's limit or with no exporter). */
void usage_log_add(const usage_record *record);
/* The main thread: the config's scheduled event (export the batch) and its Export's answer. */
void usage_log_export(usage_exporter *exporter);
void usage_log_exported(int result, const http_header *headers, size_t headers_size);

#endif
