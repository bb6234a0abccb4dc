/* The callback consumer: applies a recorded provider callback to its call
 * through the state machine of SPEC section 6, in one transaction with the
 * attempt row, the day's metrics and the callback's "applied" mark, so a
 * redelivered message changes nothing. The slot is released after commit. */
#include <stdio.h>
#include <string.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_consumer.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_handlers.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_rules.h"

enum outcome { OUT_PICKED, OUT_DISCONNECTED, OUT_RNR, OUT_FAILED, OUT_INVALID };

static enum outcome outcome_of(const char *status) {
  if (strcmp(status, "PICKED") == 0) return OUT_PICKED;
  if (strcmp(status, "DISCONNECTED") == 0) return OUT_DISCONNECTED;
  if (strcmp(status, "RNR") == 0) return OUT_RNR;
  if (strcmp(status, "FAILED") == 0) return OUT_FAILED;
  return OUT_INVALID;
}

/* The call as locked for this transaction. */
struct locked_call {
  char status[16];
  int attempt_count;
  long long campaign_id;
};

/* Explains why the callback and its call were not found together: the
 * callback is not recorded, or its call does not exist. Returns CCM_EINVAL
 * (dead-lettered) with the reason in err, or a database status. */
static int missing_row(struct ccm_consumer_ctx *ctx,
                       const Callmanager__Events__V1__CallbackEvent *ev, const char *id, char *err,
                       size_t errlen) {
  const char *params[] = {id};
  PGresult *res = NULL;
  int rc =
      ccm_db_exec(ctx->db, "SELECT 1 FROM calls_callback WHERE id = $1::bigint", 1, params, &res);
  if (rc != CCM_OK) return rc;
  bool recorded = PQntuples(res) > 0;
  PQclear(res);
  if (recorded)
    snprintf(err, errlen, "callback for unknown call %s", ev->call_id);
  else
    snprintf(err, errlen, "callback %s of %s is not recorded", id, ev->call_id);
  return CCM_EINVAL;
}

/* Decides whether the callback applies. Returns NULL when it does, else the
 * reason it is ignored (stored in calls_callback.result). */
static const char *ignore_reason(const struct locked_call *call, int named, const char *call_id,
                                 const char *external_id) {
  if (strcmp(call->status, "PICKED") == 0 || strcmp(call->status, "FAILED") == 0) {
    return "ignored_terminal";
  }
  if (strcmp(call->status, "DISCONNECTED") == 0 || strcmp(call->status, "RNR") == 0) {
    return "ignored_waiting_retry";
  }
  if (named > 0 && named < call->attempt_count) return "ignored_earlier_attempt";
  if (named == call->attempt_count) return NULL;
  /* Absent or unknown external id: the current attempt, unless it is not
   * dispatched yet (RETRYING). */
  if (strcmp(call->status, "RETRYING") == 0) return "ignored_retrying";
  if (external_id != NULL && external_id[0] != '\0') {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_WARNING, "calls.consumer",
                  "Callback for %s names unknown external_call_id %s: applied to attempt %d",
                  call_id, external_id, call->attempt_count);
  }
  return NULL;
}

struct transition {
  const char *call_status;
  const char *error_message;    /* NULL: keep */
  const char *next_retry_at_ms; /* NULL: clear */
  int max_attempts;
  const char *metric; /* column of calls_callmetrics to increment */
  bool release_slot;
};

