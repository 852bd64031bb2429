/* The run of bytes a JSON string holds as they are, found eight bytes at a time: the one inner loop of the request
 * and answer scanners (ai_filter.c) and of the access line's strings (access_log.c). A byte-at-a-time loop cost
 * some 5 instructions a byte, the largest part of the filter's own work on a chat completion. */
#ifndef XDS_SERVER_JSON_RUN_H
#define XDS_SERVER_JSON_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define JSON_RUN_ONES 0x0101010101010101ULL
#define JSON_RUN_HIGHS 0x8080808080808080ULL

/* A word whose high bits are set for bytes below `n` (n <= 0x80). A flag above the lowest one may be spurious (a
 * borrow), the lowest one never is: it marks the first such byte. */
static inline uint64_t json_run_below(uint64_t word, unsigned char n) {
  return (word - JSON_RUN_ONES * n) & ~word & JSON_RUN_HIGHS;
}

static inline uint64_t json_run_equal(uint64_t word, unsigned char c) {
  return json_run_below(word ^ (JSON_RUN_ONES * c), 1);
}

static inline bool json_run_plain(unsigned char c, bool ascii_only) {
  return c >= 0x20 && c != '"' && c != '\\' && (!ascii_only || c < 0x80);
}

/* How many of the `left` bytes at `at` are neither a quote, a backslash nor a control character (nor, with
 * `ascii_only`, past 0x7f, which the access line checks as UTF-8). */
static inline size_t json_run(const char *at, size_t left, bool ascii_only) {
  size_t n = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (; left - n >= 8; n += 8) {
    uint64_t word;
    memcpy(&word, at + n, 8); /* an unaligned load, as compilers make of it */
    uint64_t stops = json_run_equal(word, '"') | json_run_equal(word, '\\') | json_run_below(word, 0x20);
    if (ascii_only) stops |= word & JSON_RUN_HIGHS;
    if (stops) return n + (size_t)(__builtin_ctzll(stops) >> 3); /* the lowest flag: the first byte that stops */
  }
#endif
  while (n < left && json_run_plain((unsigned char)at[n], ascii_only)) n++;
  return n;
}

#endif
