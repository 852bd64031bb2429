/*
 * The AI filter: an Envoy dynamic module (Envoy's C ABI for HTTP filters loaded from a shared object) that reads
 * the request body's `model` into a header for routing, and the model and token usage of the answer (one JSON
 * document, or an event stream) into dynamic metadata for the logs: one pass over the bytes, no JSON tree, no call
 * out of Envoy.
 *
 * It replaces three of Envoy's own filters (transform, header_mutation and json_to_metadata), which build a whole
 * JSON document for every body (json_to_metadata alone cost 86k instructions per request on a 300-byte answer),
 * and the stream-metering ext_proc, which sent every chunk of a streamed answer to `serve` over gRPC.
 *
 * The request side's contract is the one translators/xds/names.py documents for MODEL_HEADER and JSON_BODY_HEADER,
 * so the routes that tell the error cases apart are the same whichever filter wrote the headers:
 *  - JSON_BODY_HEADER "json" when the body is one JSON object with no repeated top-level key;
 *  - MODEL_HEADER: `model` as a string (escapes decoded), or the JSON text of any other value (whitespace outside
 *    strings removed); absent when `model` is missing, null or "".
 * A body declared as another Content-Type than JSON is not read (the routes refuse it as not JSON); a body sent
 * with no Content-Type is read, and gets `content-type: application/json` (OpenAI's API reads such a body as JSON).
 *
 * No answer is held: its bytes pass to the client as they come. A JSON answer (uncompressed) is copied and read at
 * its end: `model` as response_model, and `usage`'s prompt/input, completion/output and total tokens as
 * input_tokens, output_tokens and total_tokens, each where it is a count. A 200 event stream (uncompressed) is read
 * event by event as it passes: the last `usage` wins (input 0 and total input + output where it leaves them out),
 * and first_token_ms says when its first chunk came after the request's headers.
 *
 * At the request's end, the filter writes what the control plane's GenAI metrics need of it (the path, the status,
 * the backend, the durations, the usage, the models) to the usage log (usage_log.c), which the module exports in
 * batches from Envoy's main thread.
 *
 * abi.h declares the part of Envoy's ABI the module uses.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "abi.h"
#include "access_log.h"
#include "bytes.h"
#include "json_run.h"
#include "usage_log.h"

/* ---- JSON scanning (no tree: one pass over the bytes) ---- */

#define MAX_DEPTH 128
/* The answer copy kept for reading its usage: beyond this, an answer is passed on unread. */
#define MAX_ANSWER_BYTES ((size_t)8 << 20)

typedef struct {
  const char *at;
  size_t length;
  bool escaped; /* a string with backslash escapes (its value differs from its bytes) */
} span;

enum value_kind { ABSENT = 0, IS_NULL, IS_STRING, IS_OTHER };

typedef struct {
  enum value_kind kind;
  span text; /* a string's bytes without its quotes; any other value's JSON text */
} json_value;

typedef struct {
  const char *p;
  const char *end;
} cursor;

static void skip_space(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool is_hex(char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F'); }

/* At an opening quote: past the closing one, the content in `out`. */
static bool scan_string(cursor *c, span *out) {
  const char *start = ++c->p;
  bool escaped = false;
  while (c->p < c->end) {
    c->p += json_run(c->p, (size_t)(c->end - c->p), false);
    if (c->p >= c->end) break;
    unsigned char ch = (unsigned char)*c->p;
    if (ch == '"') {
      out->at = start;
      out->length = (size_t)(c->p - start);
      out->escaped = escaped;
      c->p++;
      return true;
    }
    if (ch < 0x20) return false;
    escaped = true; /* the run stopped at a backslash */
    if (c->end - c->p < 2) return false;
    switch (c->p[1]) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        c->p += 2;
        break;
      case 'u':
        if (c->end - c->p < 6 || !is_hex(c->p[2]) || !is_hex(c->p[3]) || !is_hex(c->p[4]) || !is_hex(c->p[5]))
          return false;
        c->p += 6;
        break;
      default:
        return false;
    }
  }
  return false;
}

static bool scan_digits(cursor *c) {
  const char *start = c->p;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  return c->p > start;
}

static bool scan_number(cursor *c) {
  if (c->p < c->end && *c->p == '-') c->p++;
  if (c->p < c->end && *c->p == '0') {
    c->p++;
  } else if (!scan_digits(c)) {
    return false;
  }
  if (c->p < c->end && *c->p == '.') {
    c->p++;
    if (!scan_digits(c)) return false;
  }
  if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
    c->p++;
    if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
    if (!scan_digits(c)) return false;
  }
  return true;
}

static bool scan_word(cursor *c, const char *word, size_t length) {
  if ((size_t)(c->end - c->p) < length || memcmp(c->p, word, length) != 0) return false;
  c->p += length;
  return true;
}

static bool scan_value(cursor *c, int depth, json_value *out);

/* At `[` or `{`: past the matching close. */
static bool scan_container(cursor *c, int depth) {
  if (depth >= MAX_DEPTH) return false;
  char close = *c->p == '{' ? '}' : ']';
  bool object = close == '}';
  c->p++;
  skip_space(c);
  if (c->p < c->end && *c->p == close) {
    c->p++;
    return true;
  }
  for (;;) {
    json_value ignored;
    if (object) {
      span key;
      if (c->p >= c->end || *c->p != '"' || !scan_string(c, &key)) return false;
      skip_space(c);
      if (c->p >= c->end || *c->p != ':') return false;
      c->p++;
    }
    if (!scan_value(c, depth + 1, &ignored)) return false;
    skip_space(c);
    if (c->p >= c->end) return false;
    if (*c->p == close) {
      c->p++;
      return true;
    }
    if (*c->p != ',') return false;
    c->p++;
    skip_space(c);
  }
}

