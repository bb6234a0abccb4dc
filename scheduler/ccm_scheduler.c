/* The retry scheduler: one pass (ccm_scheduler_run_once) and the
 * `ccm scheduler [--once]` command around it. */
#include "ccm_scheduler.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_buf.h"
#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_config.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_redis.h"
#include "ccm_rules.h"
#include "ccm_signals.h"
#include "ccm_slots.h"
#include "ccm_time.h"

#define LOGGER "ccm.scheduler"
#define CALLS_LOGGER "calls.scheduler"
#define REDIS_TIMEOUT_MS 1000
#define STALE_BATCH "500"
#define STALE_BATCH_N 500
#define ARRAY_MAX ((size_t)1 << 30) /* bound on one array parameter */
#define WAIT_SLICE_MS 1000
#define ERR_MAX 512

static const char stale_message[] = "Stale call: no outcome received";

/* A slot naming no call is an InitiateCall's only while its insert may still
 * be running; after this long it was abandoned. */
#define ORPHAN_SLOT_SECONDS "60"

struct ccm_scheduler {
  const struct ccm_config *cfg;
  const struct ccm_rules *rules;
  long long scope; /* campaign id, 0: all */
  PGconn *db;
  redisContext *redis;
  bool redis_lost; /* an outage was seen: reconcile when Redis answers again */
};

/* One due call locked by the claim transaction. */
struct due_call {
  const char *call_id, *campaign_name, *phone_number; /* in the SELECT result */
  long long campaign_id;
  int attempt; /* the attempt this claim starts */
};

/* ------------------------------------------------------------ settings --- */

void ccm_scheduler_limits(const struct ccm_config *cfg, const struct ccm_rules *rules,
                          struct ccm_scheduler_limits *out) {
  if (out == NULL) return;
  *out = (struct ccm_scheduler_limits){.max_concurrent_calls = 100,
                                       .batch_size = 100,
                                       .max_concurrent_retries = 50,
                                       .interval_seconds = 60};
  if (cfg != NULL) {
    out->max_concurrent_calls = cfg->max_concurrent_calls;
    out->interval_seconds = cfg->scheduler_interval_seconds;
  }
  if (rules == NULL) return;
  const struct ccm_rules_settings *st = ccm_rules_settings(rules);
  out->batch_size = st->batch_size;
  out->max_concurrent_retries = st->max_concurrent_retries;
  bool env_limit = cfg != NULL && cfg->max_concurrent_calls_set;
  if (!env_limit && st->concurrent_call_limit_set) {
    out->max_concurrent_calls = st->concurrent_call_limit;
  }
  bool env_interval = cfg != NULL && cfg->scheduler_interval_set;
  if (!env_interval && st->check_interval_set) {
    out->interval_seconds = st->check_interval_minutes * 60;
  }
}

/* -------------------------------------------------------- construction --- */

int ccm_scheduler_create(const struct ccm_config *cfg, const struct ccm_rules *rules,
                         struct ccm_scheduler **out) {
  if (out != NULL) *out = NULL;
  if (cfg == NULL || out == NULL) return CCM_EINVAL;
  struct ccm_scheduler *s = calloc(1, sizeof *s);
  if (s == NULL) return CCM_ENOMEM;
  s->cfg = cfg;
  s->rules = rules;
  *out = s;
  return CCM_OK;
}

void ccm_scheduler_destroy(struct ccm_scheduler *s) {
  if (s == NULL) return;
  if (s->db != NULL) ccm_db_close(s->db);
  if (s->redis != NULL) redisFree(s->redis);
  free(s);
}

void ccm_scheduler_set_rules(struct ccm_scheduler *s, const struct ccm_rules *rules) {
  if (s != NULL) s->rules = rules;
}

void ccm_scheduler_set_campaign_scope(struct ccm_scheduler *s, long long campaign_id) {
  if (s != NULL) s->scope = campaign_id > 0 ? campaign_id : 0;
}

/* --------------------------------------------------------- connections --- */

/* Returns CCM_OK when the PostgreSQL connection is usable (opening or
 * resetting it), else CCM_EUNAVAILABLE with the reason in err. */
static int db_ready(struct ccm_scheduler *s, char *err, size_t errlen) {
  if (s->db != NULL && ccm_db_ensure(s->db) == CCM_OK) return CCM_OK;
  if (s->db != NULL) {
    ccm_db_close(s->db);
    s->db = NULL;
  }
  char why[256] = "";
  int rc = ccm_db_connect(s->cfg, &s->db, why, sizeof why);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "PostgreSQL unavailable: %s", why);
    return CCM_EUNAVAILABLE;
  }
  return CCM_OK;
}

