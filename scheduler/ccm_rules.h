/* The retry-rule engine (SPEC section 8): a pure library, no I/O besides
 * reading the YAML file it is given. A loaded rule set is immutable and may
 * be queried from several threads at once. */
#ifndef CCM_RULES_H
#define CCM_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ccm_rules;

#define CCM_RULES_ERR_MAX 512
#define CCM_RULES_MSG_MAX 128

/* Values of `defaults:` and `scheduler:`; a key absent from the file keeps
 * the built-in default, and the *_set flags say whether the file had it. */
struct ccm_rules_settings {
  int default_max_attempts;           /* defaults.max_attempts, 3 */
  int default_retry_interval_minutes; /* defaults.retry_interval_minutes, 60 */
  int concurrent_call_limit;          /* defaults.concurrent_call_limit */
  bool concurrent_call_limit_set;
  int duplicate_call_window_minutes; /* defaults.duplicate_call_window_minutes */
  bool duplicate_call_window_set;
  int check_interval_minutes; /* scheduler.check_interval_minutes */
  bool check_interval_set;
  int batch_size;             /* scheduler.batch_size, 100 */
  int max_concurrent_retries; /* scheduler.max_concurrent_retries, 50 */
};

/* What to do with a call whose attempt ended DISCONNECTED or RNR. */
struct ccm_retry_decision {
  bool retry;                      /* true: retry at next_retry_at_ms; false: FAILED */
  int64_t next_retry_at_ms;        /* Unix ms, UTC, when retry */
  int max_attempts;                /* the call's max_attempts from now on */
  char message[CCM_RULES_MSG_MAX]; /* when !retry: the call's error_message */
};

/* Parses and validates YAML text. Returns CCM_OK and a new rule set in *out
 * (caller owns it, ccm_rules_destroy), or CCM_EINVAL with a one-line message
 * naming the line in err ("line 12: ..."). */
int ccm_rules_load_string(const char *yaml, size_t len, struct ccm_rules **out, char *err,
                          size_t errlen);

/* As ccm_rules_load_string, reading the file at path; CCM_EIO when it
 * cannot be read (err says why). */
int ccm_rules_load_file(const char *path, struct ccm_rules **out, char *err, size_t errlen);

/* Releases a rule set; NULL is accepted. */
void ccm_rules_destroy(struct ccm_rules *rules);

/* Returns the settings read from the file. */
const struct ccm_rules_settings *ccm_rules_settings(const struct ccm_rules *rules);

/* Returns the IANA time zone the slots are evaluated in ("UTC" by default). */
const char *ccm_rules_timezone(const struct ccm_rules *rules);

/* Returns the number of warnings found while loading (ignored keys such as
 * status_retry_rules), and the i-th one. */
size_t ccm_rules_warning_count(const struct ccm_rules *rules);
const char *ccm_rules_warning(const struct ccm_rules *rules, size_t i);

/* Returns the effective defaults.max_attempts: override when > 0 (the
 * MAX_RETRY_ATTEMPTS variable), else the file's value. */
int ccm_rules_default_max_attempts(const struct ccm_rules *rules, int override);

/* Decides the retry of campaign_id's call after an outcome recorded at t_ms
 * (Unix ms) on attempt attempt_count. max_attempts_override > 0 replaces
 * defaults.max_attempts. Returns CCM_OK with *out filled, or CCM_EINVAL on
 * bad arguments, CCM_EINTERNAL when the time-zone library fails. */
int ccm_rules_decide(const struct ccm_rules *rules, int64_t campaign_id, int64_t t_ms,
                     int attempt_count, int max_attempts_override, struct ccm_retry_decision *out);

#endif