/* Skips leading space, then one value; `out` says what it was and where. */
static bool scan_value(cursor *c, int depth, json_value *out) {
  skip_space(c);
  if (c->p >= c->end) return false;
  const char *start = c->p;
  out->kind = IS_OTHER;
  out->text.escaped = false;
  bool ok;
  switch (*c->p) {
    case '"':
      out->kind = IS_STRING;
      return scan_string(c, &out->text);
    case '{': case '[':
      ok = scan_container(c, depth);
      break;
    case 't':
      ok = scan_word(c, "true", 4);
      break;
    case 'f':
      ok = scan_word(c, "false", 5);
      break;
    case 'n':
      out->kind = IS_NULL;
      ok = scan_word(c, "null", 4);
      break;
    default:
      ok = scan_number(c);
  }
  out->text.at = start;
  out->text.length = (size_t)(c->p - start);
  return ok;
}

static unsigned hex_value(const char *p) {
  unsigned value = 0;
  for (int i = 0; i < 4; i++) {
    char ch = p[i];
    value = value * 16 + (unsigned)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
  }
  return value;
}

static size_t put_utf8(char *out, unsigned code) {
  if (code < 0x80) {
    out[0] = (char)code;
    return 1;
  }
  if (code < 0x800) {
    out[0] = (char)(0xc0 | (code >> 6));
    out[1] = (char)(0x80 | (code & 0x3f));
    return 2;
  }
  if (code < 0x10000) {
    out[0] = (char)(0xe0 | (code >> 12));
    out[1] = (char)(0x80 | ((code >> 6) & 0x3f));
    out[2] = (char)(0x80 | (code & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (code >> 18));
  out[1] = (char)(0x80 | ((code >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((code >> 6) & 0x3f));
  out[3] = (char)(0x80 | (code & 0x3f));
  return 4;
}

/* A valid string's value (escapes decoded, a surrogate pair into one character) into `out`, which has room for
 * `s.length` bytes: no escape decodes longer than it is written. Returns the value's length. */
static size_t decode_string(span s, char *out) {
  const char *p = s.at, *end = s.at + s.length;
  size_t n = 0;
  while (p < end) {
    if (*p != '\\') {
      out[n++] = *p++;
      continue;
    }
    char e = p[1];
    p += 2;
    switch (e) {
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u': {
        unsigned code = hex_value(p);
        p += 4;
        if (code >= 0xd800 && code < 0xdc00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
          unsigned low = hex_value(p + 2);
          if (low >= 0xdc00 && low < 0xe000) {
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
            p += 6;
          }
        }
        n += put_utf8(out + n, code);
        break;
      }
      default: out[n++] = e; /* " \ / */
    }
  }
  return n;
}

/* Whether a key (as written) names `name`. */
static bool key_is(span key, const char *name, size_t length) {
  if (!key.escaped) return key.length == length && memcmp(key.at, name, length) == 0;
  if (key.length > 6 * length) return false;
  char decoded[6 * 17]; /* the longest name, completion_tokens, with every character escaped */
  if (key.length > sizeof decoded) return false;
  size_t n = decode_string(key, decoded);
  return n == length && memcmp(decoded, name, length) == 0;
}

static bool same_key(span a, span b) {
  if (!a.escaped && !b.escaped) return a.length == b.length && memcmp(a.at, b.at, a.length) == 0;
  char *x = malloc(a.length + 1), *y = malloc(b.length + 1);
  bool same = false;
  if (x && y) {
    size_t m = a.escaped ? decode_string(a, x) : (memcpy(x, a.at, a.length), a.length);
    size_t n = b.escaped ? decode_string(b, y) : (memcpy(y, b.at, b.length), b.length);
    same = m == n && memcmp(x, y, m) == 0;
  }
  free(x);
  free(y);
  return same;
}

/* The top-level members of one JSON object, each handed to `visit`; false when the text is not exactly one JSON
 * object, or repeats a top-level key. */
typedef bool (*member_visitor)(void *context, span key, const json_value *value); /* false: refuse the object */

#define MAX_TRACKED_KEYS 256

static bool scan_object(const char *text, size_t length, member_visitor visit, void *context) {
  cursor c = {text, text + length};
  span keys[MAX_TRACKED_KEYS];
  size_t tracked = 0;
  skip_space(&c);
  if (c.p >= c.end || *c.p != '{') return false;
  c.p++;
  skip_space(&c);
  if (c.p < c.end && *c.p == '}') {
    c.p++;
  } else {
    for (;;) {
      span key;
      json_value value;
      if (c.p >= c.end || *c.p != '"' || !scan_string(&c, &key)) return false;
      for (size_t i = 0; i < tracked; i++)
        if (same_key(keys[i], key)) return false;
      /* Past MAX_TRACKED_KEYS members the later keys are compared no more (a quadratic cost an attacker could
       * choose): the visitors still refuse a second member of each name they read (`model`, `usage`, ...). */
      if (tracked < MAX_TRACKED_KEYS) keys[tracked++] = key;
      skip_space(&c);
      if (c.p >= c.end || *c.p != ':') return false;
      c.p++;
      if (!scan_value(&c, 1, &value)) return false;
      if (!visit(context, key, &value)) return false;
      skip_space(&c);
      if (c.p >= c.end) return false;
      if (*c.p == '}') {
        c.p++;
        break;
      }
      if (*c.p != ',') return false;
      c.p++;
      skip_space(&c);
    }
  }
  skip_space(&c);
  return c.p == c.end;
}

/* ---- the request: its model ---- */

typedef struct {
  json_value model;
} request_fields;

static bool visit_request(void *context, span key, const json_value *value) {
  request_fields *fields = context;
  if (!key_is(key, "model", 5)) return true;
  if (fields->model.kind != ABSENT) return false; /* a second `model` */
  fields->model = *value;
  return true;
}

/* Exported for the tests (tests/test_ai_filter.py), which hold it to Python's json module. */
EXPORT bool xds_ai_scan_request(const char *body, size_t length, request_fields *fields) {
  memset(fields, 0, sizeof *fields);
  return scan_object(body, length, visit_request, fields);
}

/* A value as a header renders it, into `out` (room for value.text.length bytes); returns its length. */
EXPORT size_t xds_ai_render(const json_value *value, char *out) {
  if (value->kind == IS_STRING) return value->text.escaped ? decode_string(value->text, out)
                                                           : (memcpy(out, value->text.at, value->text.length),
                                                              value->text.length);
  /* Any other value's JSON text, without the whitespace outside its strings. */
  size_t n = 0;
  bool in_string = false;
  for (const char *p = value->text.at, *end = p + value->text.length; p < end; p++) {
    char ch = *p;
    if (in_string) {
      out[n++] = ch;
      if (ch == '\\') out[n++] = *++p;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
      out[n++] = ch;
    } else if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
      out[n++] = ch;
    }
  }
  return n;
}

/* ---- the answer: model and usage ---- */

enum usage_field { INPUT_TOKENS, OUTPUT_TOKENS, TOTAL_TOKENS, USAGE_FIELDS };

typedef struct {
  json_value model;
  double tokens[USAGE_FIELDS];
  bool has[USAGE_FIELDS];
  bool usage_seen; /* `usage` is an object that reads as one (no repeated key), whatever it holds */
} answer_fields;

/* A token count: a JSON integer, not negative (a fraction, an exponent or a sign is no count). */
static bool count_of(const json_value *value, double *out) {
  if (value->kind != IS_OTHER || value->text.length == 0 || value->text.length > 15) return false;
  double count = 0;
  for (size_t i = 0; i < value->text.length; i++) {
    char digit = value->text.at[i];
    if (digit < '0' || digit > '9') return false;
    count = count * 10 + (digit - '0');
  }
  *out = count;
  return true;
}

static bool visit_usage(void *context, span key, const json_value *value) {
  answer_fields *fields = context;
  int field = -1;
  if (key_is(key, "prompt_tokens", 13) || key_is(key, "input_tokens", 12)) field = INPUT_TOKENS;
  else if (key_is(key, "completion_tokens", 17) || key_is(key, "output_tokens", 13)) field = OUTPUT_TOKENS;
  else if (key_is(key, "total_tokens", 12)) field = TOTAL_TOKENS;
  if (field >= 0 && count_of(value, &fields->tokens[field])) fields->has[field] = true;
  return true;
}

static bool visit_answer(void *context, span key, const json_value *value) {
  answer_fields *fields = context;
  if (key_is(key, "model", 5)) {
    fields->model = *value;
  } else if (key_is(key, "usage", 5) && value->kind == IS_OTHER && value->text.length && value->text.at[0] == '{') {
    /* `usage` was already checked as JSON; its members are read in a second, shallow pass over its bytes. */
    answer_fields usage = *fields;
    if (scan_object(value->text.at, value->text.length, visit_usage, &usage)) {
      *fields = usage;
      fields->usage_seen = true;
    }
  }
  return true; /* an answer is only read: a member repeated past MAX_TRACKED_KEYS counts as its last */
}

EXPORT bool xds_ai_scan_answer(const char *body, size_t length, answer_fields *fields) {
  memset(fields, 0, sizeof *fields);
  return scan_object(body, length, visit_answer, fields);
}

/* ---- the filter ---- */

/* What the translator configures (translators/xds/model.py), one value per line, so every name and limit stays in
 * the translator: the two request headers, the metadata namespace of the usage, the endpoint metadata namespace
 * that names an endpoint's backend, the bound on a client's or a backend's value in the usage log, and the usage
 * log's cluster, flush interval (ms) and batch size that exports at once (bytes). */
typedef struct {
  char *storage; /* the config's text, which the names point into */
  char *model_header, *body_header, *metering_namespace, *backend_namespace;
  size_t echo_limit;
  usage_exporter *exporter;
} filter_config;

enum answer_kind {
  ANSWER_UNREAD, /* not metered here (not JSON, compressed, or given up) */
  ANSWER_JSON,   /* one JSON document: a copy is kept until its end */
  ANSWER_EVENTS, /* a 200 event stream: its events are read as they pass */
};

/* The usage an event stream has reported so far (the last `usage` wins, as the stream goes on). */
typedef struct {
  bytes model;
  double tokens[USAGE_FIELDS];
  bool has[USAGE_FIELDS];
} stream_usage;

/* An event stream being read: the line not finished yet, the data of the event not finished yet, the usage. */
typedef struct {
  bytes line;
  bytes event;
  bool event_has_data;
  bool failed; /* a line or event past MAX_EVENT_BYTES: read no further */
  stream_usage usage;
} event_reader;

typedef struct {
  const filter_config *config;
  bool read_request; /* the request body is read: it is JSON (declared, or with no Content-Type) */
  bool request_done;
  struct timespec started; /* the request's headers, on the monotonic clock */
  enum answer_kind answer_kind;
  bytes answer; /* JSON: the answer so far */
  event_reader events;
  bool first_chunk_seen;
  double first_chunk_ms; /* after the request's headers */
  bool json_body;        /* the body was one JSON object: an AI request, which the usage log records */
  bytes model;           /* the routed model, as the model header has it (up to the config's echo_limit) */
  stream_usage usage;    /* the answer's, once it ended */
  enum answer_kind metered; /* what the usage was read from (ANSWER_UNREAD: it was not) */
  bool answered;         /* its last byte passed */
  struct timespec answered_at;
} filter_state;

EXPORT void xds_ai_events_free(event_reader *reader);

static module_buffer text(const char *s) { return (module_buffer){s, strlen(s)}; }

static char *next_line(char **cursor_text) {
  char *line = *cursor_text, *newline = line ? strchr(line, '\n') : NULL;
  if (newline) {
    *newline = 0;
    *cursor_text = newline + 1;
  } else {
    *cursor_text = NULL;
  }
  return line && *line ? line : NULL;
}

EXPORT const char *envoy_dynamic_module_on_program_init(void) { return "v0.2.0"; }

/* A count of a config line: digits only, at most 9 of them. */
static bool count_line(const char *line, size_t *out) {
  size_t digits = line ? strspn(line, "0123456789") : 0;
  if (digits == 0 || digits > 9 || line[digits]) return false;
  *out = (size_t)strtoul(line, NULL, 10);
  return true;
}

EXPORT const void *envoy_dynamic_module_on_http_filter_config_new(void *envoy_config, envoy_buffer name,
                                                                  envoy_buffer config) {
  (void)name;
  char *copy = malloc(config.length + 1);
  filter_config *parsed = calloc(1, sizeof *parsed);
  if (!copy || !parsed) goto fail;
  memcpy(copy, config.ptr, config.length);
  copy[config.length] = 0;
  parsed->storage = copy;
  char *rest = copy;
  parsed->model_header = next_line(&rest);
  parsed->body_header = next_line(&rest);
  parsed->metering_namespace = next_line(&rest);
  parsed->backend_namespace = next_line(&rest);
  const char *echo_limit = next_line(&rest), *usage_cluster = next_line(&rest);
  const char *flush_ms = next_line(&rest), *flush_bytes = next_line(&rest);
  size_t flush_ms_count, flush_bytes_count;
  if (!parsed->model_header || !parsed->body_header || !parsed->metering_namespace || !parsed->backend_namespace ||
      !usage_cluster || !count_line(echo_limit, &parsed->echo_limit) || !count_line(flush_ms, &flush_ms_count) ||
      !count_line(flush_bytes, &flush_bytes_count) || (rest && *rest))
    goto fail;
  access_log_start((unsigned)flush_ms_count);
  parsed->exporter = usage_log_start(envoy_config, usage_cluster, (unsigned)flush_ms_count, flush_bytes_count);
  if (parsed->exporter) return parsed;
fail:
  free(copy);
  free(parsed);
  return NULL; /* Envoy rejects the config */
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(const void *config) {
  filter_config *parsed = (filter_config *)config;
  usage_log_stop(parsed->exporter);
  free(parsed->storage);
  free(parsed);
}

EXPORT void envoy_dynamic_module_on_http_filter_config_scheduled(void *envoy_config, const void *config,
                                                                 uint64_t event) {
  (void)envoy_config;
  (void)event;
  usage_log_export(((const filter_config *)config)->exporter);
}

EXPORT void envoy_dynamic_module_on_http_filter_config_http_callout_done(void *envoy_config, const void *config,
                                                                         uint64_t callout, int result,
                                                                         const http_header *headers,
                                                                         size_t headers_size,
                                                                         const envoy_buffer *chunks,
                                                                         size_t chunks_size) {
  (void)envoy_config, (void)config, (void)callout, (void)chunks, (void)chunks_size;
  usage_log_exported(result, headers, headers_size);
}

/* The per-route config only turns the filter on for a route (it is disabled on the listener). */
static const int per_route_marker = 1;

EXPORT const void *envoy_dynamic_module_on_http_filter_per_route_config_new(envoy_buffer name, envoy_buffer config) {
  (void)name;
  (void)config;
  return &per_route_marker;
}

EXPORT void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *config) { (void)config; }

EXPORT const void *envoy_dynamic_module_on_http_filter_new(const void *config, void *envoy_filter) {
  (void)envoy_filter;
  filter_state *state = calloc(1, sizeof *state);
  if (state) state->config = config;
  return state;
}

EXPORT void envoy_dynamic_module_on_http_filter_destroy(const void *filter) {
  filter_state *state = (filter_state *)filter;
  if (!state) return;
  free(state->answer.at);
  free(state->model.at);
  free(state->usage.model.at);
  xds_ai_events_free(&state->events);
  free(state);
}

static bool header(void *envoy_filter, int type, const char *name, envoy_buffer *value) {
  size_t count = 0;
  return envoy_dynamic_module_callback_http_get_header(envoy_filter, type, text(name), value, 0, &count) &&
         value->ptr != NULL;
}

/* `application/json`, in any case, then nothing or parameters: what OpenAI-compatible servers send and accept. */
static bool is_json_type(envoy_buffer value) {
  static const char json[] = "application/json";
  size_t n = sizeof json - 1;
  if (value.length < n || strncasecmp(value.ptr, json, n) != 0) return false;
  while (n < value.length && (value.ptr[n] == ' ' || value.ptr[n] == '\t')) n++;
  return n == value.length || value.ptr[n] == ';';
}

EXPORT int envoy_dynamic_module_on_http_filter_request_headers(void *envoy_filter, const void *filter,
                                                               bool end_of_stream) {
  filter_state *state = (filter_state *)filter;
  clock_gettime(CLOCK_MONOTONIC, &state->started);
  if (end_of_stream) return HEADERS_CONTINUE; /* no body: the route it is on refuses it */
  envoy_buffer content_type;
  if (!header(envoy_filter, REQUEST_HEADER, "content-type", &content_type)) {
    envoy_dynamic_module_callback_http_set_header(envoy_filter, REQUEST_HEADER, text("content-type"),
                                                  text("application/json"));
    state->read_request = true;
  } else {
    state->read_request = is_json_type(content_type);
  }
  return HEADERS_STOP_ITERATION; /* the headers wait for the body, which decides the route */
}

#define STACK_CHUNKS 8

/* The chunks of one of a request's or an answer's bodies: in `stack` (STACK_CHUNKS long) when they fit, else in an
 * array of the heap, which the caller frees (what is not `stack`). NULL when Envoy gives none or memory is short;
 * `*count` 0 (and `stack`) when there are none. */
static envoy_buffer *body_chunks(void *envoy_filter, int type, envoy_buffer *stack, size_t *count) {
  *count = envoy_dynamic_module_callback_http_get_body_chunks_size(envoy_filter, type);
  if (*count == 0) return stack;
  envoy_buffer *chunks = *count <= STACK_CHUNKS ? stack : malloc(*count * sizeof *chunks);
  if (chunks && !envoy_dynamic_module_callback_http_get_body_chunks(envoy_filter, type, chunks)) {
    if (chunks != stack) free(chunks);
    return NULL;
  }
  return chunks;
}

/* The whole request body, as one piece: what Envoy holds (the earlier chunks it buffered for this filter, and the
 * last one, which it moves there too when it holds any) then the chunk of this call (the whole body when it came in
 * one). Envoy's own slice when there is one, else a copy in `copy` (the caller frees its bytes). */
static bool whole_body(void *envoy_filter, const char **body, size_t *length, bytes *copy) {
  envoy_buffer held_stack[STACK_CHUNKS], received_stack[STACK_CHUNKS];
  size_t held_count, received_count;
  envoy_buffer *held = body_chunks(envoy_filter, BUFFERED_REQUEST, held_stack, &held_count);
  envoy_buffer *received = body_chunks(envoy_filter, RECEIVED_REQUEST, received_stack, &received_count);
  bool ok = held != NULL && received != NULL;
  if (ok && held_count + received_count == 1) {
    envoy_buffer only = held_count ? held[0] : received[0];
    *body = only.ptr;
    *length = only.length;
  } else if (ok) {
    for (size_t i = 0; ok && i < held_count; i++) ok = append(copy, held[i].ptr, held[i].length, SIZE_MAX);
    for (size_t i = 0; ok && i < received_count; i++) ok = append(copy, received[i].ptr, received[i].length, SIZE_MAX);
    *body = copy->at ? copy->at : "";
    *length = copy->length;
  }
  if (held != held_stack) free(held);
  if (received != received_stack) free(received);
  return ok;
}

/* The model header, and the usage log's copy of it (bounded). */
static void set_model(void *envoy_filter, filter_state *state, const json_value *value) {
  char stack_text[512];
  char *rendered = value->text.length <= sizeof stack_text ? stack_text : malloc(value->text.length);
  if (!rendered) return;
  size_t n = xds_ai_render(value, rendered);
  if (n) {
    envoy_dynamic_module_callback_http_set_header(envoy_filter, REQUEST_HEADER, text(state->config->model_header),
                                                  (module_buffer){rendered, n});
    size_t kept = n < state->config->echo_limit ? n : state->config->echo_limit;
    append(&state->model, rendered, kept, kept);
  }
  if (rendered != stack_text) free(rendered);
}

static void route_by_body(void *envoy_filter, filter_state *state) {
  if (state->request_done) return;
  state->request_done = true;
  if (!state->read_request) return;
  const char *body;
  size_t length;
  bytes copy = {0};
  if (!whole_body(envoy_filter, &body, &length, &copy)) {
    free(copy.at);
    return;
  }
  request_fields fields;
  if (xds_ai_scan_request(body, length, &fields)) {
    const filter_config *config = state->config;
    envoy_dynamic_module_callback_http_set_header(envoy_filter, REQUEST_HEADER, text(config->body_header),
                                                  text("json"));
    state->json_body = true;
    if (fields.model.kind == IS_STRING || fields.model.kind == IS_OTHER) set_model(envoy_filter, state, &fields.model);
    envoy_dynamic_module_callback_http_clear_route_cache(envoy_filter);
  }
  free(copy.at);
}

EXPORT int envoy_dynamic_module_on_http_filter_request_body(void *envoy_filter, const void *filter,
                                                            bool end_of_stream) {
  if (!end_of_stream) return BODY_STOP_AND_BUFFER; /* Envoy holds it, within the connection's buffer limit (413) */
  route_by_body(envoy_filter, (filter_state *)filter);
  return BODY_CONTINUE;
}

EXPORT int envoy_dynamic_module_on_http_filter_request_trailers(void *envoy_filter, const void *filter) {
  route_by_body(envoy_filter, (filter_state *)filter);
  return TRAILERS_CONTINUE;
}

static bool header_is(void *envoy_filter, const char *name, const char *value) {
  envoy_buffer found;
  size_t length = strlen(value);
  return header(envoy_filter, RESPONSE_HEADER, name, &found) && found.length == length &&
         memcmp(found.ptr, value, length) == 0;
}

static void end_answer(void *envoy_filter, filter_state *state);

EXPORT int envoy_dynamic_module_on_http_filter_response_headers(void *envoy_filter, const void *filter,
                                                                bool end_of_stream) {
  filter_state *state = (filter_state *)filter;
  envoy_buffer content_type, encoding;
  state->answer_kind = ANSWER_UNREAD;
  if (end_of_stream) {
    end_answer(envoy_filter, state);
    return HEADERS_CONTINUE;
  }
  /* A compressed answer is passed on unread: decoding it would cost more than its counts are worth. */
  if (header(envoy_filter, RESPONSE_HEADER, "content-encoding", &encoding) ||
      !header(envoy_filter, RESPONSE_HEADER, "content-type", &content_type))
    return HEADERS_CONTINUE;
  static const char events[] = "text/event-stream";
  if (is_json_type(content_type)) {
    state->answer_kind = ANSWER_JSON;
  } else if (content_type.length >= sizeof events - 1 && memcmp(content_type.ptr, events, sizeof events - 1) == 0 &&
             header_is(envoy_filter, ":status", "200")) {
    state->answer_kind = ANSWER_EVENTS;
  }
  return HEADERS_CONTINUE;
}

static void set_number(void *envoy_filter, const filter_state *state, const char *key, double value) {
  envoy_dynamic_module_callback_http_set_dynamic_metadata_number(envoy_filter, text(state->config->metering_namespace),
                                                                 text(key), value);
}

static void set_string(void *envoy_filter, const filter_state *state, const char *key, const char *value,
                       size_t length) {
  envoy_dynamic_module_callback_http_set_dynamic_metadata_string(envoy_filter, text(state->config->metering_namespace),
                                                                 text(key), (module_buffer){value, length});
}

static const char *const USAGE_KEYS[USAGE_FIELDS] = {"input_tokens", "output_tokens", "total_tokens"};

/* A JSON answer, whole: its model and whichever counts its `usage` has (as Envoy's json_to_metadata read them). */
static bool meter_json(filter_state *state) {
  answer_fields fields;
  if (!xds_ai_scan_answer(state->answer.at, state->answer.length, &fields)) return false;
  stream_usage *usage = &state->usage;
  for (int i = 0; i < USAGE_FIELDS; i++) {
    usage->has[i] = fields.has[i];
    usage->tokens[i] = fields.tokens[i];
  }
  if (fields.model.kind == IS_STRING && fields.model.text.length && reserve(&usage->model, fields.model.text.length))
    usage->model.length = xds_ai_render(&fields.model, usage->model.at);
  return true;
}

static bool contains(const char *haystack, size_t length, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= length; i++)
    if (haystack[i] == needle[0] && memcmp(haystack + i, needle, n) == 0) return true;
  return false;
}

/* One event's data. Only events that can change something are read: until a model is known (every chunk repeats
 * it), then those that may mention usage (the word, or any \u escape: a key may be spelled with escapes). A `usage` object sets all three counts: input 0 and total input + output
 * where it leaves them out. */
EXPORT void xds_ai_read_event(stream_usage *usage, const char *data, size_t length) {
  bool may_name_usage = contains(data, length, "usage") || contains(data, length, "\\u"); /* or spelled escaped */
  if ((usage->model.length && !may_name_usage) || (length == 6 && memcmp(data, "[DONE]", 6) == 0)) return;
  answer_fields fields;
  if (!xds_ai_scan_answer(data, length, &fields)) return;
  if (fields.model.kind == IS_STRING && fields.model.text.length) {
    usage->model.length = 0;
    if (reserve(&usage->model, fields.model.text.length))
      usage->model.length = xds_ai_render(&fields.model, usage->model.at);
  }
  if (!fields.usage_seen) return;
  usage->tokens[INPUT_TOKENS] = fields.has[INPUT_TOKENS] ? fields.tokens[INPUT_TOKENS] : 0;
  usage->has[INPUT_TOKENS] = true;
  usage->has[OUTPUT_TOKENS] = fields.has[OUTPUT_TOKENS];
  usage->tokens[OUTPUT_TOKENS] = fields.has[OUTPUT_TOKENS] ? fields.tokens[OUTPUT_TOKENS] : 0;
  usage->tokens[TOTAL_TOKENS] = fields.has[TOTAL_TOKENS] ? fields.tokens[TOTAL_TOKENS]
                                                         : usage->tokens[INPUT_TOKENS] + usage->tokens[OUTPUT_TOKENS];
  usage->has[TOTAL_TOKENS] = true;
}

/* The longest line (and event) an event stream may have here: past it, the stream is passed on unmetered. */
#define MAX_EVENT_BYTES (1u << 20)

static void end_event(event_reader *reader) {
  if (reader->event_has_data && reader->event.length)
    xds_ai_read_event(&reader->usage, reader->event.at, reader->event.length);
  reader->event.length = 0;
  reader->event_has_data = false;
}

/* One line of the stream, without its end: a blank line ends an event; `data:` lines make its data (joined by a
 * line feed, one space after the colon dropped); other fields and comments are skipped. */
static bool read_line(event_reader *reader, const char *line, size_t length) {
  if (length && line[length - 1] == '\r') length--;
  if (length == 0) {
    end_event(reader);
    return true;
  }
  if (length < 5 || memcmp(line, "data:", 5) != 0) return true;
  line += 5;
  length -= 5;
  if (length && *line == ' ') {
    line++;
    length--;
  }
  if (reader->event_has_data && !append(&reader->event, "\n", 1, MAX_EVENT_BYTES)) return false;
  reader->event_has_data = true;
  return append(&reader->event, line, length, MAX_EVENT_BYTES);
}

/* A chunk of the stream, cut anywhere: whole lines are read in place, the unfinished one is kept. False once the
 * stream cannot be read (a line or an event too long): it is then passed on unread. */
EXPORT bool xds_ai_events_feed(event_reader *reader, const char *chunk, size_t length) {
  const char *end = chunk + length;
  while (!reader->failed && chunk < end) {
    const char *newline = memchr(chunk, '\n', (size_t)(end - chunk));
    if (!newline) {
      reader->failed = !append(&reader->line, chunk, (size_t)(end - chunk), MAX_EVENT_BYTES);
      break;
    }
    if (reader->line.length) {
      reader->failed = !append(&reader->line, chunk, (size_t)(newline - chunk), MAX_EVENT_BYTES) ||
                       !read_line(reader, reader->line.at, reader->line.length);
      reader->line.length = 0;
    } else {
      reader->failed = !read_line(reader, chunk, (size_t)(newline - chunk));
    }
    chunk = newline + 1;
  }
  return !reader->failed;
}

/* The end of the stream: a last event whose blank line never came counts too. */
EXPORT void xds_ai_events_end(event_reader *reader) {
  if (reader->failed) return;
  if (reader->line.length) read_line(reader, reader->line.at, reader->line.length);
  reader->line.length = 0;
  end_event(reader);
}

EXPORT void xds_ai_events_free(event_reader *reader) {
  free(reader->line.at);
  free(reader->event.at);
  free(reader->usage.model.at);
  memset(reader, 0, sizeof *reader);
}

/* Nanoseconds from `from` to `to` (monotonic clock readings). */
static int64_t nanos_between(const struct timespec *from, const struct timespec *to) {
  return (int64_t)(to->tv_sec - from->tv_sec) * 1000000000 + (to->tv_nsec - from->tv_nsec);
}

static double milliseconds_since(const struct timespec *start) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)nanos_between(start, &now) / 1e6;
}

