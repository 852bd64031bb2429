/* The AI access log (access_log.h). */
#include "access_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "json_run.h"
#include "threads.h"

/* The module's buffer never holds more than this (lines past it are dropped and counted, as a stdout that does not
 * drain would otherwise hold the gateway's memory). */
#define MAX_BUFFERED_BYTES ((size_t)8 << 20)
/* One write() at most this long, ending at a line's end: a pipe writes up to PIPE_BUF (4,096) bytes at once, so
 * Envoy's own access log writer, on the same stdout, never cuts into a line of these. */
#define WRITE_BYTES 4096

#define KEY(name) name, sizeof name - 1

static const struct {
  const char *key;
  size_t key_length;
  bool number;
} FIELDS[ACCESS_FIELDS] = {
    [ACCESS_START_TIME] = {KEY("start_time"), false},
    [ACCESS_METHOD] = {KEY("method"), false},
    [ACCESS_PATH] = {KEY("path"), false},
    [ACCESS_AUTHORITY] = {KEY("authority"), false},
    [ACCESS_STATUS] = {KEY("status"), true},
    [ACCESS_DETAILS] = {KEY("details"), false},
    [ACCESS_DURATION_MS] = {KEY("duration_ms"), true},
    [ACCESS_ROUTE] = {KEY("route"), false},
    [ACCESS_UPSTREAM_HOST] = {KEY("upstream_host"), false},
    [ACCESS_REQUEST_ID] = {KEY("request_id"), false},
    [ACCESS_MODEL] = {KEY("model"), false},
    [ACCESS_BACKEND] = {KEY("backend"), false},
    [ACCESS_RESPONSE_MODEL] = {KEY("response_model"), false},
    [ACCESS_INPUT_TOKENS] = {KEY("input_tokens"), true},
    [ACCESS_OUTPUT_TOKENS] = {KEY("output_tokens"), true},
    [ACCESS_TOTAL_TOKENS] = {KEY("total_tokens"), true},
};

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake; /* the writer's: its interval, or the process's exit */
  bytes buffer;
  unsigned long long dropped;
  unsigned flush_ms;   /* the newest config's */
  bool writer_started; /* the writer: a thread of its own for the process's life, never joined */
  bool writing;        /* the writer is in write(): stdout may not drain */
} pending = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/* The length of the UTF-8 sequence at `at` (at most `left` bytes), 0 when it is not one: RFC 3629's, so no overlong
 * form, no surrogate, nothing past U+10FFFF. */
static size_t utf8_length(const unsigned char *at, size_t left) {
  unsigned char lead = at[0], low = 0x80, high = 0xbf; /* the second byte's range */
  size_t length;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) low = 0xa0;
    if (lead == 0xed) high = 0x9f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) low = 0x90;
    if (lead == 0xf4) high = 0x8f;
  } else {
    return 0;
  }
  if (length > left || at[1] < low || at[1] > high) return 0;
  for (size_t i = 2; i < length; i++)
    if ((at[i] & 0xc0) != 0x80) return 0;
  return length;
}

/* A JSON string of `value` at `end` (room for 2 + 6 bytes a byte of it): quotes, backslashes and control characters
 * escaped, bytes that are not UTF-8 written as U+FFFD (the line stays valid JSON in UTF-8, whatever a client sent).
 * Returns where it ends. */
static char *put_string(char *end, module_buffer value) {
  static const char hex[] = "0123456789abcdef";
  *end++ = '"';
  const unsigned char *at = (const unsigned char *)value.ptr, *stop = at + value.length;
  while (at < stop) {
    size_t run = json_run((const char *)at, (size_t)(stop - at), true);
    memcpy(end, at, run);
    end += run;
    at += run;
    if (at == stop) break;
    unsigned char c = *at;
    if (c == '"' || c == '\\') {
      *end++ = '\\';
      *end++ = (char)c;
      at++;
    } else if (c < 0x20) {
      memcpy(end, "\\u00", 4);
      end[4] = hex[c >> 4];
      end[5] = hex[c & 0xf];
      end += 6;
      at++;
    } else {
      size_t length = utf8_length(at, (size_t)(stop - at));
      if (length) {
        memcpy(end, at, length);
        end += length;
        at += length;
      } else {
        memcpy(end, "\xef\xbf\xbd", 3);
        end += 3;
        at++;
      }
    }
  }
  *end++ = '"';
  return end;
}