static void redis_broken(struct ccm_scheduler *s) {
  if (s->redis != NULL) redisFree(s->redis);
  s->redis = NULL;
  s->redis_lost = true;
}

/* Returns the Redis connection, connecting when needed, or NULL (an outage
 * is remembered for the reconciliation) with the reason in err. */
static redisContext *redis_ready(struct ccm_scheduler *s, char *err, size_t errlen) {
  if (s->redis != NULL && s->redis->err == 0) return s->redis;
  if (s->redis != NULL) redis_broken(s); /* the connection broke: an outage */
  char why[256] = "";
  if (ccm_redis_connect(s->cfg, REDIS_TIMEOUT_MS, &s->redis, why, sizeof why) != CCM_OK) {
    snprintf(err, errlen, "Redis unavailable: %s", why);
    s->redis = NULL;
    s->redis_lost = true;
    return NULL;
  }
  return s->redis;
}

/* Gives back the slots of the given calls after their transition committed
 * (or after a claim that did not commit). A Redis failure is left to the
 * reconciliation. */
static void release_slots(struct ccm_scheduler *s, const char *const *call_ids, const int *attempts,
                          size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s->redis == NULL) {
      ccm_warn(LOGGER, "%zu slot(s) not released (Redis down): reconciled when it is back", n - i);
      return;
    }
    if (ccm_slots_release(s->redis, s->cfg, call_ids[i], attempts[i]) != CCM_OK) redis_broken(s);
  }
}

/* ------------------------------------------------------- reconciliation --- */

/* Rebuilds the slot set from the calls in flight. Returns CCM_OK with the
 * number of calls in *n, or a database / Redis status. */
static int reconcile(struct ccm_scheduler *s, int *n) {
  *n = 0;
  int rc = ccm_slots_reconcile_from_db(s->redis, s->cfg, s->db, n);
  /* Unavailable with the database fine: Redis failed. */
  if (rc == CCM_EUNAVAILABLE && PQstatus(s->db) == CONNECTION_OK) redis_broken(s);
  return rc;
}

/* ---------------------------------------------------------- stale sweep --- */

/* Fails one batch of stale calls in one statement. Returns CCM_OK with the
 * number failed in *n, or a database status. */
static int sweep_batch(struct ccm_scheduler *s, int *n) {
  char timeout[16], scope[32];
  snprintf(timeout, sizeof timeout, "%d", s->cfg->stale_timeout_seconds);
  snprintf(scope, sizeof scope, "%lld", s->scope);
  const char *params[] = {timeout, scope, stale_message};
  PGresult *res = NULL;
  int rc = ccm_db_exec(
      s->db,
      "WITH s AS (SELECT id FROM calls_calllog "
      "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING') "
      "AND last_attempt_at < now() - make_interval(secs => $1::int) "
      "AND ($2::bigint = 0 OR campaign_id = $2::bigint) "
      "ORDER BY last_attempt_at LIMIT " STALE_BATCH
      " FOR UPDATE SKIP LOCKED), "
      "c AS (UPDATE calls_calllog l SET status = 'FAILED', error_message = $3, "
      "next_retry_at = NULL, updated_at = now() FROM s WHERE l.id = s.id "
      "RETURNING l.call_id, l.attempt_count), "
      "a AS (UPDATE calls_callattempt t SET status = 'FAILED', "
      "outcome_at = coalesce(t.outcome_at, now()) FROM c "
      "WHERE t.call_id = c.call_id AND t.attempt = c.attempt_count), "
      "m AS (INSERT INTO calls_callmetrics_shard (date, shard, total_calls_failed) "
      "SELECT " CCM_SQL_UTC_TODAY ", " CCM_SQL_METRICS_SHARD ", count(*) FROM c "
      "HAVING count(*) > 0 ON CONFLICT (date, shard) DO UPDATE SET "
      CCM_SQL_METRICS_ADD("total_calls_failed") ", updated_at = now()) "
      "SELECT call_id, attempt_count FROM c",
      3, params, &res);
  if (rc != CCM_OK) return rc;
  int rows = PQntuples(res);
  const char **ids = calloc((size_t)rows + 1, sizeof *ids);
  int *attempts = calloc((size_t)rows + 1, sizeof *attempts);
  for (int i = 0; i < rows; i++) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, CALLS_LOGGER, "Call %s FAILED (attempt %lld): %s",
                  PQgetvalue(res, i, 0), ccm_db_get_ll(res, i, 1), stale_message);
    if (ids != NULL) ids[i] = PQgetvalue(res, i, 0);
    if (attempts != NULL) attempts[i] = (int)ccm_db_get_ll(res, i, 1);
  }
  if (ids != NULL && attempts != NULL) {
    release_slots(s, ids, attempts, (size_t)rows);
  } else if (rows > 0) {
    s->redis_lost = true; /* out of memory: let the reconciliation fix the slots */
  }
  free(attempts);
  free(ids);
  PQclear(res);
  *n = rows;
  return CCM_OK;
}

