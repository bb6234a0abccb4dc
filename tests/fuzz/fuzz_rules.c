/* libFuzzer target: the retry-rule YAML loader (scheduler/ccm_rules.h,
 * SPEC 8). The whole input is the YAML text (run with -max_len=4096; the
 * loader's own limit is 1 MiB). A file that loads is then asked for a few
 * retry decisions, whose results must be consistent:
 *   - the call's max_attempts is >= 1;
 *   - attempt_count >= max_attempts never retries;
 *   - a retry is at or after t (and no later than the longest interval plus
 *     the 7-day search); no retry has a message.
 * A file that does not load must say why, naming the line ("line N: ..."). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"
#include "ccm_rules.h"

#define CHECK(cond)                                                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "fuzz_rules: invariant failed: %s (line %d)\n", #cond, __LINE__); \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

#define MS_PER_MINUTE INT64_C(60000)
#define MS_PER_DAY INT64_C(86400000)
#define T_MAX_MS INT64_C(253402300799999) /* the loader's 9999-12-31T23:59:59.999Z */
#define INTERVAL_MAX_MIN INT64_C(525600)  /* retry_interval_minutes' upper bound */
#define ATTEMPTS_MAX 1000                 /* max_attempts' upper bound */

/* FNV-1a of the input: varies the decision instants without extra input. */
static uint64_t hash(const uint8_t *data, size_t size) {
  uint64_t h = UINT64_C(14695981039346656037);
  for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * UINT64_C(1099511628211);
  return h;
}

static void check_decision(const struct ccm_rules *rules, int64_t campaign_id, int64_t t,
                           int attempt, int override) {
  struct ccm_retry_decision d;
  memset(&d, 0x5a, sizeof d);
  int rc = ccm_rules_decide(rules, campaign_id, t, attempt, override, &d);
  CHECK(rc == CCM_OK);
  CHECK(d.max_attempts >= 1 && d.max_attempts <= (override > 0 ? override : 0) + ATTEMPTS_MAX);
  CHECK(memchr(d.message, '\0', sizeof d.message) != NULL);
  if (attempt >= d.max_attempts) CHECK(!d.retry);
  if (d.retry) {
    CHECK(d.next_retry_at_ms >= t);
    CHECK(d.next_retry_at_ms <= t + INTERVAL_MAX_MIN * MS_PER_MINUTE + 7 * MS_PER_DAY);
    CHECK(d.message[0] == '\0');
  } else {
    CHECK(d.message[0] != '\0');
    CHECK(d.next_retry_at_ms == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[CCM_RULES_ERR_MAX];
  memset(err, 0x5a, sizeof err);
  struct ccm_rules *rules = (struct ccm_rules *)err; /* must be reset */
  int rc = ccm_rules_load_string((const char *)data, size, &rules, err, sizeof err);
  CHECK(memchr(err, '\0', sizeof err) != NULL);
  if (rc != CCM_OK) {
    CHECK(rc == CCM_EINVAL);
    CHECK(rules == NULL);
    if (strncmp(err, "line ", 5) != 0 || strchr(err, '\n') != NULL) {
      fprintf(stderr, "fuzz_rules: error without a line: \"%s\"\n", err);
      abort();
    }
    return 0;
  }
  CHECK(rules != NULL);

  const struct ccm_rules_settings *s = ccm_rules_settings(rules);
  CHECK(s->default_max_attempts >= 1 && s->default_max_attempts <= ATTEMPTS_MAX);
  CHECK(s->default_retry_interval_minutes >= 0 &&
        s->default_retry_interval_minutes <= INTERVAL_MAX_MIN);
  CHECK(s->batch_size >= 1 && s->max_concurrent_retries >= 1);
  const char *tz = ccm_rules_timezone(rules);
  CHECK(tz != NULL && tz[0] != '\0');
  for (size_t i = 0; i < ccm_rules_warning_count(rules); i++) {
    CHECK(ccm_rules_warning(rules, i) != NULL);
  }
  CHECK(ccm_rules_warning(rules, ccm_rules_warning_count(rules)) == NULL);
  CHECK(ccm_rules_default_max_attempts(rules, 0) == s->default_max_attempts);
  CHECK(ccm_rules_default_max_attempts(rules, 7) == 7);

  uint64_t h = hash(data, size);
  /* 2025-01-24T10:30Z (a Friday), the Europe/US spring and autumn DST
   * changes of 2025, the epoch, the last instant allowed, and one drawn
   * from the input. */
  static const int64_t fixed[] = {INT64_C(1737714600000),
                                  INT64_C(1743298200000),
                                  INT64_C(1761442200000),
                                  INT64_C(1741487400000),
                                  INT64_C(1762065000000),
                                  0,
                                  T_MAX_MS};
  size_t n_fixed = sizeof fixed / sizeof fixed[0];
  int64_t drawn = (int64_t)(h % (uint64_t)(T_MAX_MS + 1));
  int64_t campaign = 1 + (int64_t)((h >> 7) % 4); /* 1..4: small ids are what files use */
  check_decision(rules, 1, fixed[0], 1, 0);
  check_decision(rules, campaign, fixed[1 + (h >> 3) % (n_fixed - 1)], (int)((h >> 11) % 6), 0);
  check_decision(rules, campaign, drawn, 0, (int)((h >> 17) % 3));
  check_decision(rules, 999, fixed[(h >> 23) % n_fixed], ATTEMPTS_MAX, 0);

  /* Bad arguments are refused, not crashed on. */
  struct ccm_retry_decision d;
  CHECK(ccm_rules_decide(rules, 1, -1, 1, 0, &d) == CCM_EINVAL);
  CHECK(ccm_rules_decide(rules, 1, T_MAX_MS + 1, 1, 0, &d) == CCM_EINVAL);
  CHECK(ccm_rules_decide(rules, 1, 0, -1, 0, &d) == CCM_EINVAL);
  ccm_rules_destroy(rules);
  return 0;
}