EXPORT bool xds_ai_access_line(const access_values *values, bytes *out) {
  size_t need = out->length + 3; /* the braces and the line feed */
  for (int field = 0; field < ACCESS_FIELDS; field++)
    need += FIELDS[field].key_length + 4 + 2 + 6 * values->values[field].length; /* "key":value, and the worst */
  if (!reserve(out, need)) return false;
  char *end = out->at + out->length;
  *end++ = '{';
  for (int field = 0; field < ACCESS_FIELDS; field++) {
    module_buffer value = values->values[field];
    if (field) *end++ = ',';
    *end++ = '"';
    memcpy(end, FIELDS[field].key, FIELDS[field].key_length);
    end += FIELDS[field].key_length;
    *end++ = '"';
    *end++ = ':';
    if (!value.ptr) {
      memcpy(end, "null", 4);
      end += 4;
    } else if (FIELDS[field].number) {
      memcpy(end, value.ptr, value.length);
      end += value.length;
    } else {
      end = put_string(end, value);
    }
  }
  *end++ = '}';
  *end++ = '\n';
  out->length = (size_t)(end - out->at);
  return true;
}

void access_log_add(const access_values *values) {
  static __thread bytes line; /* the worker's own: kept from request to request */
  line.length = 0;
  bool formatted = xds_ai_access_line(values, &line);
  pthread_mutex_lock(&pending.lock);
  if (!formatted || !append(&pending.buffer, line.at, line.length, MAX_BUFFERED_BYTES)) pending.dropped++;
  pthread_mutex_unlock(&pending.lock);
}

/* All of `data` to stdout, through interruptions and short writes; false when stdout fails. */
static bool write_all(const char *data, size_t length) {
  while (length) {
    ssize_t written = write(STDOUT_FILENO, data, length);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return false;
    data += written;
    length -= (size_t)written;
  }
  return true;
}

/* What the buffer held, to stdout, in writes of whole lines (given up when stdout fails). */
static void write_lines(bytes taken, unsigned long long dropped) {
  const char *at = taken.at, *stop = taken.at + taken.length;
  bool ok = true;
  while (ok && at < stop) {
    size_t length = (size_t)(stop - at);
    if (length > WRITE_BYTES) {
      const char *cut = at + WRITE_BYTES;
      while (cut > at && cut[-1] != '\n') cut--;
      length = cut > at ? (size_t)(cut - at) : WRITE_BYTES; /* a line longer than a write goes in pieces */
    }
    ok = write_all(at, length);
    at += length;
  }
  free(taken.at);
  if (dropped) {
    char message[128];
    int length = snprintf(message, sizeof message, "access log: %llu lines dropped (stdout did not drain)", dropped);
    envoy_dynamic_module_callback_log(LOG_WARN, (module_buffer){message, (size_t)length});
  }
}

/* With the lock held: the buffer and the count of dropped lines, taken. */
static bytes take(unsigned long long *dropped) {
  bytes taken = pending.buffer;
  pending.buffer = (bytes){0};
  *dropped = pending.dropped;
  pending.dropped = 0;
  return taken;
}

/* The writer: the buffer to stdout every flush interval. Stdout may block (a pipe nobody reads): only this thread
 * waits then, never a worker, the usage log's ticker or Envoy's main thread, and lines past the buffer's limit are
 * dropped and counted. */
static void *write_every_interval(void *unused) {
  (void)unused;
  pthread_mutex_lock(&pending.lock);
  for (;;) {
    struct timespec until = realtime_after_ms(pending.flush_ms);
    pthread_cond_timedwait(&pending.wake, &pending.lock, &until);
    unsigned long long dropped;
    bytes taken = take(&dropped);
    pending.writing = true;
    pthread_mutex_unlock(&pending.lock);
    write_lines(taken, dropped);
    pthread_mutex_lock(&pending.lock);
    pending.writing = false;
    pthread_cond_broadcast(&pending.wake);
  }
  return NULL;
}

void access_log_start(unsigned flush_ms) {
  pthread_mutex_lock(&pending.lock);
  pending.flush_ms = flush_ms ? flush_ms : 1;
  if (!pending.writer_started) {
    pthread_t writer;
    pending.writer_started = start_thread(&writer, write_every_interval);
    if (pending.writer_started) pthread_detach(writer); /* never joined: it lives as long as the process */
  }
  pthread_mutex_unlock(&pending.lock);
}

/* The process exits (Envoy's shutdown): the last lines are written, after the writer's write in progress, unless
 * stdout does not drain (a second blocked write would hold the exit). */
__attribute__((destructor)) static void flush_at_exit(void) {
  pthread_mutex_lock(&pending.lock);
  struct timespec until = realtime_after_ms(1000);
  while (pending.writing && pthread_cond_timedwait(&pending.wake, &pending.lock, &until) == 0) {
  }
  bool stuck = pending.writing;
  unsigned long long dropped;
  bytes taken = stuck ? (bytes){0} : take(&dropped);
  pthread_mutex_unlock(&pending.lock);
  if (!stuck) write_lines(taken, dropped);
}