static int sweep_stale(struct ccm_scheduler *s, struct ccm_scheduler_report *rep) {
  for (;;) {
    int n = 0;
    int rc = sweep_batch(s, &n);
    if (rc != CCM_OK) return rc;
    rep->stale += n;
    if (n < STALE_BATCH_N) return CCM_OK;
  }
}

/* --------------------------------------------------------------- claims --- */

/* Appends one element of a PostgreSQL text[] literal, quoted. */
static int array_add(struct ccm_buf *b, const char *text) {
  int rc = ccm_buf_append_str(b, b->len > 1 ? ",\"" : "\"");
  for (const char *p = text; rc == CCM_OK && *p != '\0'; p++) {
    if (*p == '"' || *p == '\\') rc = ccm_buf_append(b, "\\", 1);
    if (rc == CCM_OK) rc = ccm_buf_append(b, p, 1);
  }
  if (rc == CCM_OK) rc = ccm_buf_append_str(b, "\"");
  return rc;
}

/* Appends the InitiateCallEvent of a claim, hex-encoded, as an element. */
static int array_add_event(struct ccm_buf *b, const struct due_call *d) {
  Callmanager__Events__V1__InitiateCallEvent ev =
      CALLMANAGER__EVENTS__V1__INITIATE_CALL_EVENT__INIT;
  ev.call_id = (char *)d->call_id;
  ev.campaign_id = d->campaign_id;
  ev.campaign_name = (char *)d->campaign_name;
  ev.phone_number = (char *)d->phone_number;
  ev.attempt = d->attempt;
  ev.created_at_ms = ccm_time_now_ms();
  size_t len = callmanager__events__v1__initiate_call_event__get_packed_size(&ev);
  unsigned char *bytes = malloc(len + 1);
  if (bytes == NULL) return CCM_ENOMEM;
  callmanager__events__v1__initiate_call_event__pack(&ev, bytes);
  static const char digits[] = "0123456789abcdef";
  int rc = ccm_buf_append_str(b, b->len > 1 ? ",\"" : "\"");
  for (size_t i = 0; rc == CCM_OK && i < len; i++) {
    char pair[2] = {digits[bytes[i] >> 4], digits[bytes[i] & 15]};
    rc = ccm_buf_append(b, pair, 2);
  }
  if (rc == CCM_OK) rc = ccm_buf_append_str(b, "\"");
  free(bytes);
  return rc;
}

/* Writes the claims of one transaction: the calls, their attempt rows,
 * their outbox events and the day's counters in one statement. Returns
 * CCM_OK when every call was updated, CCM_EINTERNAL when one was not, or a
 * database status. */