/* The end of an event stream: its usage is the last it reported (the reader's, taken over). */
static bool meter_events(filter_state *state) {
  xds_ai_events_end(&state->events);
  if (state->events.failed) return false;
  free(state->usage.model.at);
  state->usage = state->events.usage;
  state->events.usage = (stream_usage){0};
  return true;
}

/* The answer's last byte passed: its usage into the metadata (the access log's), when it was read. */
static void end_answer(void *envoy_filter, filter_state *state) {
  if (state->answered) return;
  state->answered = true;
  clock_gettime(CLOCK_MONOTONIC, &state->answered_at);
  enum answer_kind kind = state->answer_kind;
  state->answer_kind = ANSWER_UNREAD;
  if (!(kind == ANSWER_JSON ? meter_json(state) : kind == ANSWER_EVENTS && meter_events(state))) return;
  state->metered = kind;
  const stream_usage *usage = &state->usage;
  for (int i = 0; i < USAGE_FIELDS; i++)
    if (usage->has[i]) set_number(envoy_filter, state, USAGE_KEYS[i], usage->tokens[i]);
  if (usage->model.length) set_string(envoy_filter, state, "response_model", usage->model.at, usage->model.length);
  if (state->metered == ANSWER_EVENTS && state->first_chunk_seen)
    set_number(envoy_filter, state, "first_token_ms", state->first_chunk_ms);
}

