/*
 * The usage log (usage_log.h): records encoded by the workers into one batch, exported from Envoy's main thread.
 *
 * Envoy's OpenTelemetry access logger did this job before, at some 31,000 instructions a request (the formatter
 * rendering each line, a LogRecord message built and serialized): the filter already holds every value, so a
 * record here is a few hundred bytes written once. The wire format is the same (a batch is an
 * ExportLogsServiceRequest with one ResourceLogs and one ScopeLogs), so `serve` reads it as it read Envoy's.
 *
 * Threads: the workers add records under `usage.lock`; a ticker thread of the module wakes every flush interval and,
 * when the batch holds records, commits the newest exporting config's scheduler, which runs the export on Envoy's
 * main thread (the only thread where a config may call out). The ticker never writes to stdout (the access log has
 * a writer of its own), so a stdout that does not drain holds back neither the exports nor the ticker's join. A
 * config that goes away while its event is pending leaves the batch to the next tick and the next config; with no
 * config left, the ticker stops.
 */
#include "usage_log.h"

#include <pthread.h>
#include <stdio.h>

#include "bytes.h"
#include "protobuf.h"
#include "threads.h"

/* Room before the records for what encloses them: the gRPC frame (5 bytes) and the tags and lengths of the
 * request's ResourceLogs and ScopeLogs (at most 5 each for a batch under 256 MiB). */
#define FRAME_ROOM 16
/* A batch never grows past this (records past it are dropped and counted): gRPC's default message limit, 4 MiB,
 * which `serve` keeps, less room to spare. */
#define MAX_BATCH_BYTES (((size_t)4 << 20) - ((size_t)64 << 10))
#define EXPORT_TIMEOUT_MS 10000
#define EXPORT_PATH "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
#define RESPONSE_MODEL_KEY "response_model"

/* The tags of the messages a batch nests. */
enum {
  TAG_REQUEST_RESOURCE_LOGS = LENGTH_DELIMITED(1), /* ExportLogsServiceRequest.resource_logs */
  TAG_RESOURCE_SCOPE_LOGS = LENGTH_DELIMITED(2),   /* ResourceLogs.scope_logs */
  TAG_SCOPE_LOG_RECORDS = LENGTH_DELIMITED(2),     /* ScopeLogs.log_records */
  TAG_RECORD_BODY = LENGTH_DELIMITED(5),           /* LogRecord.body */
  TAG_RECORD_ATTRIBUTES = LENGTH_DELIMITED(6),     /* LogRecord.attributes */
  TAG_KEY_VALUE_KEY = LENGTH_DELIMITED(1),         /* KeyValue.key */
  TAG_KEY_VALUE_VALUE = LENGTH_DELIMITED(2),       /* KeyValue.value */
  TAG_ANY_VALUE_STRING = LENGTH_DELIMITED(1),      /* AnyValue.string_value */
};

struct usage_exporter {
  void *envoy_config, *scheduler;
  char *cluster;
  unsigned flush_ms;
  size_t flush_bytes;
  struct usage_exporter *next;
};

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  bytes batch;                /* FRAME_ROOM bytes, then the records; empty (length 0) when it holds none */
  usage_exporter *exporters;  /* newest first */
  bool export_pending;        /* a config's scheduler was committed and its event has not run */
  bool ticking, stopping;     /* the ticker thread runs; it is asked to end */
  pthread_t ticker;
  unsigned long long dropped; /* records no batch could take since the last export */
  bool failing;               /* the last export failed (the main thread's: it alone exports) */
} usage = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static module_buffer line_of(const usage_record *record, int line) {
  module_buffer value = record->lines[line];
  return value.ptr ? value : (module_buffer){"-", 1};
}

typedef struct {
  size_t body, any_value, attribute, record;
} record_sizes;

static record_sizes sizes_of(const usage_record *record) {
  record_sizes sizes = {.body = USAGE_LINES - 1};
  for (int line = 0; line < USAGE_LINES; line++) sizes.body += line_of(record, line).length;
  sizes.any_value = field_size(sizes.body);
  if (record->response_model.ptr)
    sizes.attribute = field_size(sizeof RESPONSE_MODEL_KEY - 1) +
                      field_size(field_size(record->response_model.length));
  sizes.record = field_size(sizes.any_value) + (record->response_model.ptr ? field_size(sizes.attribute) : 0);
  return sizes;
}

