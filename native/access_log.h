/*
 * The AI access log: one JSON line on Envoy's stdout per AI request, written by the AI filter (where Envoy's JSON
 * access logger cost some 31,000 instructions a request: bench.instructions). The keys and the kinds of their values
 * are those of translators/xds/ai_listener.py's AI_ACCESS_LOG_FIELDS, which Envoy's own access logger still writes
 * for the listener's other requests answered 400 or more: the two writers make one log.
 *
 * A worker formats its line into a buffer of its own thread and appends it to the module's; a writer thread of the
 * module's own writes that buffer to stdout every flush interval (a worker never waits on stdout, nor does the usage
 * log's ticker or Envoy's main thread when stdout does not drain), and the process writes what is left when it
 * exits.
 */
#ifndef XDS_SERVER_ACCESS_LOG_H
#define XDS_SERVER_ACCESS_LOG_H

#include "abi.h"
#include "bytes.h"

/* In the order Envoy's JSON formatter writes its keys (sorted), so both writers' lines read alike. */
enum access_field {
  ACCESS_AUTHORITY,
  ACCESS_BACKEND,
  ACCESS_DETAILS,
  ACCESS_DURATION_MS,
  ACCESS_INPUT_TOKENS,
  ACCESS_METHOD,
  ACCESS_MODEL,
  ACCESS_OUTPUT_TOKENS,
  ACCESS_PATH,
  ACCESS_REQUEST_ID,
  ACCESS_RESPONSE_MODEL,
  ACCESS_ROUTE,
  ACCESS_START_TIME,
  ACCESS_STATUS,
  ACCESS_TOTAL_TOKENS,
  ACCESS_UPSTREAM_HOST,
  ACCESS_FIELDS,
};

/* A line's values: text (a number's in decimal), or no bytes (ptr NULL) for JSON's null. */
typedef struct {
  module_buffer values[ACCESS_FIELDS];
} access_values;

/* The line (a JSON object and a line feed), appended to `out`; false when memory is short. */
bool xds_ai_access_line(const access_values *values, bytes *out);
/* Any worker: the line joins the module's buffer (dropped past its limit). */
void access_log_add(const access_values *values);
/* A filter config (any thread): the writer runs, every `flush_ms` (the newest config's). */
void access_log_start(unsigned flush_ms);

#endif