static int write_claims(struct ccm_scheduler *s, const struct due_call *calls, size_t n,
                        long long peak) {
  struct ccm_buf ids, events;
  ccm_buf_init(&ids, ARRAY_MAX);
  ccm_buf_init(&events, ARRAY_MAX);
  int rc = ccm_buf_append_str(&ids, "{");
  if (rc == CCM_OK) rc = ccm_buf_append_str(&events, "{");
  for (size_t i = 0; rc == CCM_OK && i < n; i++) {
    rc = array_add(&ids, calls[i].call_id);
    if (rc == CCM_OK) rc = array_add_event(&events, &calls[i]);
  }
  if (rc == CCM_OK) rc = ccm_buf_append_str(&ids, "}");
  if (rc == CCM_OK) rc = ccm_buf_append_str(&events, "}");
  char peak_text[32];
  snprintf(peak_text, sizeof peak_text, "%lld", peak);
  PGresult *res = NULL;
  if (rc == CCM_OK) {
    const char *params[] = {ids.data, events.data, s->cfg->topic_initiate, peak_text};
    rc = ccm_db_exec(
        s->db,
        "WITH i AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
        "AS t(call_id, event_hex, ord)), "
        "c AS (UPDATE calls_calllog l SET status = 'RETRYING', "
        "attempt_count = l.attempt_count + 1, next_retry_at = NULL, last_attempt_at = NULL, "
        "updated_at = now() FROM i WHERE l.call_id = i.call_id "
        "AND l.status IN ('DISCONNECTED', 'RNR') RETURNING l.call_id, l.attempt_count), "
        "a AS (INSERT INTO calls_callattempt (call_id, attempt, status) "
        "SELECT call_id, attempt_count, 'RETRYING' FROM c), "
        "o AS (INSERT INTO calls_outbox (topic, message_key, payload) "
        "SELECT $3, i.call_id, decode(i.event_hex, 'hex') FROM i JOIN c USING (call_id) "
        "ORDER BY i.ord), "
        "m AS (INSERT INTO calls_callmetrics_shard (date, shard, total_retries, "
        "peak_concurrent_calls) "
        "SELECT " CCM_SQL_UTC_TODAY ", " CCM_SQL_METRICS_SHARD ", count(*), $4::int FROM c "
        "HAVING count(*) > 0 ON CONFLICT (date, shard) DO UPDATE SET "
        CCM_SQL_METRICS_ADD("total_retries") ", "
        "peak_concurrent_calls = GREATEST(calls_callmetrics_shard.peak_concurrent_calls, "
        "EXCLUDED.peak_concurrent_calls), updated_at = now()) "
        "SELECT count(*) FROM c",
        4, params, &res);
  }
  ccm_buf_free(&ids);
  ccm_buf_free(&events);
  if (rc != CCM_OK) return rc;
  long long updated = ccm_db_get_ll(res, 0, 0);
  PQclear(res);
  if (updated != (long long)n) {
    ccm_error(LOGGER, "claim updated %lld of %zu locked calls: rolled back", updated, n);
    return CCM_EINTERNAL;
  }
  return CCM_OK;
}

/* Result of one claim transaction. */
struct batch_result {
  int rows;         /* due calls locked */
  int claimed;      /* calls moved to RETRYING */
  bool at_capacity; /* a slot was refused */
  bool redis_down;  /* Redis failed while taking slots */
  long long peak;
};

/* Takes a slot for each locked call until the limit or a Redis failure.
 * Returns the number of calls that got one (the first ones). */
static size_t take_slots(struct ccm_scheduler *s, const struct due_call *calls, size_t n, int limit,
                         struct batch_result *br) {
  size_t got = 0;
  for (; got < n; got++) {
    long long count = 0;
    int rc =
        ccm_slots_acquire(s->redis, s->cfg, calls[got].call_id, calls[got].attempt, limit, &count);
    if (rc == CCM_EEXHAUSTED) {
      br->at_capacity = true;
      break;
    }
    if (rc != CCM_OK) {
      redis_broken(s);
      br->redis_down = true;
      break;
    }
    if (count > br->peak) br->peak = count;
  }
  return got;
}

/* One claim transaction over at most want due calls. Returns CCM_OK (br
 * says what happened), or a database status (nothing claimed). */
