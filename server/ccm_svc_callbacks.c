/* ProcessCallback: validates the provider's callback and records it durably
 * (calls_callback + outbox row in one statement) before answering; the
 * callback consumer applies it to the call. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_service.h"
#include "ccm_sign.h"

#define CALL_ID_MAX 128
#define EXTERNAL_ID_MAX 128
#define TIMESTAMP_KEEP_MAX 64

static bool is_outcome(Callmanager__V1__CallStatus s) {
  return s == CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED ||
         s == CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_DISCONNECTED ||
         s == CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_RNR ||
         s == CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_FAILED;
}

/* With CALLBACK_SIGNING_SECRET set, a callback must carry the gateway's
 * signature metadata and the raw body it signed: the signature is checked
 * again here, and the request must say what the signed body says, so a
 * caller holding a token cannot apply an unsigned outcome. */
static bool signature_valid(struct ccm_rpc_ctx *ctx,
                            const Callmanager__V1__ProcessCallbackRequest *req) {
  struct ccm_app *app = ctx->app;
  const char *secret = app->cfg.callback_signing_secret;
  if (secret == NULL) return true;
  const char *body = ctx->callback_body;
  if (body == NULL || ctx->signature == NULL || ctx->signature_time == NULL ||
      ctx->body_sha256 == NULL) {
    return false;
  }
  size_t len = strlen(body);
  char hex[65];
  ccm_sign_sha256_hex(body, len, hex);
  if (strcmp(hex, ctx->body_sha256) != 0 ||
      !ccm_sign_verify(secret, ctx->signature_time, ctx->signature, body, len,
                       (int64_t)time(NULL))) {
    return false;
  }
  json_t *root = json_loadb(body, len, 0, NULL);
  const char *call_id = json_string_value(json_object_get(root, "call_id"));
  const char *status = json_string_value(json_object_get(root, "status"));
  const json_t *duration = json_object_get(root, "call_duration");
  bool same = call_id != NULL && status != NULL && strcmp(call_id, req->call_id) == 0 &&
              strcmp(status, ccm_svc_status_name(req->status)) == 0;
  if (same && json_is_integer(duration)) {
    same = req->_call_duration_case != 0 && req->call_duration == json_integer_value(duration);
  }
  json_decref(root);
  return same;
}

/* Checks the request in SPEC order; fills out and returns false when bad. */
static bool validate(const Callmanager__V1__ProcessCallbackRequest *req,
                     struct ccm_rpc_result *out) {
  if (req->call_id[0] == '\0') {
    out->field = "call_id";
    ccm_svc_fail(out, CCM_EINVAL, "call_id and status are required");
    return false;
  }
  if (strlen(req->call_id) > CALL_ID_MAX || !ccm_svc_text_ok(req->call_id, CALL_ID_MAX)) {
    out->field = "call_id";
    ccm_svc_fail(out, CCM_EINVAL, "call_id must be at most 128 characters.");
    return false;
  }
  if (!is_outcome(req->status)) {
    out->field = "status";
    ccm_svc_fail(out, CCM_EINVAL,
                 "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED");
    return false;
  }
  if (req->_call_duration_case != 0 && (req->call_duration < 0 || req->call_duration > INT32_MAX)) {
    out->field = "call_duration";
    ccm_svc_fail(out, CCM_EINVAL, "call_duration must be a non-negative integer.");
    return false;
  }
  if (req->_external_call_id_case != 0 &&
      (strlen(req->external_call_id) > EXTERNAL_ID_MAX ||
       !ccm_svc_text_ok(req->external_call_id, EXTERNAL_ID_MAX))) {
    out->field = "external_call_id";
    ccm_svc_fail(out, CCM_EINVAL, "external_call_id must be at most 128 characters.");
    return false;
  }
  return true;
}