/* The record as one ScopeLogs.log_records field, into `out` (field_size(sizes->record) bytes, sizes_of(record)). */
static char *put_record(char *out, const usage_record *record, const record_sizes *sizes) {
  out = put_head(out, TAG_SCOPE_LOG_RECORDS, sizes->record);
  out = put_head(out, TAG_RECORD_BODY, sizes->any_value);
  out = put_head(out, TAG_ANY_VALUE_STRING, sizes->body);
  for (int line = 0; line < USAGE_LINES; line++) {
    module_buffer value = line_of(record, line);
    memcpy(out, value.ptr, value.length);
    out += value.length;
    if (line + 1 < USAGE_LINES) *out++ = '\n';
  }
  if (record->response_model.ptr) {
    out = put_head(out, TAG_RECORD_ATTRIBUTES, sizes->attribute);
    out = put_bytes(out, TAG_KEY_VALUE_KEY, RESPONSE_MODEL_KEY, sizeof RESPONSE_MODEL_KEY - 1);
    out = put_head(out, TAG_KEY_VALUE_VALUE, field_size(record->response_model.length));
    out = put_bytes(out, TAG_ANY_VALUE_STRING, record->response_model.ptr, record->response_model.length);
  }
  return out;
}

/* The gRPC message of a batch (FRAME_ROOM bytes, then `records` bytes of records): its head written into the room,
 * right before the records. Returns where the message starts; it ends where the records do. */
static char *frame(char *batch, size_t records) {
  size_t resource = field_size(records), request = field_size(resource);
  char head[FRAME_ROOM], *end = head;
  *end++ = 0; /* not compressed */
  for (int shift = 24; shift >= 0; shift -= 8) *end++ = (char)((request >> shift) & 0xff);
  end = put_head(end, TAG_REQUEST_RESOURCE_LOGS, resource);
  end = put_head(end, TAG_RESOURCE_SCOPE_LOGS, records);
  size_t length = (size_t)(end - head);
  memcpy(batch + FRAME_ROOM - length, head, length);
  return batch + FRAME_ROOM - length;
}

/* The tests' way in: `count` records as the gRPC message one batch of them makes, into `out` (`capacity` bytes);
 * its length, or 0 when it does not fit. */
EXPORT size_t xds_ai_usage_message(const usage_record *records, size_t count, char *out, size_t capacity) {
  size_t length = FRAME_ROOM;
  for (size_t i = 0; i < count; i++) length += field_size(sizes_of(&records[i]).record);
  if (length > capacity) return 0;
  char *end = out + FRAME_ROOM;
  for (size_t i = 0; i < count; i++) {
    record_sizes sizes = sizes_of(&records[i]);
    end = put_record(end, &records[i], &sizes);
  }
  char *message = frame(out, length - FRAME_ROOM);
  size_t message_length = (size_t)(end - message);
  memmove(out, message, message_length);
  return message_length;
}

static void log_message(int level, const char *message) {
  envoy_dynamic_module_callback_log(level, (module_buffer){message, strlen(message)});
}

/* With the lock held: the newest config exports the batch on Envoy's main thread, unless it is already asked to. */
static void request_export(void) {
  if (usage.batch.length > FRAME_ROOM && usage.exporters && !usage.export_pending) {
    usage.export_pending = true;
    envoy_dynamic_module_callback_http_filter_config_scheduler_commit(usage.exporters->scheduler, 0);
  }
}

static void *tick(void *unused) {
  (void)unused;
  pthread_mutex_lock(&usage.lock);
  while (!usage.stopping) {
    unsigned flush_ms = usage.exporters ? usage.exporters->flush_ms : 1000;
    struct timespec until = realtime_after_ms(flush_ms);
    pthread_cond_timedwait(&usage.wake, &usage.lock, &until);
    if (usage.stopping) break;
    request_export();
  }
  pthread_mutex_unlock(&usage.lock);
  return NULL;
}

usage_exporter *usage_log_start(void *envoy_config, const char *cluster, unsigned flush_ms, size_t flush_bytes) {
  usage_exporter *exporter = calloc(1, sizeof *exporter);
  char *name = strdup(cluster);
  void *scheduler = envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy_config);
  if (!exporter || !name || !scheduler) goto fail;
  *exporter = (usage_exporter){envoy_config, scheduler, name, flush_ms ? flush_ms : 1, flush_bytes, NULL};
  pthread_mutex_lock(&usage.lock);
  exporter->next = usage.exporters;
  usage.exporters = exporter;
  if (!usage.ticking) {
    usage.stopping = false;
    usage.ticking = start_thread(&usage.ticker, tick);
    if (!usage.ticking) log_message(LOG_WARN, "usage log: no thread to export it; the GenAI metrics get nothing");
  }
  pthread_mutex_unlock(&usage.lock);
  return exporter;