static int apply(PGconn *db, const Callmanager__Events__V1__CallbackEvent *ev,
                 const struct locked_call *call, const struct transition *t) {
  char attempt[16], duration[32], received[32], max[16], callback_id[32];
  snprintf(attempt, sizeof attempt, "%d", call->attempt_count);
  snprintf(duration, sizeof duration, "%lld", (long long)ev->call_duration);
  snprintf(received, sizeof received, "%lld", (long long)ev->received_at_ms);
  snprintf(max, sizeof max, "%d", t->max_attempts);
  snprintf(callback_id, sizeof callback_id, "%lld", (long long)ev->callback_id);
  bool picked = strcmp(t->call_status, "PICKED") == 0;
  const char *params[] = {ev->call_id,
                          attempt,
                          t->call_status,
                          t->error_message,
                          t->next_retry_at_ms,
                          max,
                          ev->has_call_duration ? duration : NULL,
                          ev->external_call_id[0] != '\0' ? ev->external_call_id : NULL,
                          callback_id,
                          received,
                          ev->status,
                          picked ? "1" : "0"};
  char sql[2048];
  snprintf(sql, sizeof sql,
           "WITH c AS (UPDATE calls_calllog SET status = $3, "
           "error_message = coalesce($4, error_message), "
           "next_retry_at = CASE WHEN $5::bigint IS NULL THEN NULL "
           "ELSE to_timestamp($5::bigint / 1000.0) END, max_attempts = $6::int, "
           "total_call_time = total_call_time + coalesce($7::int, 0), "
           "external_call_id = coalesce(external_call_id, $8), updated_at = now() "
           "WHERE call_id = $1 RETURNING call_id), "
           "a AS (UPDATE calls_callattempt SET status = $11, "
           "outcome_at = coalesce((SELECT outcome_at FROM calls_callback WHERE id = $9::bigint), "
           "to_timestamp($10::bigint / 1000.0)), call_duration = $7::int, "
           "external_call_id = coalesce(external_call_id, $8) "
           "WHERE call_id = $1 AND attempt = $2::int), "
           "m AS (INSERT INTO calls_callmetrics_shard (date, shard, %s, total_call_duration) "
           "VALUES (" CCM_SQL_UTC_TODAY ", %s, 1, "
           "$12::int * coalesce($7::int, 0)) "
           "ON CONFLICT (date, shard) DO UPDATE SET %s = calls_callmetrics_shard.%s + 1, "
           CCM_SQL_METRICS_ADD("total_call_duration") ", updated_at = now()) "
           "UPDATE calls_callback SET applied_at = now(), result = 'applied:' || $3, "
           "attempt = $2::int WHERE id = $9::bigint",
           t->metric, CCM_SQL_METRICS_SHARD, t->metric, t->metric);
  return ccm_db_exec(db, sql, 12, params, NULL);
}

/* Builds the transition for an outcome; DISCONNECTED/RNR ask the rules. */
static int plan(struct ccm_consumer_ctx *ctx, const Callmanager__Events__V1__CallbackEvent *ev,
                const struct locked_call *call, int current_max, struct transition *t,
                char next_retry[32], char message[CCM_RULES_MSG_MAX], char *err, size_t errlen) {
  enum outcome o = outcome_of(ev->status);
  *t = (struct transition){.max_attempts = current_max, .release_slot = true};
  switch (o) {
    case OUT_PICKED:
      t->call_status = "PICKED";
      t->metric = "total_calls_picked";
      return CCM_OK;
    case OUT_FAILED:
      t->call_status = "FAILED";
      t->error_message = "Call failed (reported by the provider)";
      t->metric = "total_calls_failed";
      return CCM_OK;
    case OUT_DISCONNECTED:
    case OUT_RNR:
      break;
    default:
      snprintf(err, errlen, "callback with invalid status %s", ev->status);
      return CCM_EINVAL;
  }
  struct ccm_rules_holder *h = ctx->data;
  struct ccm_retry_decision d;
  pthread_rwlock_rdlock(&h->lock);
  int rc = ccm_rules_decide(h->rules, call->campaign_id, ev->received_at_ms, call->attempt_count,
                            h->max_attempts_override, &d);
  pthread_rwlock_unlock(&h->lock);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "retry rules failed for %s", ev->call_id);
    return rc;
  }
  t->max_attempts = d.max_attempts;
  if (!d.retry) {
    t->call_status = "FAILED";
    snprintf(message, CCM_RULES_MSG_MAX, "%s", d.message);
    t->error_message = message;
    t->metric = "total_calls_failed";
    return CCM_OK;
  }
  t->call_status = o == OUT_RNR ? "RNR" : "DISCONNECTED";
  t->metric = o == OUT_RNR ? "total_calls_rnr" : "total_calls_disconnected";
  snprintf(next_retry, 32, "%lld", (long long)d.next_retry_at_ms);
  t->next_retry_at_ms = next_retry;
  return CCM_OK;
}

/* The transaction body. Returns CCM_OK with *release set to the attempt whose
 * slot must be given back after commit (0: none). */