static int claim_batch(struct ccm_scheduler *s, int want, int limit, struct batch_result *br) {
  *br = (struct batch_result){0};
  int rc = ccm_db_begin(s->db);
  if (rc != CCM_OK) return rc;
  char want_text[16], scope[32];
  snprintf(want_text, sizeof want_text, "%d", want);
  snprintf(scope, sizeof scope, "%lld", s->scope);
  const char *params[] = {want_text, scope};
  PGresult *res = NULL;
  rc = ccm_db_exec(s->db,
                   "SELECT l.call_id, l.campaign_id, c.name, l.phone_number, l.attempt_count "
                   "FROM calls_calllog l JOIN calls_campaign c ON c.id = l.campaign_id "
                   "WHERE l.status IN ('DISCONNECTED', 'RNR') AND l.next_retry_at <= now() "
                   "AND ($2::bigint = 0 OR l.campaign_id = $2::bigint) "
                   "ORDER BY l.next_retry_at, l.id LIMIT $1::int FOR UPDATE OF l SKIP LOCKED",
                   2, params, &res);
  if (rc != CCM_OK) {
    ccm_db_rollback(s->db);
    return rc;
  }
  br->rows = PQntuples(res);
  struct due_call *calls = calloc((size_t)br->rows + 1, sizeof *calls);
  const char **ids = calloc((size_t)br->rows + 1, sizeof *ids);
  int *attempts = calloc((size_t)br->rows + 1, sizeof *attempts);
  if (calls == NULL || ids == NULL || attempts == NULL) rc = CCM_ENOMEM;
  for (int i = 0; rc == CCM_OK && i < br->rows; i++) {
    calls[i] = (struct due_call){.call_id = PQgetvalue(res, i, 0),
                                 .campaign_id = ccm_db_get_ll(res, i, 1),
                                 .campaign_name = PQgetvalue(res, i, 2),
                                 .phone_number = PQgetvalue(res, i, 3),
                                 .attempt = (int)ccm_db_get_ll(res, i, 4) + 1};
    ids[i] = calls[i].call_id;
    attempts[i] = calls[i].attempt;
  }
  size_t got = rc == CCM_OK ? take_slots(s, calls, (size_t)br->rows, limit, br) : 0;
  if (got > 0) rc = write_claims(s, calls, got, br->peak);
  if (rc == CCM_OK && got > 0) {
    rc = ccm_db_commit(s->db);
  } else {
    ccm_db_rollback(s->db); /* nothing to write: just unlock the rows */
  }
  if (rc != CCM_OK) {
    release_slots(s, ids, attempts, got);
    got = 0;
  }
  br->claimed = (int)got;
  for (size_t i = 0; i < got; i++) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, CALLS_LOGGER, "Retrying call %s (attempt %d)",
                  calls[i].call_id, calls[i].attempt);
  }
  free(ids);
  free(attempts);
  free(calls);
  PQclear(res);
  return rc;
}

static int claim_due(struct ccm_scheduler *s, const struct ccm_scheduler_limits *lim,
                     struct ccm_scheduler_report *rep) {
  int remaining = lim->max_concurrent_retries;
  while (remaining > 0) {
    int want = lim->batch_size < remaining ? lim->batch_size : remaining;
    struct batch_result br;
    int rc = claim_batch(s, want, lim->max_concurrent_calls, &br);
    rep->claimed += br.claimed;
    if (br.peak > rep->peak) rep->peak = br.peak;
    if (rc != CCM_OK) return rc;
    if (br.redis_down) {
      rep->redis_down = true;
      return CCM_EUNAVAILABLE;
    }
    if (br.at_capacity) {
      rep->at_capacity = true;
      return CCM_OK;
    }
    remaining -= br.claimed;
    if (br.rows < want) return CCM_OK; /* nothing more is due (or free to lock) */
  }
  return CCM_OK;
}

/* --------------------------------------------------------- leaked slots --- */

/* Finds slot members whose attempt is over (the call is no longer in flight
 * at that attempt) or that name no call and are older than a minute (an
 * InitiateCall that died before its insert). Such slots stay held when a
 * process dies between a transition's commit and its slot release. Rows a
 * claim is changing right now are locked and skipped. Runs inside the
 * caller's transaction; returns CCM_OK with the result rows in *res. */
static int find_leaked_slots(struct ccm_scheduler *s, char **members, size_t n, PGresult **res) {
  struct ccm_buf arr;
  ccm_buf_init(&arr, n * (CCM_SLOTS_MEMBER_MAX + 4) + 8);
  int rc = ccm_buf_append_str(&arr, "{");
  for (size_t i = 0; rc == CCM_OK && i < n; i++) rc = array_add(&arr, members[i]);
  if (rc == CCM_OK) rc = ccm_buf_append_str(&arr, "}");
  const char *params[] = {arr.data};
  if (rc == CCM_OK) {
    rc = ccm_db_exec(
        s->db,
        "WITH m AS (SELECT member, substring(member FROM '^(.*):[0-9]+$') AS call_id, "
        "substring(member FROM ':([0-9]+)$')::int AS attempt FROM unnest($1::text[]) AS member "
        "WHERE member ~ ':[0-9]{1,9}$'), "
        "l AS (SELECT c.call_id, c.status, c.attempt_count FROM calls_calllog c "
        "WHERE c.call_id IN (SELECT call_id FROM m) FOR UPDATE SKIP LOCKED) "
        "SELECT m.member FROM m LEFT JOIN l ON l.call_id = m.call_id WHERE "
        "(l.call_id IS NOT NULL AND NOT (l.status IN ('INITIATED', 'PROCESSING', 'RETRYING') "
        "AND l.attempt_count = m.attempt)) OR (l.call_id IS NULL AND "
        "NOT EXISTS (SELECT 1 FROM calls_calllog c WHERE c.call_id = m.call_id) AND "
        "split_part(m.call_id, '_', 4) ~ '^[0-9]{14}$' AND "
        "to_timestamp(split_part(m.call_id, '_', 4), 'YYYYMMDDHH24MISS') < "
        "now() - interval '" ORPHAN_SLOT_SECONDS " seconds')",
        1, params, res);
  }
  ccm_buf_free(&arr);
  return rc;
}

