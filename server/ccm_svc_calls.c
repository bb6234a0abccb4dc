/* Call RPCs: InitiateCall (race-free: duplicate lock, concurrency slot, one
 * transaction for the call and its outbox event, Idempotency-Key) and
 * GetCall. */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_phone.h"
#include "ccm_service.h"
#include "ccm_slots.h"
#include "ccm_time.h"

#define IDEMPOTENCY_KEY_MAX 255
#define IDEMPOTENCY_WAIT_MS 5000
#define IDEMPOTENCY_POLL_MS 50
#define IDEMPOTENCY_ABANDONED_SECONDS "30"
#define CALL_ID_MAX 128

static const char duplicate_message[] =
    "A call to this number is already in progress or was made recently.";
static const char concurrency_message[] =
    "Maximum concurrent calls limit reached. Please try again later.";

/* call_<campaign>_<e164>_<UTC yyyymmddHHMMSS>_<8 hex>. */
static char *new_call_id(struct ccm_arena *arena, long long campaign_id, const char *e164) {
  unsigned char rnd[4];
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) return NULL;
  char stamp[CCM_TIME_ISO_BUF];
  ccm_time_format_compact(ccm_time_now_ms(), stamp);
  return ccm_arena_printf(arena, "call_%lld_%s_%s_%02x%02x%02x%02x", campaign_id, e164, stamp,
                          rnd[0], rnd[1], rnd[2], rnd[3]);
}

/* Hex SHA-256 of what identifies the request for Idempotency-Key reuse. */
static void request_hash(const char *e164, long long campaign_id, char out[65]) {
  char text[96];
  int n = snprintf(text, sizeof text, "InitiateCall|%s|%lld", e164, campaign_id);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)text, (size_t)n, digest);
  for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

enum idem_outcome { IDEM_OWNER, IDEM_REPLAY, IDEM_DONE_ERROR };

/* Claims the key, or finds the first response. Returns IDEM_OWNER (this
 * request runs and must finish or drop the claim), IDEM_REPLAY (*replay set)
 * or IDEM_DONE_ERROR (out filled). */
static enum idem_outcome idempotency_claim(struct ccm_rpc_ctx *ctx, PGconn *db, const char *key,
                                           const char *hash, struct ccm_rpc_result *out,
                                           Callmanager__V1__InitiateCallResponse **replay) {
  const int64_t give_up = ccm_time_mono_ms() + IDEMPOTENCY_WAIT_MS;
  for (;;) {
    const char *params[] = {key, hash};
    PGresult *res = NULL;
    int rc = ccm_db_exec(db,
                         "INSERT INTO calls_idempotencykey (key, method, request_hash, expires_at) "
                         "VALUES ($1, 'InitiateCall', $2, now() + interval '24 hours') "
                         "ON CONFLICT (key) DO NOTHING RETURNING key",
                         2, params, &res);
    if (rc != CCM_OK) {
      ccm_svc_db_fail(out, rc);
      return IDEM_DONE_ERROR;
    }
    bool claimed = PQntuples(res) == 1;
    PQclear(res);
    if (claimed) return IDEM_OWNER;
    const char *key_param[] = {key};
    rc = ccm_db_exec(db,
                     "SELECT request_hash, response, expires_at < now() OR (response IS NULL AND "
                     "created_at < now() - interval '" IDEMPOTENCY_ABANDONED_SECONDS
                     " seconds') "
                     "FROM calls_idempotencykey WHERE key = $1",
                     1, key_param, &res);
    if (rc != CCM_OK) {
      ccm_svc_db_fail(out, rc);
      return IDEM_DONE_ERROR;
    }
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
      PQclear(res); /* expired or abandoned by a crashed request: take it over */
      ccm_db_exec(
          db,
          "DELETE FROM calls_idempotencykey WHERE key = $1 AND (expires_at < now() OR "
          "(response IS NULL AND created_at < now() - interval '" IDEMPOTENCY_ABANDONED_SECONDS
          " seconds'))",
          1, key_param, NULL);
      continue;
    }
    if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), hash) != 0) {
      PQclear(res);
      out->reason = ccm_reason_name(CCM_REASON_IDEMPOTENCY_MISMATCH);
      ccm_svc_fail(out, CCM_EINVAL, "Idempotency-Key reused with a different request.");
      return IDEM_DONE_ERROR;
    }
    if (PQntuples(res) == 1 && !ccm_db_is_null(res, 0, 1)) {
      size_t len = 0;
      unsigned char *bytes = PQunescapeBytea((const unsigned char *)PQgetvalue(res, 0, 1), &len);
      PQclear(res);
      ProtobufCAllocator alloc;
      ccm_arena_protobuf_allocator(ctx->arena, &alloc);
      *replay = bytes != NULL ? callmanager__v1__initiate_call_response__unpack(&alloc, len, bytes)
                              : NULL;
      PQfreemem(bytes);
      if (*replay == NULL) {
        ccm_svc_fail(out, CCM_EINTERNAL, NULL);
        return IDEM_DONE_ERROR;
      }
      return IDEM_REPLAY;
    }
    PQclear(res);
    if (ccm_time_mono_ms() >= give_up) {
      out->reason = ccm_reason_name(CCM_REASON_IDEMPOTENCY_IN_PROGRESS);
      ccm_svc_fail(out, CCM_ECONFLICT, "A request with this Idempotency-Key is still in progress.");
      return IDEM_DONE_ERROR;
    }
    ccm_time_sleep_ms(IDEMPOTENCY_POLL_MS);
  }
}