void ccm_svc_process_callback(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                              struct ccm_rpc_result *out) {
  const Callmanager__V1__ProcessCallbackRequest *req = (const void *)msg;
  struct ccm_app *app = ctx->app;
  if (!ccm_svc_authorize(ctx, out)) return;
  if (!signature_valid(ctx, req)) {
    ccm_warn("ccm.server", "callback for %.128s refused: invalid signature", req->call_id);
    ccm_svc_fail(out, CCM_EUNAUTH, "Invalid callback signature.");
    return;
  }
  if (!validate(req, out)) return;
  const char *timestamp = NULL;
  if (req->_timestamp_case != 0 && strlen(req->timestamp) <= TIMESTAMP_KEEP_MAX &&
      ccm_svc_text_ok(req->timestamp, TIMESTAMP_KEEP_MAX)) {
    timestamp = req->timestamp; /* kept as sent; parsed when parsable */
  }
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }

  /* One round trip: the call exists, a callback id, the recording instant. */
  const char *lookup_params[] = {req->call_id};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db,
                       "SELECT nextval('calls_callback_id_seq'), "
                       "(extract(epoch FROM clock_timestamp()) * 1000)::bigint "
                       "FROM calls_calllog WHERE call_id = $1",
                       1, lookup_params, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    ccm_svc_fail(out, CCM_ENOTFOUND, "Call not found.");
    return;
  }
  long long callback_id = ccm_db_get_ll(res, 0, 0);
  long long received_ms = ccm_db_get_ll(res, 0, 1);
  PQclear(res);

  const char *status = ccm_svc_status_name(req->status);
  Callmanager__Events__V1__CallbackEvent ev = CALLMANAGER__EVENTS__V1__CALLBACK_EVENT__INIT;
  ev.callback_id = callback_id;
  ev.call_id = req->call_id;
  ev.status = (char *)status;
  ev.has_call_duration = req->_call_duration_case != 0;
  ev.call_duration = ev.has_call_duration ? req->call_duration : 0;
  ev.external_call_id = req->_external_call_id_case != 0 ? req->external_call_id : "";
  ev.provider_timestamp = timestamp != NULL ? (char *)timestamp : "";
  ev.received_at_ms = received_ms;
  size_t len = callmanager__events__v1__callback_event__get_packed_size(&ev);
  unsigned char *bytes = ccm_arena_alloc(ctx->arena, len + 1);
  if (bytes == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  callmanager__events__v1__callback_event__pack(&ev, bytes);

  char id[32], duration[32], received[32];
  snprintf(id, sizeof id, "%lld", callback_id);
  snprintf(duration, sizeof duration, "%lld", (long long)req->call_duration);
  snprintf(received, sizeof received, "%lld", received_ms);
  const char *params[] = {id,
                          req->call_id,
                          status,
                          ev.has_call_duration ? duration : NULL,
                          req->_external_call_id_case != 0 ? req->external_call_id : NULL,
                          timestamp,
                          received,
                          app->cfg.topic_callback,
                          ccm_db_bytea_hex(ctx->arena, bytes, len)};
  if (params[8] == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  rc = ccm_db_exec(db,
                   "WITH cb AS (INSERT INTO calls_callback (id, call_id, status, call_duration, "
                   "external_call_id, provider_timestamp, outcome_at, received_at) VALUES "
                   "($1, $2, $3, $4, $5, $6, ccm_try_timestamptz($6), "
                   "to_timestamp($7::bigint / 1000.0)) RETURNING call_id) "
                   "INSERT INTO calls_outbox (topic, message_key, payload) "
                   "SELECT $8, call_id, $9 FROM cb",
                   9, params, NULL);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, "calls.api",
                "Callback recorded for call %s: status=%s callback_id=%lld", req->call_id, status,
                callback_id);

  Callmanager__V1__ProcessCallbackResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp == NULL) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }
  callmanager__v1__process_callback_response__init(resp);
  resp->success = true;
  resp->call_id = req->call_id;
  resp->status = req->status;
  out->status = CCM_OK;
  out->response = &resp->base;
}