static int apply_in_tx(struct ccm_consumer_ctx *ctx,
                       const Callmanager__Events__V1__CallbackEvent *ev, int *release, char *err,
                       size_t errlen) {
  char id[32];
  snprintf(id, sizeof id, "%lld", (long long)ev->callback_id);
  const char *external_id = ev->external_call_id[0] != '\0' ? ev->external_call_id : NULL;
  const char *params[] = {id, ev->call_id, external_id};
  PGresult *res = NULL;
  /* One round trip: the callback and its call, both locked, and the
   * attempt the callback's external id names (NULL: none). */
  int rc = ccm_db_exec(ctx->db,
                       "SELECT b.applied_at IS NOT NULL, b.result LIKE 'applied:%', b.attempt, "
                       "c.status, c.attempt_count, c.campaign_id, c.max_attempts, "
                       "(SELECT max(a.attempt) FROM calls_callattempt a "
                       "WHERE a.call_id = $2 AND a.external_call_id = $3) "
                       "FROM calls_callback b JOIN calls_calllog c ON c.call_id = $2 "
                       "WHERE b.id = $1::bigint FOR UPDATE OF b, c",
                       3, params, &res);
  if (rc != CCM_OK) return rc;
  if (PQntuples(res) == 0) {
    PQclear(res);
    return missing_row(ctx, ev, id, err, errlen);
  }
  bool already = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
  bool was_applied = strcmp(PQgetvalue(res, 0, 1), "t") == 0 && !ccm_db_is_null(res, 0, 2);
  int applied_attempt = (int)ccm_db_get_ll(res, 0, 2);
  if (already) {
    PQclear(res);
    /* Redelivery: applied before. That attempt is over, so its slot goes
     * back (idempotent), in case a crash came between commit and release. */
    if (was_applied) *release = applied_attempt;
    return CCM_OK;
  }
  struct locked_call call;
  snprintf(call.status, sizeof call.status, "%s", PQgetvalue(res, 0, 3));
  call.attempt_count = (int)ccm_db_get_ll(res, 0, 4);
  call.campaign_id = ccm_db_get_ll(res, 0, 5);
  int current_max = (int)ccm_db_get_ll(res, 0, 6);
  int named = (int)ccm_db_get_ll(res, 0, 7);
  PQclear(res);

  const char *ignored = ignore_reason(&call, named, ev->call_id, ev->external_call_id);
  if (ignored != NULL) {
    const char *p[] = {id, ignored};
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.consumer",
                  "Callback %s for %s (%s) ignored: %s", id, ev->call_id, ev->status, ignored);
    return ccm_db_exec(ctx->db,
                       "UPDATE calls_callback SET applied_at = now(), result = $2 WHERE id = $1", 2,
                       p, NULL);
  }
  struct transition t;
  char next_retry[32], message[CCM_RULES_MSG_MAX];
  rc = plan(ctx, ev, &call, current_max, &t, next_retry, message, err, errlen);
  if (rc != CCM_OK) return rc;
  rc = apply(ctx->db, ev, &call, &t);
  if (rc != CCM_OK) return rc;
  *release = t.release_slot ? call.attempt_count : 0;
  if (t.next_retry_at_ms != NULL) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.consumer",
                  "Call %s outcome %s (attempt %d): retry scheduled", ev->call_id, ev->status,
                  call.attempt_count);
  } else {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.consumer",
                  "Call %s outcome %s (attempt %d): %s%s%s", ev->call_id, ev->status,
                  call.attempt_count, t.call_status, t.error_message != NULL ? ", " : "",
                  t.error_message != NULL ? t.error_message : "");
  }
  return CCM_OK;
}

int ccm_callback_handle(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, char *err,
                        size_t errlen) {
  Callmanager__Events__V1__CallbackEvent *ev =
      callmanager__events__v1__callback_event__unpack(NULL, msg->len, msg->payload);
  if (ev == NULL || ev->call_id[0] == '\0' || ev->callback_id <= 0 ||
      outcome_of(ev->status) == OUT_INVALID) {
    if (ev != NULL) callmanager__events__v1__callback_event__free_unpacked(ev, NULL);
    snprintf(err, errlen, "undecodable CallbackEvent (%zu bytes)", msg->len);
    return CCM_EINVAL;
  }
  ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_INFO, "kafka.callback",
                "Processing callback %s (%s, callback %lld, partition %d, offset %lld)",
                ev->call_id, ev->status, (long long)ev->callback_id, (int)msg->partition,
                (long long)msg->offset);
  int release = 0; /* the attempt whose slot goes back after commit */
  int rc = ccm_db_begin(ctx->db);
  if (rc == CCM_OK) {
    rc = apply_in_tx(ctx, ev, &release, err, errlen);
    if (rc == CCM_OK)
      rc = ccm_db_commit(ctx->db);
    else
      ccm_db_rollback(ctx->db);
  }
  if (rc == CCM_OK && release > 0) ccm_consumer_release_slot(ctx, ev->call_id, release);
  callmanager__events__v1__callback_event__free_unpacked(ev, NULL);
  return rc;
}