/* Gives back leaked slots (see find_leaked_slots). Returns CCM_OK with the
 * number released in *n, or a database / Redis status. */
static int sweep_leaked_slots(struct ccm_scheduler *s, int *n) {
  *n = 0;
  char **members = NULL;
  size_t count = 0;
  int rc = ccm_slots_members(s->redis, s->cfg, &members, &count);
  if (rc != CCM_OK) {
    redis_broken(s);
    return rc;
  }
  PGresult *res = NULL;
  if (count > 0) rc = ccm_db_begin(s->db);
  if (count > 0 && rc == CCM_OK) rc = find_leaked_slots(s, members, count, &res);
  int leaked = res != NULL ? PQntuples(res) : 0;
  const char **gone = leaked > 0 ? calloc((size_t)leaked, sizeof *gone) : NULL;
  for (int i = 0; gone != NULL && i < leaked; i++) gone[i] = PQgetvalue(res, i, 0);
  /* Released while the rows are still locked, so no claim runs in between. */
  if (gone != NULL && ccm_slots_release_members(s->redis, s->cfg, gone, (size_t)leaked) != CCM_OK) {
    redis_broken(s);
    rc = CCM_EUNAVAILABLE;
  }
  for (int i = 0; gone != NULL && rc == CCM_OK && i < leaked; i++) {
    ccm_warn(LOGGER, "Released leaked concurrency slot %s", gone[i]);
  }
  if (rc == CCM_OK && gone != NULL) *n = leaked;
  free(gone);
  PQclear(res);
  if (count > 0) {
    if (rc == CCM_OK)
      rc = ccm_db_commit(s->db);
    else
      ccm_db_rollback(s->db);
  }
  for (size_t i = 0; i < count; i++) free(members[i]);
  free(members);
  return rc;
}

/* ---------------------------------------------------------- housekeeping --- */

/* Deletes what nothing needs any more, a bounded batch per pass: expired
 * Idempotency-Keys (24 h) and outbox rows published over a day ago. Returns
 * CCM_OK or a database status. */
static int housekeeping(struct ccm_scheduler *s) {
  int rc = ccm_db_exec_simple(s->db,
                              "DELETE FROM calls_idempotencykey WHERE key IN (SELECT key FROM "
                              "calls_idempotencykey WHERE expires_at < now() LIMIT 10000)");
  if (rc == CCM_OK) {
    rc = ccm_db_exec_simple(s->db,
                            "DELETE FROM calls_outbox WHERE id IN (SELECT id FROM calls_outbox "
                            "WHERE sent_at < now() - interval '1 day' LIMIT 10000)");
  }
  return rc;
}

/* ----------------------------------------------------------------- pass --- */

/* The steps of a pass; err gets the reason of a failure. */
static int run_pass(struct ccm_scheduler *s, struct ccm_scheduler_report *rep, char *err,
                    size_t errlen) {
  int rc = db_ready(s, err, errlen);
  if (rc != CCM_OK) return rc;
  redisContext *redis = redis_ready(s, err, errlen);
  int status = CCM_OK;
  if (redis == NULL) {
    rep->redis_down = true;
    status = CCM_EUNAVAILABLE;
  } else if (s->redis_lost) {
    rc = reconcile(s, &rep->reconciled_n);
    if (rc == CCM_OK) {
      s->redis_lost = false;
      rep->reconciled = true;
      ccm_info(LOGGER, "Redis is back: concurrency slots reconciled (%d calls in flight)",
               rep->reconciled_n);
    } else {
      snprintf(err, errlen, "slot reconciliation failed (%s)", ccm_error_name(rc));
      return rc;
    }
  }
  rc = sweep_stale(s, rep);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "stale-call sweep failed (%s)", ccm_error_name(rc));
    return rc;
  }
  rc = housekeeping(s);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "housekeeping failed (%s)", ccm_error_name(rc));
    return rc;
  }
  if (status != CCM_OK) return status; /* no slots: no claims */
  rc = sweep_leaked_slots(s, &rep->leaked_slots);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "leaked-slot sweep failed (%s)", ccm_error_name(rc));
    return rc;
  }
  struct ccm_scheduler_limits lim;
  ccm_scheduler_limits(s->cfg, s->rules, &lim);
  rc = claim_due(s, &lim, rep);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "%s",
             rep->redis_down ? "Redis failed while taking concurrency slots"
                             : "claiming due retries failed");
  }
  return rc;
}

