/* The initiate consumer: for each InitiateCallEvent, moves the call to
 * PROCESSING, asks the provider to dial (same Idempotency-Key on every
 * retry or redelivery), then records the provider's id (back to INITIATED,
 * awaiting the outcome) or fails the call and releases its slot. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_consumer.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_handlers.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_provider.h"

static const char failed_message[] = "Failed to initiate external call";

/* CLAIM_SKIP_OVER: nothing to dial and the attempt is over (the call is
 * terminal, waiting for a retry, or at a later attempt), so its slot must not
 * be held: a crash may have kept it. */
enum claim { CLAIM_DIAL, CLAIM_SKIP, CLAIM_SKIP_OVER };

/* Moves the call to PROCESSING for this attempt. Returns CCM_OK with *claim
 * telling whether to dial, or a database status. An event for a terminal
 * call, an older attempt, or an attempt already accepted by the provider
 * dials nothing. */
static int claim_attempt(struct ccm_consumer_ctx *ctx, const char *call_id, const char *attempt,
                         enum claim *claim, char *err, size_t errlen) {
  const char *params[] = {call_id, attempt};
  PGresult *res = NULL;
  int rc = ccm_db_exec(
      ctx->db,
      "WITH a AS (SELECT external_call_id FROM calls_callattempt "
      "WHERE call_id = $1 AND attempt = $2::int), "
      "u AS (UPDATE calls_calllog SET status = 'PROCESSING', updated_at = now() "
      "WHERE call_id = $1 AND attempt_count = $2::int AND status IN ('INITIATED', 'RETRYING', "
      "'PROCESSING') AND NOT EXISTS (SELECT 1 FROM a WHERE external_call_id IS NOT NULL) "
      "RETURNING status) "
      "SELECT (SELECT count(*) FROM u), c.status, c.attempt_count FROM calls_calllog c "
      "WHERE c.call_id = $1",
      2, params, &res);
  if (rc != CCM_OK) {
    snprintf(err, errlen, "database error claiming %s", call_id);
    return rc;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    snprintf(err, errlen, "initiate event for unknown call %s", call_id);
    return CCM_EINVAL;
  }
  const char *status = PQgetvalue(res, 0, 1);
  bool in_flight = strcmp(status, "INITIATED") == 0 || strcmp(status, "PROCESSING") == 0 ||
                   strcmp(status, "RETRYING") == 0;
  bool same_attempt = strcmp(PQgetvalue(res, 0, 2), attempt) == 0;
  *claim = ccm_db_get_ll(res, 0, 0) > 0 ? CLAIM_DIAL
           : in_flight && same_attempt  ? CLAIM_SKIP
                                        : CLAIM_SKIP_OVER;
  if (*claim != CLAIM_DIAL) {
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_INFO, "kafka.initiate",
                  "Skipping initiate of %s attempt %s: call is %s at attempt %s", call_id, attempt,
                  PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
  }
  PQclear(res);
  return CCM_OK;
}

static int record_dispatch(struct ccm_consumer_ctx *ctx, const char *call_id, const char *attempt,
                           const char *external_id) {
  const char *params[] = {call_id, attempt, external_id};
  /* The outcome may already have been applied (a fast provider): then only
   * the attempt row learns its external id. */
  return ccm_db_exec(
      ctx->db,
      "WITH a AS (UPDATE calls_callattempt SET external_call_id = $3, "
      "dispatched_at = coalesce(dispatched_at, now()) WHERE call_id = $1 AND attempt = $2::int) "
      "UPDATE calls_calllog SET status = CASE WHEN status = 'PROCESSING' THEN 'INITIATED' "
      "ELSE status END, external_call_id = $3, updated_at = now() "
      "WHERE call_id = $1 AND attempt_count = $2::int",
      3, params, NULL);
}

/* Fails the call after the provider refused it. Returns CCM_OK with
 * *changed set when this transition was applied, or a database status. */
