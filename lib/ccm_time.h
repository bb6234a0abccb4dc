/* Time helpers: wall clock in Unix milliseconds and ISO-8601 UTC text. */
#ifndef CCM_TIME_H
#define CCM_TIME_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define CCM_TIME_ISO_BUF 32

/* Returns the wall-clock time in Unix milliseconds (UTC). */
int64_t ccm_time_now_ms(void);

/* Returns a monotonic clock reading in milliseconds, for durations. */
int64_t ccm_time_mono_ms(void);

/* Writes "YYYY-MM-DDTHH:MM:SSZ" for ms into out (CCM_TIME_ISO_BUF bytes).
 * Returns out. */
char *ccm_time_format_iso(int64_t ms, char out[CCM_TIME_ISO_BUF]);

/* Writes "YYYYmmddHHMMSS" (UTC) for ms into out. Returns out. */
char *ccm_time_format_compact(int64_t ms, char out[CCM_TIME_ISO_BUF]);

/* Returns the instant ms milliseconds (>= 0) after now on clock, for
 * pthread_cond_timedwait (CLOCK_REALTIME, or the clock set on the
 * condition's attributes). */
struct timespec ccm_time_deadline(clockid_t clock, int64_t ms);

/* Sleeps for ms milliseconds (restarting after signals). */
void ccm_time_sleep_ms(int64_t ms);

#endif