EXPORT int envoy_dynamic_module_on_http_filter_response_body(void *envoy_filter, const void *filter,
                                                             bool end_of_stream) {
  filter_state *state = (filter_state *)filter;
  if (state->answer_kind == ANSWER_UNREAD) {
    if (end_of_stream) end_answer(envoy_filter, state);
    return BODY_CONTINUE;
  }
  envoy_buffer stack[STACK_CHUNKS];
  size_t count;
  envoy_buffer *chunks = body_chunks(envoy_filter, RECEIVED_RESPONSE, stack, &count);
  bool ok = chunks != NULL;
  for (size_t i = 0; ok && i < count; i++) {
    if (state->answer_kind == ANSWER_JSON) {
      ok = append(&state->answer, chunks[i].ptr, chunks[i].length, MAX_ANSWER_BYTES);
    } else {
      if (!state->first_chunk_seen && chunks[i].length) {
        state->first_chunk_seen = true;
        state->first_chunk_ms = (double)(long long)(milliseconds_since(&state->started) + 0.5);
      }
      ok = xds_ai_events_feed(&state->events, chunks[i].ptr, chunks[i].length);
    }
  }
  if (chunks != stack) free(chunks);
  if (!ok) state->answer_kind = ANSWER_UNREAD; /* too large to keep: passed on unmetered */
  if (end_of_stream) end_answer(envoy_filter, state);
  return BODY_CONTINUE; /* every byte goes on at once: the copy is the filter's own */
}

