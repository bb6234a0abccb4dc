/* The CallManager service: application state shared by the handlers of
 * every service area (campaigns, calls, callbacks, metrics) and the helpers
 * they have in common. Handlers never see the gRPC API, only ccm_rpc.h. */
#ifndef CCM_SERVICE_H
#define CCM_SERVICE_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_config.h"
#include "ccm_rpc.h"

struct ccm_rules;

/* Process-wide state of `ccm server`. */
struct ccm_app {
  struct ccm_config cfg;
  pthread_rwlock_t rules_lock; /* guards rules */
  struct ccm_rules *rules;
  /* Effective limits: the environment, else the YAML's keys, else defaults. */
  int max_concurrent_calls;
  int duplicate_window_seconds;
  /* Dependency state, refreshed by the health thread. */
  atomic_bool db_ok, redis_ok, kafka_ok;
};

/* Per worker thread: its own connections, re-opened when they break. */
struct ccm_worker {
  struct ccm_app *app;
  PGconn *db;
  redisContext *redis;
};

/* ISO-8601 UTC text of a timestamptz column, as the API shows it. */
#define CCM_SQL_ISO(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* Fills out with an error; message NULL means the status's default. */
void ccm_svc_fail(struct ccm_rpc_result *out, int status, const char *message);

/* Checks metadata x-auth-token (unless AUTH_ENABLED=false). Returns true when
 * the call may proceed; otherwise fills out with UNAUTHENTICATED. */
bool ccm_svc_authorize(struct ccm_rpc_ctx *ctx, struct ccm_rpc_result *out);

/* Returns the worker's database connection, reconnecting if needed, or NULL
 * (and marks the database down) when PostgreSQL is unreachable. */
PGconn *ccm_svc_db(struct ccm_rpc_ctx *ctx);

/* Returns the worker's Redis connection, reconnecting if needed, or NULL when
 * Redis is unreachable. */
redisContext *ccm_svc_redis(struct ccm_rpc_ctx *ctx);

/* Drops the worker's Redis connection after a failure so the next call
 * reconnects. */
void ccm_svc_redis_broken(struct ccm_rpc_ctx *ctx);

/* Fills out for a failed database operation: UNAVAILABLE with the standard
 * message for outages, INTERNAL otherwise. */
void ccm_svc_db_fail(struct ccm_rpc_result *out, int status);

/* Returns the effective defaults.max_attempts (MAX_RETRY_ATTEMPTS wins). */
int ccm_svc_default_max_attempts(struct ccm_app *app);

/* Returns true when s (may be NULL) is valid UTF-8 of at most max_chars code
 * points; empty strings pass. */
bool ccm_svc_text_ok(const char *s, size_t max_chars);

/* Converts between call status names ("PICKED") and the proto enum. */
Callmanager__V1__CallStatus ccm_svc_status_from_name(const char *name);
const char *ccm_svc_status_name(Callmanager__V1__CallStatus status);

/* The handlers, one per RPC (ccm_svc_campaigns.c, ccm_svc_calls.c,
 * ccm_svc_callbacks.c, ccm_svc_metrics.c). */
void ccm_svc_create_campaign(struct ccm_rpc_ctx *, const ProtobufCMessage *,
                             struct ccm_rpc_result *);
void ccm_svc_list_campaigns(struct ccm_rpc_ctx *, const ProtobufCMessage *,
                            struct ccm_rpc_result *);
void ccm_svc_get_campaign(struct ccm_rpc_ctx *, const ProtobufCMessage *, struct ccm_rpc_result *);
void ccm_svc_add_phone_numbers(struct ccm_rpc_ctx *, const ProtobufCMessage *,
                               struct ccm_rpc_result *);
void ccm_svc_initiate_call(struct ccm_rpc_ctx *, const ProtobufCMessage *, struct ccm_rpc_result *);
void ccm_svc_process_callback(struct ccm_rpc_ctx *, const ProtobufCMessage *,
                              struct ccm_rpc_result *);
void ccm_svc_get_call(struct ccm_rpc_ctx *, const ProtobufCMessage *, struct ccm_rpc_result *);
void ccm_svc_get_metrics(struct ccm_rpc_ctx *, const ProtobufCMessage *, struct ccm_rpc_result *);

#endif