int ccm_scheduler_run_once(struct ccm_scheduler *s, struct ccm_scheduler_report *out) {
  struct ccm_scheduler_report scratch;
  struct ccm_scheduler_report *rep = out != NULL ? out : &scratch;
  *rep = (struct ccm_scheduler_report){0};
  if (s == NULL) return CCM_EINVAL;
  char err[ERR_MAX] = "";
  int rc = run_pass(s, rep, err, sizeof err);
  if (rep->claimed > 0 || rep->stale > 0 || rep->reconciled || rep->at_capacity) {
    ccm_info(LOGGER, "Scheduler pass: %d retr%s claimed, %d stale call%s failed%s%s", rep->claimed,
             rep->claimed == 1 ? "y" : "ies", rep->stale, rep->stale == 1 ? "" : "s",
             rep->reconciled ? ", slots reconciled" : "",
             rep->at_capacity ? ", concurrency limit reached" : "");
  }
  if (rc != CCM_OK) {
    ccm_log_write(CCM_LOG_APP, rc == CCM_EUNAVAILABLE ? CCM_LOG_WARNING : CCM_LOG_ERROR, LOGGER,
                  "Scheduler pass failed: %s", err[0] != '\0' ? err : ccm_error_name(rc));
  }
  return rc;
}

/* -------------------------------------------------------------- command --- */

/* The command's state: the configuration, the rule set in use and the
 * identity of the file it came from. */
struct runner {
  struct ccm_config cfg;
  struct ccm_rules *rules;
  struct timespec mtime;
  off_t size;
  ino_t inode;
  int interval_seconds;
};

static void remember_file(struct runner *r) {
  struct stat st;
  if (stat(r->cfg.retry_config_path, &st) != 0) {
    memset(&r->mtime, 0, sizeof r->mtime);
    r->size = -1;
    r->inode = 0;
    return;
  }
  r->mtime = st.st_mtim;
  r->size = st.st_size;
  r->inode = st.st_ino;
}

static bool file_changed(const struct runner *r) {
  struct stat st;
  if (stat(r->cfg.retry_config_path, &st) != 0) return r->size != -1;
  return st.st_mtim.tv_sec != r->mtime.tv_sec || st.st_mtim.tv_nsec != r->mtime.tv_nsec ||
         st.st_size != r->size || st.st_ino != r->inode;
}

/* Derives and logs the interval and the limits of the current rules. */
static void apply_settings(struct runner *r, bool at_start) {
  struct ccm_scheduler_limits lim;
  ccm_scheduler_limits(&r->cfg, r->rules, &lim);
  const struct ccm_rules_settings *st = ccm_rules_settings(r->rules);
  if (r->cfg.scheduler_interval_set && st->check_interval_set) {
    ccm_warn(LOGGER,
             "SCHEDULER_INTERVAL_MINUTES (or _SECONDS) is set: "
             "scheduler.check_interval_minutes ignored");
  }
  if (r->cfg.max_concurrent_calls_set && st->concurrent_call_limit_set) {
    ccm_warn(LOGGER, "MAX_CONCURRENT_CALLS is set: defaults.concurrent_call_limit ignored");
  }
  r->interval_seconds = lim.interval_seconds;
  ccm_info(LOGGER,
           "Scheduler %s: every %d s, batch_size %d, max_concurrent_retries %d, "
           "max_concurrent_calls %d, stale after %d s",
           at_start ? "settings" : "settings reloaded", lim.interval_seconds, lim.batch_size,
           lim.max_concurrent_retries, lim.max_concurrent_calls, r->cfg.stale_timeout_seconds);
}