EXPORT int envoy_dynamic_module_on_http_filter_response_trailers(void *envoy_filter, const void *filter) {
  end_answer(envoy_filter, (filter_state *)filter);
  return TRAILERS_CONTINUE;
}

/* Whole `per_second` units (1000: milliseconds) from `from` to `to`. */
static uint64_t elapsed(const struct timespec *from, const struct timespec *to, long per_second) {
  int64_t nanos = nanos_between(from, to);
  return nanos > 0 ? (uint64_t)nanos / (uint64_t)(1000000000 / per_second) : 0;
}

/* `value` in decimal, into `out` (20 bytes at least). */
static module_buffer decimal(char *out, uint64_t value) {
  char digits[20];
  size_t n = 0;
  do digits[n++] = (char)('0' + value % 10);
  while ((value /= 10) != 0);
  for (size_t i = 0; i < n; i++) out[i] = digits[n - 1 - i];
  return (module_buffer){out, n};
}

static module_buffer bounded(const char *at, size_t length, size_t limit) {
  return (module_buffer){at, length < limit ? length : limit};
}

/* A request header's value, bounded; no bytes when it has none. */
static module_buffer request_header(void *envoy_filter, const char *name, size_t limit) {
  envoy_buffer value;
  return header(envoy_filter, REQUEST_HEADER, name, &value) ? bounded(value.ptr, value.length, limit)
                                                            : (module_buffer){0};
}

