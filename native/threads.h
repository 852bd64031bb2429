/* The module's own threads (the usage log's ticker, the access log's writer): how one starts, and when it wakes. */
#ifndef XDS_SERVER_THREADS_H
#define XDS_SERVER_THREADS_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <time.h>

/* A thread that takes no signal (Envoy's threads handle them); false when it could not start. */
static inline bool start_thread(pthread_t *thread, void *(*run)(void *)) {
  sigset_t all, before;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  bool started = pthread_create(thread, NULL, run, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &before, NULL);
  return started;
}

/* A deadline for pthread_cond_timedwait, whose clock is CLOCK_REALTIME: `ms` from now. */
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
