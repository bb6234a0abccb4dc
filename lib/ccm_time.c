#include "ccm_time.h"

#include <errno.h>
#include <stdio.h>
#include <time.h>

int64_t ccm_time_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ccm_time_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void to_tm(int64_t ms, struct tm *tm) {
  time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  gmtime_r(&secs, tm);
}

char *ccm_time_format_iso(int64_t ms, char out[CCM_TIME_ISO_BUF]) {
  struct tm tm;
  to_tm(ms, &tm);
  strftime(out, CCM_TIME_ISO_BUF, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
}

char *ccm_time_format_compact(int64_t ms, char out[CCM_TIME_ISO_BUF]) {
  struct tm tm;
  to_tm(ms, &tm);
  strftime(out, CCM_TIME_ISO_BUF, "%Y%m%d%H%M%S", &tm);
  return out;
}

void ccm_time_sleep_ms(int64_t ms) {
  if (ms <= 0) return;
  struct timespec req = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
  while (nanosleep(&req, &req) != 0 && errno == EINTR) {
  }
}

struct timespec ccm_time_deadline(clockid_t clock, int64_t ms) {
  struct timespec t;
  clock_gettime(clock, &t);
  if (ms < 0) ms = 0;
  t.tv_sec += (time_t)(ms / 1000);
  t.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}