static void idempotency_finish(struct ccm_rpc_ctx *ctx, PGconn *db, const char *key,
                               const Callmanager__V1__InitiateCallResponse *resp) {
  if (resp == NULL) {
    const char *params[] = {key};
    ccm_db_exec(db, "DELETE FROM calls_idempotencykey WHERE key = $1 AND response IS NULL", 1,
                params, NULL);
    return;
  }
  size_t len = callmanager__v1__initiate_call_response__get_packed_size(resp);
  unsigned char *bytes = ccm_arena_alloc(ctx->arena, len + 1);
  if (bytes == NULL) return;
  callmanager__v1__initiate_call_response__pack(resp, bytes);
  const char *params[] = {key, ccm_db_bytea_hex(ctx->arena, bytes, len)};
  if (params[1] == NULL) return;
  ccm_db_exec(db, "UPDATE calls_idempotencykey SET response = $2 WHERE key = $1", 2, params, NULL);
}

/* Returns CCM_OK when the database knows no non-terminal call to the number
 * and none created inside the window; CCM_EEXHAUSTED (with the seconds left
 * of the window in *retry_after, 0 when unknown) otherwise. */
static int database_duplicate_check(struct ccm_app *app, PGconn *db, const char *e164,
                                    long long *retry_after) {
  char window[32];
  snprintf(window, sizeof window, "%d", app->duplicate_window_seconds);
  const char *params[] = {e164, window};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db,
                       "SELECT status IN ('PICKED', 'FAILED'), "
                       "ceil(extract(epoch FROM created_at + make_interval(secs => $2::int) - "
                       "now()))::bigint FROM calls_calllog WHERE phone_number = $1 AND "
                       "(status NOT IN ('PICKED', 'FAILED') OR "
                       "created_at > now() - make_interval(secs => $2::int)) "
                       "ORDER BY created_at DESC LIMIT 1",
                       2, params, &res);
  if (rc != CCM_OK) return rc;
  int found = PQntuples(res);
  *retry_after = 0;
  if (found > 0 && strcmp(PQgetvalue(res, 0, 0), "t") == 0) *retry_after = ccm_db_get_ll(res, 0, 1);
  PQclear(res);
  return found > 0 ? CCM_EEXHAUSTED : CCM_OK;
}