fail:
  if (scheduler) envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler);
  free(name);
  free(exporter);
  return NULL;
}

void usage_log_stop(usage_exporter *exporter) {
  if (!exporter) return;
  pthread_mutex_lock(&usage.lock);
  for (usage_exporter **at = &usage.exporters; *at; at = &(*at)->next) {
    if (*at == exporter) {
      *at = exporter->next;
      break;
    }
  }
  usage.export_pending = false; /* an event pending on this config never runs: the next tick asks another */
  bool stop_ticker = usage.exporters == NULL && usage.ticking;
  if (stop_ticker) {
    usage.stopping = true;
    pthread_cond_signal(&usage.wake);
  }
  pthread_mutex_unlock(&usage.lock);
  if (stop_ticker) {
    pthread_join(usage.ticker, NULL);
    pthread_mutex_lock(&usage.lock);
    usage.ticking = false;
    pthread_mutex_unlock(&usage.lock);
  }
  envoy_dynamic_module_callback_http_filter_config_scheduler_delete(exporter->scheduler);
  free(exporter->cluster);
  free(exporter);
}

void usage_log_add(const usage_record *record) {
  record_sizes sizes = sizes_of(record);
  size_t size = field_size(sizes.record);
  pthread_mutex_lock(&usage.lock);
  size_t start = usage.batch.length ? usage.batch.length : FRAME_ROOM;
  if (!usage.exporters || start + size > MAX_BATCH_BYTES || !reserve(&usage.batch, start + size)) {
    usage.dropped++;
  } else {
    put_record(usage.batch.at + start, record, &sizes);
    usage.batch.length = start + size;
    if (usage.batch.length - FRAME_ROOM >= usage.exporters->flush_bytes) request_export();
  }
  pthread_mutex_unlock(&usage.lock);
}

static void export_failed(const char *why) {
  if (usage.failing) return;
  usage.failing = true;
  char message[256];
  snprintf(message, sizeof message,
           "usage log: an export to the control plane failed (%s); the GenAI metrics miss its requests (said again "
           "once an export succeeds and then one fails)",
           why);
  log_message(LOG_WARN, message);
}

void usage_log_export(usage_exporter *exporter) {
  pthread_mutex_lock(&usage.lock);
  bytes batch = usage.batch;
  usage.batch = (bytes){0};
  usage.export_pending = false;
  unsigned long long dropped = usage.dropped;
  usage.dropped = 0;
  pthread_mutex_unlock(&usage.lock);
  if (dropped) {
    char message[160];
    snprintf(message, sizeof message, "usage log: %llu records dropped (the batch was full, or no config exported)",
             dropped);
    log_message(LOG_WARN, message);
  }
  if (batch.length > FRAME_ROOM) {
    char *message = frame(batch.at, batch.length - FRAME_ROOM);
    size_t cluster_length = strlen(exporter->cluster);
    http_header headers[] = {
        {":method", 7, "POST", 4},
        {":path", 5, EXPORT_PATH, sizeof EXPORT_PATH - 1},
        {":authority", 10, exporter->cluster, cluster_length},
        {"content-type", 12, "application/grpc", 16},
        {"te", 2, "trailers", 8},
    };
    uint64_t callout;
    int started = envoy_dynamic_module_callback_http_filter_config_http_callout(
        exporter->envoy_config, &callout, (module_buffer){exporter->cluster, cluster_length}, headers,
        sizeof headers / sizeof *headers, (module_buffer){message, (size_t)(batch.at + batch.length - message)},
        EXPORT_TIMEOUT_MS);
    if (started != CALLOUT_SUCCESS) export_failed(started == 2 ? "no such cluster" : "the call could not start");
  }
  free(batch.at);
}

static bool header_is(const http_header *headers, size_t count, const char *key, const char *value, bool absent) {
  size_t key_length = strlen(key), value_length = strlen(value);
  for (size_t i = 0; i < count; i++)
    if (headers[i].key_length == key_length && memcmp(headers[i].key, key, key_length) == 0)
      return headers[i].value_length == value_length && memcmp(headers[i].value, value, value_length) == 0;
  return absent;
}

void usage_log_exported(int result, const http_header *headers, size_t headers_size) {
  if (result != CALLOUT_SUCCESS) {
    export_failed("no answer: the connection failed, was reset or timed out");
  } else if (!header_is(headers, headers_size, ":status", "200", false) ||
             !header_is(headers, headers_size, "grpc-status", "0", true)) {
    export_failed("the control plane refused it");
  } else if (usage.failing) {
    usage.failing = false;
    log_message(LOG_INFO, "usage log: exports to the control plane succeed again");
  }
}