static module_buffer attribute(void *envoy_filter, int id) {
  envoy_buffer value;
  return envoy_dynamic_module_callback_http_filter_get_attribute_string(envoy_filter, id, &value) && value.ptr
             ? (module_buffer){value.ptr, value.length}
             : (module_buffer){0};
}

static char *put_digits(char *out, long value, int width) {
  for (int i = width - 1; i >= 0; i--, value /= 10) out[i] = (char)('0' + value % 10);
  return out + width;
}

/* Envoy's %START_TIME% (the request's first byte): RFC 3339 in UTC, to the millisecond ("2026-12-06T19:25:00.123Z"),
 * into `out` (24 bytes). */
static module_buffer start_time(void *envoy_filter, char *out) {
  timing_info timings;
  envoy_dynamic_module_callback_http_get_timing_info(envoy_filter, &timings);
  if (!timings.has[0]) return (module_buffer){0};
  struct tm utc;
  time_t seconds = (time_t)(timings.start_time_unix_ns / 1000000000);
  if (!gmtime_r(&seconds, &utc)) return (module_buffer){0};
  char *end = put_digits(out, utc.tm_year + 1900L, 4);
  *end++ = '-';
  end = put_digits(end, utc.tm_mon + 1L, 2);
  *end++ = '-';
  end = put_digits(end, utc.tm_mday, 2);
  *end++ = 'T';
  end = put_digits(end, utc.tm_hour, 2);
  *end++ = ':';
  end = put_digits(end, utc.tm_min, 2);
  *end++ = ':';
  end = put_digits(end, utc.tm_sec, 2);
  *end++ = '.';
  end = put_digits(end, (long)(timings.start_time_unix_ns % 1000000000 / 1000000), 3);
  *end++ = 'Z';
  return (module_buffer){out, (size_t)(end - out)};
}