static void fail_duplicate(struct ccm_rpc_result *out, long long retry_after) {
  ccm_svc_fail(out, CCM_EEXHAUSTED, duplicate_message);
  out->reason = ccm_reason_name(CCM_REASON_DUPLICATE_CALL);
  out->retry_after_seconds = retry_after > 0 ? (int)retry_after : 0;
}

/* Writes the call, its first attempt, its outbox event and the day's
 * counters in one statement (one transaction). Returns CCM_OK with the
 * creation time in created_at, or a database status. */
static int insert_call(struct ccm_rpc_ctx *ctx, PGconn *db, const char *call_id,
                       long long campaign_id, const char *campaign_name, const char *e164,
                       int max_attempts, long long slot_count, char **created_at) {
  struct ccm_app *app = ctx->app;
  Callmanager__Events__V1__InitiateCallEvent ev =
      CALLMANAGER__EVENTS__V1__INITIATE_CALL_EVENT__INIT;
  ev.call_id = (char *)call_id;
  ev.campaign_id = campaign_id;
  ev.campaign_name = (char *)campaign_name;
  ev.phone_number = (char *)e164;
  ev.attempt = 1;
  ev.created_at_ms = ccm_time_now_ms();
  size_t len = callmanager__events__v1__initiate_call_event__get_packed_size(&ev);
  unsigned char *bytes = ccm_arena_alloc(ctx->arena, len + 1);
  if (bytes == NULL) return CCM_ENOMEM;
  callmanager__events__v1__initiate_call_event__pack(&ev, bytes);
  char campaign[32], max[16], peak[32];
  snprintf(campaign, sizeof campaign, "%lld", campaign_id);
  snprintf(max, sizeof max, "%d", max_attempts);
  snprintf(peak, sizeof peak, "%lld", slot_count);
  const char *params[] = {call_id,
                          campaign,
                          e164,
                          max,
                          app->cfg.topic_initiate,
                          ccm_db_bytea_hex(ctx->arena, bytes, len),
                          peak};
  if (params[5] == NULL) return CCM_ENOMEM;
  PGresult *res = NULL;
  int rc = ccm_db_exec(
      db,
      "WITH c AS (INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status, "
      "attempt_count, max_attempts) VALUES ($1, $2, $3, 'INITIATED', 1, $4) "
      "RETURNING call_id, created_at), "
      "a AS (INSERT INTO calls_callattempt (call_id, attempt, status) "
      "SELECT call_id, 1, 'INITIATED' FROM c), "
      "o AS (INSERT INTO calls_outbox (topic, message_key, payload) SELECT $5, call_id, $6 FROM "
      "c), "
      "m AS (INSERT INTO calls_callmetrics_shard (date, shard, total_calls_initiated, "
      "peak_concurrent_calls) "
      "SELECT (created_at AT TIME ZONE 'UTC')::date, " CCM_SQL_METRICS_SHARD ", 1, $7 FROM c "
      "ON CONFLICT (date, shard) DO UPDATE SET " CCM_SQL_METRICS_ADD("total_calls_initiated") ", "
      "peak_concurrent_calls = GREATEST(calls_callmetrics_shard.peak_concurrent_calls, "
      "EXCLUDED.peak_concurrent_calls), updated_at = now()) "
      "SELECT " CCM_SQL_ISO("created_at") " FROM c",
      7, params, &res);
  if (rc != CCM_OK) return rc;
  *created_at = ccm_arena_strdup(ctx->arena, PQgetvalue(res, 0, 0));
  PQclear(res);
  return *created_at != NULL ? CCM_OK : CCM_ENOMEM;
}

/* Everything after validation and idempotency: duplicate checks, slot, the
 * transaction. Fills out and returns the response on success, else NULL. */
