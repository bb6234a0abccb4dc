/* The retry scheduler and housekeeping (SPEC sections 2, 6, 8): one pass
 * claims the due DISCONNECTED/RNR calls (FOR UPDATE SKIP LOCKED, a
 * concurrency slot per call, the call, its attempt row, its outbox
 * InitiateCallEvent and the day's metrics in one statement), fails stale
 * calls, and rebuilds the Redis slot set after a Redis outage. Several
 * schedulers may run passes at once without claiming a call twice.
 *
 * A scheduler keeps one PostgreSQL and one Redis connection, reconnecting
 * when they break; it is used by one thread at a time. */
#ifndef CCM_SCHEDULER_H
#define CCM_SCHEDULER_H

#include <stdbool.h>

struct ccm_config;
struct ccm_rules;
struct ccm_scheduler;

/* What one pass did; filled even when the pass fails. */
struct ccm_scheduler_report {
  int claimed;      /* retries claimed (calls moved to RETRYING) */
  int stale;        /* stale calls failed */
  int leaked_slots; /* slots given back whose attempt was over */
  bool reconciled;  /* the slot set was rebuilt from the database */
  int reconciled_n; /* calls in flight put into the slot set */
  bool at_capacity; /* claiming stopped because every slot was taken */
  bool redis_down;  /* Redis could not be used in this pass */
  long long peak;   /* highest slot count reached by this pass's claims */
};

/* The settings a pass runs with, derived from the environment and the rule
 * file (SPEC 3 and 8: an environment variable wins over its YAML key). */
struct ccm_scheduler_limits {
  int max_concurrent_calls;   /* MAX_CONCURRENT_CALLS, defaults.concurrent_call_limit, 100 */
  int batch_size;             /* scheduler.batch_size */
  int max_concurrent_retries; /* scheduler.max_concurrent_retries: claims per pass */
  int interval_seconds;       /* SCHEDULER_INTERVAL_*, scheduler.check_interval_minutes */
};

/* Computes the effective limits from cfg and rules (rules may be NULL: the
 * built-in defaults). Returns nothing; out is always filled. */
void ccm_scheduler_limits(const struct ccm_config *cfg, const struct ccm_rules *rules,
                          struct ccm_scheduler_limits *out);

/* Creates a scheduler that borrows cfg and rules (both must outlive it;
 * rules may be NULL). Connections are opened by the first pass. Returns
 * CCM_OK and the scheduler in *out (caller owns it, ccm_scheduler_destroy),
 * CCM_EINVAL or CCM_ENOMEM. */
int ccm_scheduler_create(const struct ccm_config *cfg, const struct ccm_rules *rules,
                         struct ccm_scheduler **out);

/* Closes the connections and frees the scheduler; NULL is accepted. */
void ccm_scheduler_destroy(struct ccm_scheduler *s);

/* Replaces the borrowed rule set used by later passes (NULL: defaults).
 * Returns nothing; the caller keeps owning both rule sets. */
void ccm_scheduler_set_rules(struct ccm_scheduler *s, const struct ccm_rules *rules);

/* Restricts claims and the stale sweep to one campaign (0: all campaigns),
 * for tests and tooling that share a database. Returns nothing. */
void ccm_scheduler_set_campaign_scope(struct ccm_scheduler *s, long long campaign_id);

/* Runs one pass: slot reconciliation when Redis came back, stale sweep,
 * due retries. Returns CCM_OK when every step succeeded (reaching the
 * concurrency limit is a success), CCM_EUNAVAILABLE when PostgreSQL or
 * Redis could not be used, another ccm status on a database error; out
 * (may be NULL) says what was done either way. */
int ccm_scheduler_run_once(struct ccm_scheduler *s, struct ccm_scheduler_report *out);

#endif