/* Loads the rule file. Returns CCM_OK (the new rules are in use) or the
 * loader's status (the previous rules stay; the error is logged). */
static int load_rules(struct runner *r, bool at_start) {
  struct ccm_rules *rules = NULL;
  char err[CCM_RULES_ERR_MAX];
  remember_file(r);
  int rc = ccm_rules_load_file(r->cfg.retry_config_path, &rules, err, sizeof err);
  if (rc != CCM_OK) {
    if (at_start) {
      fprintf(stderr, "ccm scheduler: invalid configuration: RETRY_SCHEDULE_CONFIG_PATH (%s): %s\n",
              r->cfg.retry_config_path, err);
    }
    ccm_error(LOGGER, "retry rules %s not loaded%s: %s", r->cfg.retry_config_path,
              at_start ? "" : " (previous rules kept)", err);
    return rc;
  }
  for (size_t i = 0; i < ccm_rules_warning_count(rules); i++) {
    ccm_warn(LOGGER, "retry rules: %s", ccm_rules_warning(rules, i));
  }
  ccm_rules_destroy(r->rules);
  r->rules = rules;
  apply_settings(r, at_start);
  return CCM_OK;
}

/* Runs passes every interval until SIGINT/SIGTERM. Returns the exit code. */
static int run_loop(struct runner *r, struct ccm_scheduler *s) {
  ccm_info(LOGGER, "Scheduler started (pid %d)", (int)getpid());
  int64_t last = 0;
  int64_t next = ccm_time_mono_ms();
  for (;;) {
    if (ccm_time_mono_ms() >= next) {
      last = ccm_time_mono_ms();
      ccm_scheduler_run_once(s, NULL);
      next = last + (int64_t)r->interval_seconds * 1000;
    }
    int64_t left = next - ccm_time_mono_ms();
    int slice = left < WAIT_SLICE_MS ? (int)(left > 0 ? left : 0) : WAIT_SLICE_MS;
    int sig = ccm_signals_wait(slice);
    bool reload = sig == SIGHUP;
    if (sig == SIGINT || sig == SIGTERM) {
      ccm_info(LOGGER, "signal %d: scheduler stopping", sig);
      return CCM_EXIT_OK;
    }
    if (reload) ccm_info(LOGGER, "SIGHUP: reloading retry rules");
    if (!reload && file_changed(r)) {
      ccm_info(LOGGER, "%s changed: reloading retry rules", r->cfg.retry_config_path);
      reload = true;
    }
    if (reload && load_rules(r, false) == CCM_OK) {
      ccm_scheduler_set_rules(s, r->rules);
      next = last + (int64_t)r->interval_seconds * 1000; /* a new interval applies now */
    }
  }
}

int ccm_cmd_scheduler(int argc, char **argv) {
  bool once = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--once") == 0) {
      once = true;
      continue;
    }
    fprintf(stderr, "ccm scheduler: unknown option '%s' (usage: ccm scheduler [--once])\n",
            argv[i]);
    return CCM_EXIT_USAGE;
  }
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct runner r = {.rules = NULL};
  int exit_code = ccm_cli_setup(&r.cfg, "scheduler");
  if (exit_code == CCM_EXIT_OK && load_rules(&r, true) != CCM_OK) exit_code = CCM_EXIT_USAGE;
  struct ccm_scheduler *s = NULL;
  if (exit_code == CCM_EXIT_OK && ccm_scheduler_create(&r.cfg, r.rules, &s) != CCM_OK) {
    exit_code = CCM_EXIT_FAILURE;
  }
  if (exit_code == CCM_EXIT_OK && once) {
    struct ccm_scheduler_report rep;
    int rc = ccm_scheduler_run_once(s, &rep);
    printf("claimed=%d stale=%d reconciled=%s%s status=%s\n", rep.claimed, rep.stale,
           rep.reconciled ? "yes" : "no", rep.at_capacity ? " at_capacity" : "",
           ccm_error_name(rc));
    exit_code = rc == CCM_OK ? CCM_EXIT_OK : CCM_EXIT_FAILURE;
  } else if (exit_code == CCM_EXIT_OK) {
    exit_code = run_loop(&r, s);
  }
  ccm_scheduler_destroy(s);
  ccm_rules_destroy(r.rules);
  ccm_config_free(&r.cfg);
  return exit_code;
}
