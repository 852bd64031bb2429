/* A deadline for pthread_cond_timedwait, whose clock is CLOCK_REALTIME: the module's two waiting threads (the usage
 * log's ticker, the access log's writer) wake at least every flush interval. */
#ifndef XDS_SERVER_DEADLINE_H
#define XDS_SERVER_DEADLINE_H

#include <time.h>

static inline struct timespec realtime_after_ms(unsigned ms) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += ms / 1000;
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  return until;
}

#endif