/* The access log's line of an AI request: the usage record's values, and what only the log prints. */
static void log_access(void *envoy_filter, const filter_state *state, const usage_record *record) {
  const filter_config *config = state->config;
  const stream_usage *usage = &state->usage;
  char started[32], total[24];
  access_values line = {{
      [ACCESS_START_TIME] = start_time(envoy_filter, started),
      [ACCESS_METHOD] = request_header(envoy_filter, ":method", config->echo_limit),
      [ACCESS_PATH] = record->lines[LINE_PATH],
      [ACCESS_AUTHORITY] = request_header(envoy_filter, ":authority", config->echo_limit),
      [ACCESS_STATUS] = record->lines[LINE_STATUS],
      [ACCESS_DETAILS] = attribute(envoy_filter, ATTRIBUTE_RESPONSE_CODE_DETAILS),
      [ACCESS_DURATION_MS] = record->lines[LINE_STREAM_MS],
      [ACCESS_ROUTE] = attribute(envoy_filter, ATTRIBUTE_XDS_ROUTE_NAME),
      [ACCESS_UPSTREAM_HOST] = attribute(envoy_filter, ATTRIBUTE_UPSTREAM_ADDRESS),
      [ACCESS_REQUEST_ID] = request_header(envoy_filter, "x-request-id", config->echo_limit),
      [ACCESS_MODEL] = record->lines[LINE_MODEL],
      [ACCESS_BACKEND] = record->lines[LINE_BACKEND],
      [ACCESS_INPUT_TOKENS] = record->lines[LINE_INPUT_TOKENS],
      [ACCESS_OUTPUT_TOKENS] = record->lines[LINE_OUTPUT_TOKENS],
  }};
  if (usage->model.length) line.values[ACCESS_RESPONSE_MODEL] = (module_buffer){usage->model.at, usage->model.length};
  if (usage->has[TOTAL_TOKENS])
    line.values[ACCESS_TOTAL_TOKENS] = decimal(total, (uint64_t)usage->tokens[TOTAL_TOKENS]);
  access_log_add(&line);
}

