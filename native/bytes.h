/* Bytes the module keeps, growing up to a limit: the one growable buffer of the filter and the usage log. */
#ifndef XDS_SERVER_BYTES_H
#define XDS_SERVER_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *at;
  size_t length, capacity;
} bytes;

static inline bool reserve(bytes *b, size_t need) {
  if (need <= b->capacity) return true;
  size_t capacity = b->capacity ? b->capacity : 1024;
  while (capacity < need) capacity *= 2;
  char *grown = realloc(b->at, capacity);
  if (!grown) return false;
  b->at = grown;
  b->capacity = capacity;
  return true;
}

static inline bool append(bytes *b, const char *data, size_t length, size_t limit) {
  size_t need = b->length + length;
  if (need > limit || !reserve(b, need)) return false;
  if (length) memcpy(b->at + b->length, data, length);
  b->length = need;
  return true;
}

#endif
