/* GetMetrics: the concurrency count, dependency state and the last seven
 * UTC days of counters, zero-filled, newest first. */
#include <stdio.h>
#include <string.h>

#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_service.h"
#include "ccm_slots.h"

#define METRICS_DAYS 7

static const char metrics_sql[] =
    "SELECT to_char(d, 'YYYY-MM-DD'), coalesce(m.total_calls_initiated, 0), "
    "coalesce(m.total_calls_picked, 0), coalesce(m.total_calls_disconnected, 0), "
    "coalesce(m.total_calls_rnr, 0), coalesce(m.total_calls_failed, 0), "
    "coalesce(m.total_retries, 0), coalesce(m.peak_concurrent_calls, 0), "
    "coalesce(m.total_call_duration, 0), coalesce(m.avg_call_duration, 0), "
    "coalesce(m.dlq_entries_created, 0) "
    "FROM generate_series((now() AT TIME ZONE 'UTC')::date - 6, (now() AT TIME ZONE 'UTC')::date, "
    "interval '1 day') AS d LEFT JOIN calls_callmetrics m ON m.date = d::date ORDER BY d DESC";

static Callmanager__V1__DailyMetrics *day_from_row(struct ccm_arena *arena, PGresult *res,
                                                   int row) {
  Callmanager__V1__DailyMetrics *d = ccm_arena_alloc(arena, sizeof *d);
  if (d == NULL) return NULL;
  callmanager__v1__daily_metrics__init(d);
  struct ccm_metrics_day day;
  ccm_metrics_day_read(res, row, &day);
  d->date = ccm_arena_strdup(arena, day.date);
  d->total_calls_initiated = day.initiated;
  d->total_calls_picked = day.picked;
  d->total_calls_disconnected = day.disconnected;
  d->total_calls_rnr = day.rnr;
  d->total_calls_failed = day.failed;
  d->total_retries = day.retries;
  d->peak_concurrent_calls = day.peak;
  d->total_call_duration = day.call_duration;
  d->avg_call_duration = day.avg_call_duration;
  d->dlq_entries_created = day.dlq_entries;
  return d->date != NULL ? d : NULL;
}

void ccm_svc_get_metrics(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *msg,
                         struct ccm_rpc_result *out) {
  (void)msg;
  struct ccm_app *app = ctx->app;
  if (!ccm_svc_authorize(ctx, out)) return;
  PGconn *db = ccm_svc_db(ctx);
  if (db == NULL) {
    ccm_svc_db_fail(out, CCM_EUNAVAILABLE);
    return;
  }
  PGresult *res = NULL;
  int rc = ccm_db_exec_simple(db, "SELECT 1");
  if (rc == CCM_OK) rc = ccm_db_exec(db, metrics_sql, 0, NULL, &res);
  if (rc != CCM_OK) {
    ccm_svc_db_fail(out, rc);
    return;
  }

  Callmanager__V1__GetMetricsResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  Callmanager__V1__Dependencies *deps = ccm_arena_alloc(ctx->arena, sizeof *deps);
  bool ok = resp != NULL && deps != NULL;
  if (ok) {
    callmanager__v1__get_metrics_response__init(resp);
    callmanager__v1__dependencies__init(deps);
    resp->recent_metrics = ccm_arena_calloc(ctx->arena, METRICS_DAYS, sizeof *resp->recent_metrics);
    ok = resp->recent_metrics != NULL;
  }
  for (int i = 0; ok && i < PQntuples(res) && i < METRICS_DAYS; i++) {
    resp->recent_metrics[i] = day_from_row(ctx->arena, res, i);
    ok = resp->recent_metrics[i] != NULL;
    resp->n_recent_metrics = (size_t)i + 1;
  }
  PQclear(res);
  if (!ok) {
    ccm_svc_fail(out, CCM_ENOMEM, NULL);
    return;
  }

  long long current = 0;
  redisContext *redis = ccm_svc_redis(ctx);
  bool redis_ok = redis != NULL && ccm_slots_count(redis, &app->cfg, &current) == CCM_OK;
  if (!redis_ok) {
    if (redis != NULL) ccm_svc_redis_broken(ctx);
    /* Redis down: the database's count of attempts in flight is the truth. */
    if (ccm_db_exec(db,
                    "SELECT count(*) FROM calls_calllog "
                    "WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')",
                    0, NULL, &res) == CCM_OK) {
      current = ccm_db_get_ll(res, 0, 0);
      PQclear(res);
    }
  } else {
    atomic_store(&app->redis_ok, true);
  }
  bool kafka_ok = atomic_load(&app->kafka_ok);
  deps->database = "ok";
  deps->redis = redis_ok ? "ok" : "down";
  deps->kafka = kafka_ok ? "ok" : "down";
  resp->dependencies = deps;
  resp->current_concurrent_calls = current;
  resp->max_concurrent_calls = app->max_concurrent_calls;
  resp->system_status = !redis_ok || !kafka_ok                 ? "degraded"
                        : current >= app->max_concurrent_calls ? "at_capacity"
                                                               : "healthy";
  out->status = CCM_OK;
  out->response = &resp->base;
}