static Callmanager__V1__InitiateCallResponse *initiate(struct ccm_rpc_ctx *ctx, PGconn *db,
                                                       const char *e164, long long campaign_id,
                                                       struct ccm_rpc_result *out) {
  struct ccm_app *app = ctx->app;
  char idtext[32];
  snprintf(idtext, sizeof idtext, "%lld", campaign_id);
  const char *cparams[] = {idtext};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db, "SELECT name FROM calls_campaign WHERE id = $1 AND is_active", 1,
                       cparams, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return NULL;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    ccm_svc_fail(out, CCM_ENOTFOUND, "Campaign not found or inactive.");
    return NULL;
  }
  char *campaign_name = ccm_arena_strdup(ctx->arena, PQgetvalue(res, 0, 0));
  PQclear(res);
  char *call_id = new_call_id(ctx->arena, campaign_id, e164);
  if (campaign_name == NULL || call_id == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return NULL;
  }

  redisContext *redis = ccm_svc_redis(ctx);
  if (redis == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return NULL;
  }
  long long ttl_left = 0;
  rc = ccm_slots_lock_phone(redis, &app->cfg, e164, call_id, app->duplicate_window_seconds,
                            &ttl_left);
  if (rc == CCM_EEXHAUSTED) {
    fail_duplicate(out, ttl_left);
    return NULL;
  }
  if (rc != CCM_OK) {
    ccm_svc_redis_broken(ctx);
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return NULL;
  }
  long long retry_after = 0;
  rc = database_duplicate_check(app, db, e164, &retry_after);
  if (rc != CCM_OK) {
    ccm_slots_unlock_phone(redis, &app->cfg, e164, call_id);
    if (rc == CCM_EEXHAUSTED)
      fail_duplicate(out, retry_after);
    else
      ccm_svc_db_fail(out, rc);
    return NULL;
  }
  long long slot_count = 0;
  rc = ccm_slots_acquire(redis, &app->cfg, call_id, 1, app->max_concurrent_calls, &slot_count);
  if (rc != CCM_OK) {
    ccm_slots_unlock_phone(redis, &app->cfg, e164, call_id);
    if (rc == CCM_EEXHAUSTED) {
      ccm_svc_fail(out, CCM_EEXHAUSTED, concurrency_message);
      out->reason = ccm_reason_name(CCM_REASON_CONCURRENCY_LIMIT);
    } else {
      ccm_svc_redis_broken(ctx);
      ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    }
    return NULL;
  }
  int max_attempts = ccm_svc_default_max_attempts(app);
  char *created_at = NULL;
  rc = insert_call(ctx, db, call_id, campaign_id, campaign_name, e164, max_attempts, slot_count,
                   &created_at);
  if (rc != CCM_OK) {
    /* Nothing was written: give back what this request took. */
    ccm_slots_release(redis, &app->cfg, call_id, 1);
    ccm_slots_unlock_phone(redis, &app->cfg, e164, call_id);
    if (rc == CCM_ECONFLICT)
      fail_duplicate(out, 0); /* the partial unique index said no */
    else
      ccm_svc_db_fail(out, rc);
    return NULL;
  }
  Callmanager__V1__InitiateCallResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return NULL;
  }
  callmanager__v1__initiate_call_response__init(resp);
  resp->success = true;
  resp->call_id = call_id;
  resp->status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED;
  resp->phone_number = ccm_arena_strdup(ctx->arena, e164);
  resp->campaign_id = campaign_id;
  resp->campaign_name = campaign_name;
  resp->attempt_count = 1;
  resp->max_attempts = max_attempts;
  resp->created_at = created_at;
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.api",
                "Call %s initiated: phone=%s campaign=%lld attempt=1 active_slots=%lld", call_id,
                e164, campaign_id, slot_count);
  return resp;
}

