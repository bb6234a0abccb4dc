#include "ccm_service.h"

#include <stdio.h>
#include <string.h>

#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_redis.h"
#include "ccm_rules.h"
#include "ccm_utf8.h"

#define REDIS_TIMEOUT_MS 1000

static const char missing_token_message[] =
    "Authentication credentials were not provided or are invalid.";
static const char invalid_token_message[] = "Invalid authentication token.";

void ccm_svc_fail(struct ccm_rpc_result *out, int status, const char *message) {
  out->status = status;
  out->message = message != NULL ? message : ccm_error_message(status);
  out->response = NULL;
}

bool ccm_svc_authorize(struct ccm_rpc_ctx *ctx, struct ccm_rpc_result *out) {
  struct ccm_app *app = ctx->app;
  if (!app->cfg.auth_enabled) return true;
  if (ctx->auth_token == NULL || ctx->auth_token[0] == '\0') {
    ccm_svc_fail(out, CCM_EUNAUTH, missing_token_message);
    return false;
  }
  if (!ccm_config_token_valid(&app->cfg, ctx->auth_token)) {
    ccm_svc_fail(out, CCM_EUNAUTH, invalid_token_message);
    return false;
  }
  return true;
}

PGconn *ccm_svc_db(struct ccm_rpc_ctx *ctx) {
  struct ccm_worker *w = ctx->worker_data;
  if (w->db == NULL) {
    char err[256];
    if (ccm_db_connect(&w->app->cfg, &w->db, err, sizeof err) != CCM_OK) {
      ccm_warn("ccm.server", "PostgreSQL unreachable: %s", err);
      atomic_store(&w->app->db_ok, false);
      return NULL;
    }
  }
  if (ccm_db_ensure(w->db) != CCM_OK) {
    atomic_store(&w->app->db_ok, false);
    return NULL;
  }
  return w->db;
}

redisContext *ccm_svc_redis(struct ccm_rpc_ctx *ctx) {
  struct ccm_worker *w = ctx->worker_data;
  if (w->redis != NULL && w->redis->err != 0) ccm_svc_redis_broken(ctx);
  if (w->redis == NULL) {
    char err[256];
    if (ccm_redis_connect(&w->app->cfg, REDIS_TIMEOUT_MS, &w->redis, err, sizeof err) != CCM_OK) {
      ccm_warn("ccm.server", "Redis unreachable: %s", err);
      atomic_store(&w->app->redis_ok, false);
      return NULL;
    }
  }
  return w->redis;
}

void ccm_svc_redis_broken(struct ccm_rpc_ctx *ctx) {
  struct ccm_worker *w = ctx->worker_data;
  if (w->redis != NULL) redisFree(w->redis);
  w->redis = NULL;
  atomic_store(&w->app->redis_ok, false);
}

void ccm_svc_db_fail(struct ccm_rpc_result *out, int status) {
  if (status == CCM_EUNAVAILABLE) {
    ccm_svc_fail(out, CCM_EUNAVAILABLE, NULL);
    out->retry_after_seconds = 1;
    out->reason = ccm_reason_name(CCM_REASON_DEPENDENCY_DOWN);
    return;
  }
  ccm_svc_fail(out, status == CCM_EINVAL ? CCM_EINVAL : CCM_EINTERNAL, NULL);
}

int ccm_svc_default_max_attempts(struct ccm_app *app) {
  int override = app->cfg.max_retry_attempts_set ? app->cfg.max_retry_attempts : 0;
  pthread_rwlock_rdlock(&app->rules_lock);
  int n = app->rules != NULL ? ccm_rules_default_max_attempts(app->rules, override)
                             : (override > 0 ? override : app->cfg.max_retry_attempts);
  pthread_rwlock_unlock(&app->rules_lock);
  return n;
}

bool ccm_svc_text_ok(const char *s, size_t max_chars) {
  if (s == NULL) return true;
  size_t count = 0;
  return ccm_utf8_valid(s, strlen(s), &count) && count <= max_chars;
}

/* Names come from the proto enum itself ("CALL_STATUS_PICKED" -> "PICKED"),
 * so the list of statuses is defined once, in call_manager.proto. */
#define STATUS_PREFIX "CALL_STATUS_"

Callmanager__V1__CallStatus ccm_svc_status_from_name(const char *name) {
  char full[64];
  if (name == NULL || strlen(name) > 32)
    return CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_UNSPECIFIED;
  snprintf(full, sizeof full, STATUS_PREFIX "%s", name);
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value_by_name(&callmanager__v1__call_status__descriptor, full);
  if (v == NULL) return CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_UNSPECIFIED;
  return (Callmanager__V1__CallStatus)v->value;
}

const char *ccm_svc_status_name(Callmanager__V1__CallStatus status) {
  const ProtobufCEnumValue *v =
      protobuf_c_enum_descriptor_get_value(&callmanager__v1__call_status__descriptor, (int)status);
  if (v == NULL) return "UNSPECIFIED";
  return v->name + strlen(STATUS_PREFIX);
}