/* The request is over: an AI request's record joins the usage log. The values Envoy holds (the path, the status, the
 * answering endpoint's backend) are read now, the filter's own (the durations, the usage, the models) were kept. */
EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(void *envoy_filter, const void *filter) {
  filter_state *state = (filter_state *)filter;
  if (!state->json_body) return; /* not an AI request: nothing of it is metered */
  const filter_config *config = state->config;
  usage_record record = {0};
  char numbers[USAGE_LINES][24];
  record.lines[LINE_PATH] = request_header(envoy_filter, ":path", config->echo_limit);
  uint64_t status = 0; /* no answer (the client left first): 0, as Envoy's %RESPONSE_CODE% writes it */
  if (!envoy_dynamic_module_callback_http_filter_get_attribute_int(envoy_filter, ATTRIBUTE_RESPONSE_CODE, &status))
    status = 0;
  record.lines[LINE_STATUS] = decimal(numbers[LINE_STATUS], status);
  envoy_buffer backend;
  if (envoy_dynamic_module_callback_http_get_metadata_string(envoy_filter, METADATA_HOST,
                                                             text(config->backend_namespace), text("backend"),
                                                             &backend) &&
      backend.ptr)
    record.lines[LINE_BACKEND] = (module_buffer){backend.ptr, backend.length};
  else
    record.lines[LINE_CLUSTER] = attribute(envoy_filter, ATTRIBUTE_XDS_CLUSTER_NAME); /* no backend named */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (state->answered)
    record.lines[LINE_DURATION_US] = decimal(numbers[LINE_DURATION_US], elapsed(&state->started, &state->answered_at,
                                                                                1000000));
  record.lines[LINE_STREAM_MS] = decimal(numbers[LINE_STREAM_MS], elapsed(&state->started, &now, 1000));
  const stream_usage *usage = &state->usage;
  if (usage->has[INPUT_TOKENS])
    record.lines[LINE_INPUT_TOKENS] = decimal(numbers[LINE_INPUT_TOKENS], (uint64_t)usage->tokens[INPUT_TOKENS]);
  if (usage->has[OUTPUT_TOKENS])
    record.lines[LINE_OUTPUT_TOKENS] = decimal(numbers[LINE_OUTPUT_TOKENS], (uint64_t)usage->tokens[OUTPUT_TOKENS]);
  if (state->metered == ANSWER_EVENTS && state->first_chunk_seen)
    record.lines[LINE_FIRST_TOKEN_MS] = decimal(numbers[LINE_FIRST_TOKEN_MS], (uint64_t)state->first_chunk_ms);
  if (state->model.length) record.lines[LINE_MODEL] = (module_buffer){state->model.at, state->model.length};
  if (usage->model.length) record.response_model = bounded(usage->model.at, usage->model.length, config->echo_limit);
  usage_log_add(&record);
  log_access(envoy_filter, state, &record);
}

/* The hooks Envoy requires of every HTTP filter module, for features this filter does not use. */
EXPORT void envoy_dynamic_module_on_http_filter_scheduled(void *envoy_filter, const void *filter, uint64_t id) {
  (void)envoy_filter;
  (void)filter;
  (void)id;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(void *envoy_filter, const void *filter, uint64_t id,
                                                                  int result, void *headers, size_t headers_size,
                                                                  void *chunks, size_t chunks_size) {
  (void)envoy_filter, (void)filter, (void)id, (void)result, (void)headers, (void)headers_size, (void)chunks,
      (void)chunks_size;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(void *envoy_filter, const void *filter,
                                                                    uint64_t id, void *headers, size_t size,
                                                                    bool end_stream) {
  (void)envoy_filter, (void)filter, (void)id, (void)headers, (void)size, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(void *envoy_filter, const void *filter, uint64_t id,
                                                                 const void *data, size_t count, bool end_stream) {
  (void)envoy_filter, (void)filter, (void)id, (void)data, (void)count, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(void *envoy_filter, const void *filter,
                                                                     uint64_t id, void *trailers, size_t size) {
  (void)envoy_filter, (void)filter, (void)id, (void)trailers, (void)size;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(void *envoy_filter, const void *filter,
                                                                     uint64_t id) {
  (void)envoy_filter, (void)filter, (void)id;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(void *envoy_filter, const void *filter, uint64_t id,
                                                                  int reason) {
  (void)envoy_filter, (void)filter, (void)id, (void)reason;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void *envoy_filter,
                                                                                           const void *filter) {
  (void)envoy_filter, (void)filter;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void *envoy_filter,
                                                                                           const void *filter) {
  (void)envoy_filter, (void)filter;
}