void ccm_svc_initiate_call(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                           struct ccm_rpc_result *out) {
  const Callmanager__V1__InitiateCallRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  if (req->phone_number[0] == '\0' || req->campaign_id <= 0) {
    out->field = req->phone_number[0] == '\0' ? "phone_number" : "campaign_id";
    ccm_svc_fail(out, CCM_EINVAL, "phone_number and campaign_id are required");
    return;
  }
  char e164[CCM_PHONE_BUF];
  if (ccm_phone_normalize(req->phone_number, strlen(req->phone_number), e164) != CCM_OK) {
    /* No details.field here: the original answered `"details": {}` and its
     * clients compare the whole error. */
    ccm_svc_fail(out, CCM_EINVAL,
                 "Invalid phone number format. Must start with + and contain digits.");
    return;
  }
  const char *key = ctx->idempotency_key;
  if (key != NULL && (key[0] == '\0' || strlen(key) > IDEMPOTENCY_KEY_MAX ||
                      !ccm_svc_text_ok(key, IDEMPOTENCY_KEY_MAX))) {
    out->field = "Idempotency-Key";
    ccm_svc_fail(out, CCM_EINVAL, "Idempotency-Key must be 1 to 255 characters.");
    return;
  }
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }
  if (key != NULL) {
    char hash[65];
    request_hash(e164, (long long)req->campaign_id, hash);
    Callmanager__V1__InitiateCallResponse *replay = NULL;
    enum idem_outcome o = idempotency_claim(ctx, db, key, hash, out, &replay);
    if (o == IDEM_DONE_ERROR) return;
    if (o == IDEM_REPLAY) {
      out->status = CCM_OK;
      out->response = &replay->base;
      return;
    }
  }
  Callmanager__V1__InitiateCallResponse *resp =
      initiate(ctx, db, e164, (long long)req->campaign_id, out);
  if (key != NULL) idempotency_finish(ctx, db, key, resp);
  if (resp == NULL) return;
  out->status = CCM_OK;
  out->response = &resp->base;
}

#define CALL_COLUMNS \
  "call_id, campaign_id, phone_number, status, attempt_count, max_attempts, "              \
  CCM_SQL_ISO("next_retry_at") ", " CCM_SQL_ISO("last_attempt_at") ", total_call_time, "   \
  "external_call_id, error_message, " CCM_SQL_ISO("created_at") ", " CCM_SQL_ISO("updated_at")

/* Returns an arena copy of a nullable text column (NULL for SQL NULL). */
static char *opt_text(struct ccm_arena *arena, PGresult *res, int row, int col) {
  return ccm_db_is_null(res, row, col) ? NULL : ccm_arena_strdup(arena, PQgetvalue(res, row, col));
}

static Callmanager__V1__Call *call_from_row(struct ccm_arena *arena, PGresult *res) {
  Callmanager__V1__Call *c = ccm_arena_alloc(arena, sizeof *c);
  if (c == NULL) return NULL;
  callmanager__v1__call__init(c);
  c->call_id = ccm_arena_strdup(arena, PQgetvalue(res, 0, 0));
  c->campaign_id = ccm_db_get_ll(res, 0, 1);
  c->phone_number = ccm_arena_strdup(arena, PQgetvalue(res, 0, 2));
  c->status = ccm_svc_status_from_name(PQgetvalue(res, 0, 3));
  c->attempt_count = (int32_t)ccm_db_get_ll(res, 0, 4);
  c->max_attempts = (int32_t)ccm_db_get_ll(res, 0, 5);
  c->next_retry_at = opt_text(arena, res, 0, 6);
  if (c->next_retry_at != NULL)
    c->_next_retry_at_case = CALLMANAGER__V1__CALL___NEXT_RETRY_AT_NEXT_RETRY_AT;
  c->last_attempt_at = opt_text(arena, res, 0, 7);
  if (c->last_attempt_at != NULL) {
    c->_last_attempt_at_case = CALLMANAGER__V1__CALL___LAST_ATTEMPT_AT_LAST_ATTEMPT_AT;
  }
  c->total_call_time = ccm_db_get_ll(res, 0, 8);
  c->external_call_id = opt_text(arena, res, 0, 9);
  if (c->external_call_id != NULL) {
    c->_external_call_id_case = CALLMANAGER__V1__CALL___EXTERNAL_CALL_ID_EXTERNAL_CALL_ID;
  }
  c->error_message = opt_text(arena, res, 0, 10);
  if (c->error_message != NULL) {
    c->_error_message_case = CALLMANAGER__V1__CALL___ERROR_MESSAGE_ERROR_MESSAGE;
  }
  c->created_at = ccm_arena_strdup(arena, PQgetvalue(res, 0, 11));
  c->updated_at = ccm_arena_strdup(arena, PQgetvalue(res, 0, 12));
  return c;
}

