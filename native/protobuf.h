/* Protocol buffer wire format, written by hand for the one message the module sends: the usage log's export of its
 * records. Sizes first, then bytes, so a message is written once, in place. */
#ifndef XDS_SERVER_PROTOBUF_H
#define XDS_SERVER_PROTOBUF_H

#include <stddef.h>
#include <string.h>

/* A tag byte: a field number under 16 and the wire type of length-delimited fields. */
#define LENGTH_DELIMITED(field) ((char)((field) << 3 | 2))

static inline size_t varint_size(size_t value) {
  size_t size = 1;
  for (; value >= 0x80; value >>= 7) size++;
  return size;
}

static inline char *put_varint(char *out, size_t value) {
  for (; value >= 0x80; value >>= 7) *out++ = (char)(value | 0x80);
  *out++ = (char)value;
  return out;
}

/* A length-delimited field holding `content` bytes: its whole size, and its head (tag and length). */
static inline size_t field_size(size_t content) { return 1 + varint_size(content) + content; }

static inline char *put_head(char *out, char tag, size_t content) {
  *out++ = tag;
  return put_varint(out, content);
}

static inline char *put_bytes(char *out, char tag, const char *data, size_t length) {
  out = put_head(out, tag, length);
  memcpy(out, data, length);
  return out + length;
}

#endif