static int record_failure(struct ccm_consumer_ctx *ctx, const char *call_id, const char *attempt,
                          bool *changed) {
  const char *params[] = {call_id, attempt, failed_message};
  PGresult *res = NULL;
  int rc = ccm_db_exec(
      ctx->db,
      "WITH c AS (UPDATE calls_calllog SET status = 'FAILED', error_message = $3, "
      "next_retry_at = NULL, updated_at = now() WHERE call_id = $1 AND attempt_count = $2::int "
      "AND status = 'PROCESSING' RETURNING call_id), "
      "a AS (UPDATE calls_callattempt SET status = 'FAILED', outcome_at = now() "
      "WHERE call_id = $1 AND attempt = $2::int AND EXISTS (SELECT 1 FROM c)), "
      "m AS (INSERT INTO calls_callmetrics_shard (date, shard, total_calls_failed) "
      "SELECT " CCM_SQL_UTC_TODAY ", " CCM_SQL_METRICS_SHARD ", 1 FROM c "
      "ON CONFLICT (date, shard) DO UPDATE SET " CCM_SQL_METRICS_ADD("total_calls_failed") ", "
      "updated_at = now()) "
      "SELECT count(*) FROM c",
      3, params, &res);
  if (rc != CCM_OK) return rc;
  *changed = ccm_db_get_ll(res, 0, 0) > 0;
  PQclear(res);
  return CCM_OK;
}

int ccm_initiate_worker_init(struct ccm_consumer_ctx *ctx) {
  const struct ccm_initiate_state *shared = ctx->data;
  struct ccm_initiate_state *st = calloc(1, sizeof *st);
  if (st == NULL) return CCM_ENOMEM;
  st->stop = shared->stop;
  st->provider = ccm_provider_create(ctx->cfg);
  if (st->provider == NULL) {
    free(st);
    return CCM_ENOMEM;
  }
  ctx->data = st;
  return CCM_OK;
}

void ccm_initiate_worker_free(struct ccm_consumer_ctx *ctx) {
  struct ccm_initiate_state *st = ctx->data;
  if (st == NULL || st->provider == NULL) return; /* never initialised */
  ccm_provider_destroy(st->provider);
  free(st);
  ctx->data = NULL;
}

int ccm_initiate_handle(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, char *err,
                        size_t errlen) {
  Callmanager__Events__V1__InitiateCallEvent *ev =
      callmanager__events__v1__initiate_call_event__unpack(NULL, msg->len, msg->payload);
  if (ev == NULL || ev->call_id[0] == '\0' || ev->attempt < 1) {
    if (ev != NULL) callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
    snprintf(err, errlen, "undecodable InitiateCallEvent (%zu bytes)", msg->len);
    return CCM_EINVAL;
  }
  ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_INFO, "kafka.initiate",
                "Processing initiate %s (attempt %d, partition %d, offset %lld)", ev->call_id,
                ev->attempt, (int)msg->partition, (long long)msg->offset);
  char attempt[16];
  snprintf(attempt, sizeof attempt, "%d", ev->attempt);
  enum claim claim = CLAIM_SKIP;
  int rc = claim_attempt(ctx, ev->call_id, attempt, &claim, err, errlen);
  if (rc == CCM_OK && claim == CLAIM_SKIP_OVER)
    ccm_consumer_release_slot(ctx, ev->call_id, ev->attempt);
  if (rc != CCM_OK || claim != CLAIM_DIAL) {
    callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
    return rc;
  }
  struct ccm_provider_request req = {.call_id = ev->call_id,
                                     .phone_number = ev->phone_number,
                                     .campaign_id = ev->campaign_id,
                                     .campaign_name = ev->campaign_name,
                                     .attempt = ev->attempt};
  char external_id[CCM_PROVIDER_ID_MAX + 1];
  struct ccm_initiate_state *st = ctx->data;
  rc = ccm_provider_initiate(st->provider, &req, st->stop, external_id, err, errlen);
  if (rc == CCM_ECONFLICT) {
    /* Stopping: leave it PROCESSING; the redelivered event dials with the
     * same key, so the provider dials at most once. */
    callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
    return CCM_EUNAVAILABLE;
  }
  if (rc == CCM_OK) {
    rc = record_dispatch(ctx, ev->call_id, attempt, external_id);
    if (rc == CCM_OK) {
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.consumer",
                    "Call %s dispatched (attempt %d): external_call_id=%s", ev->call_id,
                    ev->attempt, external_id);
    }
  } else {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_ERROR, "calls.consumer", "Call %s attempt %d failed: %s",
                  ev->call_id, ev->attempt, err);
    bool changed = false;
    rc = record_failure(ctx, ev->call_id, attempt, &changed);
    if (rc == CCM_OK && changed) {
      ccm_consumer_release_slot(ctx, ev->call_id, ev->attempt);
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.consumer", "Call %s FAILED: %s",
                    ev->call_id, failed_message);
    }
  }
  callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
  return rc;
}