static bool add_attempts(struct ccm_arena *arena, Callmanager__V1__Call *call, PGresult *res) {
  int n = PQntuples(res);
  call->attempts = ccm_arena_calloc(arena, (size_t)n + 1, sizeof *call->attempts);
  if (call->attempts == NULL) return false;
  for (int i = 0; i < n; i++) {
    Callmanager__V1__CallAttempt *a = ccm_arena_alloc(arena, sizeof *a);
    if (a == NULL) return false;
    callmanager__v1__call_attempt__init(a);
    a->attempt = (int32_t)ccm_db_get_ll(res, i, 0);
    a->status = ccm_svc_status_from_name(PQgetvalue(res, i, 1));
    a->external_call_id = opt_text(arena, res, i, 2);
    if (a->external_call_id != NULL) {
      a->_external_call_id_case = CALLMANAGER__V1__CALL_ATTEMPT___EXTERNAL_CALL_ID_EXTERNAL_CALL_ID;
    }
    a->dispatched_at = opt_text(arena, res, i, 3);
    if (a->dispatched_at != NULL) {
      a->_dispatched_at_case = CALLMANAGER__V1__CALL_ATTEMPT___DISPATCHED_AT_DISPATCHED_AT;
    }
    a->outcome_at = opt_text(arena, res, i, 4);
    if (a->outcome_at != NULL) {
      a->_outcome_at_case = CALLMANAGER__V1__CALL_ATTEMPT___OUTCOME_AT_OUTCOME_AT;
    }
    if (!ccm_db_is_null(res, i, 5)) {
      a->_call_duration_case = CALLMANAGER__V1__CALL_ATTEMPT___CALL_DURATION_CALL_DURATION;
      a->call_duration = ccm_db_get_ll(res, i, 5);
    }
    call->attempts[call->n_attempts++] = a;
  }
  return true;
}

void ccm_svc_get_call(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                      struct ccm_rpc_result *out) {
  const Callmanager__V1__GetCallRequest *req = (const void *)msg;
  if (!ccm_svc_authorize(ctx, out)) return;
  if (req->call_id[0] == '\0' || strlen(req->call_id) > CALL_ID_MAX ||
      !ccm_svc_text_ok(req->call_id, CALL_ID_MAX)) {
    ccm_svc_fail(out, CCM_ENOTFOUND, "Call not found.");
    return;
  }
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }
  const char *params[] = {req->call_id};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db, "SELECT " CALL_COLUMNS " FROM calls_calllog WHERE call_id = $1", 1,
                       params, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    ccm_svc_fail(out, CCM_ENOTFOUND, "Call not found.");
    return;
  }
  Callmanager__V1__Call *call = call_from_row(ctx->arena, res);
  PQclear(res);
  if (call == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  rc = ccm_db_exec(db,
                   "SELECT attempt, status, external_call_id, " CCM_SQL_ISO("dispatched_at") ", "
                   CCM_SQL_ISO("outcome_at") ", call_duration FROM calls_callattempt "
                   "WHERE call_id = $1 ORDER BY attempt",
                   1, params, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  bool ok = add_attempts(ctx->arena, call, res);
  PQclear(res);
  Callmanager__V1__GetCallResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (!ok || resp == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  callmanager__v1__get_call_response__init(resp);
  resp->call = call;
  out->status = CCM_OK;
  out->response = &resp->base;
}
