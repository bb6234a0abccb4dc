/* Recomputation of the daily metrics and the `ccm generate-metrics`
 * command. */
#include "ccm_metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_config.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"

#define LOGGER "ccm.metrics"

static const char usage_line[] = "usage: ccm generate-metrics [--date YYYY-MM-DD] [--days N]";

bool ccm_metrics_valid_date(const char *text) {
  if (text == NULL || strlen(text) != 10 || text[4] != '-' || text[7] != '-') return false;
  for (int i = 0; i < 10; i++) {
    if (i == 4 || i == 7) continue;
    if (text[i] < '0' || text[i] > '9') return false;
  }
  int year = atoi(text), month = atoi(text + 5), day = atoi(text + 8);
  static const int days_in[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (year < 1000 || month < 1 || month > 12 || day < 1) return false;
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  int max = days_in[month - 1] + (month == 2 && leap ? 1 : 0);
  return day <= max;
}

/* One statement (hence one transaction): for each date, the counters are
 * recounted from the history and stored; peak_concurrent_calls is left as
 * stored (0 for a new date). Time ranges are half-open UTC days. */
static const char recompute_sql[] =
    "WITH d AS (SELECT e.day - g.k AS day, "
    "((e.day - g.k)::timestamp AT TIME ZONE 'UTC') AS lo, "
    "((e.day - g.k + 1)::timestamp AT TIME ZONE 'UTC') AS hi "
    "FROM (SELECT coalesce($1::date, (now() AT TIME ZONE 'UTC')::date) AS day) e, "
    "generate_series(0, $2::int - 1) AS g(k)), "
    "r AS (SELECT d.day, i.n AS initiated, cb.picked, cb.disconnected, cb.rnr, "
    "cb.failed + f.n AS failed, rt.n AS retries, cb.duration, dq.n AS dlq FROM d "
    "CROSS JOIN LATERAL (SELECT count(*) AS n FROM calls_calllog c "
    "WHERE c.created_at >= d.lo AND c.created_at < d.hi) i "
    "CROSS JOIN LATERAL (SELECT "
    "count(*) FILTER (WHERE b.result = 'applied:PICKED') AS picked, "
    "count(*) FILTER (WHERE b.result = 'applied:DISCONNECTED') AS disconnected, "
    "count(*) FILTER (WHERE b.result = 'applied:RNR') AS rnr, "
    "count(*) FILTER (WHERE b.result = 'applied:FAILED') AS failed, "
    "coalesce(sum(b.call_duration) FILTER (WHERE b.result = 'applied:PICKED'), 0) AS duration "
    "FROM calls_callback b WHERE b.applied_at >= d.lo AND b.applied_at < d.hi) cb "
    "CROSS JOIN LATERAL (SELECT count(*) AS n FROM calls_calllog c WHERE c.status = 'FAILED' "
    "AND c.error_message IN ('Failed to initiate external call', "
    "'Stale call: no outcome received') AND c.updated_at >= d.lo AND c.updated_at < d.hi) f "
    "CROSS JOIN LATERAL (SELECT count(*) AS n FROM calls_callattempt a "
    "WHERE a.attempt > 1 AND a.created_at >= d.lo AND a.created_at < d.hi) rt "
    "CROSS JOIN LATERAL (SELECT count(*) AS n FROM calls_dlqentry q "
    "WHERE q.created_at >= d.lo AND q.created_at < d.hi) dq), "
    /* Shard 0 gets the recount and the other shards' counters are zeroed
     * (their peaks stay: the view takes the maximum). Disjoint rows, so one
     * statement can do both. */
    "z AS (UPDATE calls_callmetrics_shard s SET total_calls_initiated = 0, "
    "total_calls_picked = 0, total_calls_disconnected = 0, total_calls_rnr = 0, "
    "total_calls_failed = 0, total_retries = 0, total_call_duration = 0, "
    "dlq_entries_created = 0, updated_at = now() FROM r WHERE s.date = r.day AND s.shard <> 0), "
    "u AS (INSERT INTO calls_callmetrics_shard (date, shard, total_calls_initiated, "
    "total_calls_picked, total_calls_disconnected, total_calls_rnr, total_calls_failed, "
    "total_retries, total_call_duration, dlq_entries_created) "
    "SELECT day, 0, initiated, picked, disconnected, rnr, failed, retries, duration, dlq FROM r "
    "ON CONFLICT (date, shard) DO UPDATE SET "
    "total_calls_initiated = EXCLUDED.total_calls_initiated, "
    "total_calls_picked = EXCLUDED.total_calls_picked, "
    "total_calls_disconnected = EXCLUDED.total_calls_disconnected, "
    "total_calls_rnr = EXCLUDED.total_calls_rnr, "
    "total_calls_failed = EXCLUDED.total_calls_failed, "
    "total_retries = EXCLUDED.total_retries, "
    "total_call_duration = EXCLUDED.total_call_duration, "
    "dlq_entries_created = EXCLUDED.dlq_entries_created, updated_at = now()) "
    "SELECT to_char(r.day, 'YYYY-MM-DD'), r.initiated, r.picked, r.disconnected, r.rnr, "
    "r.failed, r.retries, coalesce((SELECT max(s.peak_concurrent_calls) "
    "FROM calls_callmetrics_shard s WHERE s.date = r.day), 0), r.duration, "
    "CASE WHEN r.picked > 0 THEN r.duration::double precision / r.picked ELSE 0 END, r.dlq "
    "FROM r ORDER BY r.day";

int ccm_metrics_recompute(PGconn *db, const char *date, int days, struct ccm_metrics_day **out,
                          size_t *n) {
  if (out != NULL) *out = NULL;
  if (n != NULL) *n = 0;
  if (db == NULL || out == NULL || n == NULL) return CCM_EINVAL;
  if (date != NULL && !ccm_metrics_valid_date(date)) return CCM_EINVAL;
  if (days < 1 || days > CCM_METRICS_MAX_DAYS) return CCM_EINVAL;
  char days_text[16];
  snprintf(days_text, sizeof days_text, "%d", days);
  const char *params[] = {date, days_text};
  PGresult *res = NULL;
  int rc = ccm_db_exec(db, recompute_sql, 2, params, &res);
  if (rc != CCM_OK) return rc;
  int rows = PQntuples(res);
  struct ccm_metrics_day *list = calloc((size_t)rows + 1, sizeof *list);
  if (list == NULL) {
    PQclear(res);
    return CCM_ENOMEM;
  }
  for (int i = 0; i < rows; i++) ccm_metrics_day_read(res, i, &list[i]);
  PQclear(res);
  *out = list;
  *n = (size_t)rows;
  return CCM_OK;
}

/* Parses the options. Returns CCM_EXIT_OK or CCM_EXIT_USAGE (message
 * printed). */
static int parse_args(int argc, char **argv, const char **date, int *days) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *value = NULL;
    bool is_date = strncmp(arg, "--date", 6) == 0 && (arg[6] == '\0' || arg[6] == '=');
    bool is_days = strncmp(arg, "--days", 6) == 0 && (arg[6] == '\0' || arg[6] == '=');
    if (!is_date && !is_days) {
      fprintf(stderr, "ccm generate-metrics: unknown option '%s' (%s)\n", arg, usage_line);
      return CCM_EXIT_USAGE;
    }
    if (arg[6] == '=') {
      value = arg + 7;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      fprintf(stderr, "ccm generate-metrics: %s needs a value (%s)\n", arg, usage_line);
      return CCM_EXIT_USAGE;
    }
    if (is_date) {
      if (!ccm_metrics_valid_date(value)) {
        fprintf(stderr, "ccm generate-metrics: invalid --date '%s' (expected YYYY-MM-DD)\n", value);
        return CCM_EXIT_USAGE;
      }
      *date = value;
      continue;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < 1 || v > CCM_METRICS_MAX_DAYS) {
      fprintf(stderr, "ccm generate-metrics: invalid --days '%s' (expected 1 to %d)\n", value,
              CCM_METRICS_MAX_DAYS);
      return CCM_EXIT_USAGE;
    }
    *days = (int)v;
  }
  return CCM_EXIT_OK;
}

int ccm_cmd_generate_metrics(int argc, char **argv) {
  const char *date = NULL;
  int days = 1;
  int exit_code = parse_args(argc, argv, &date, &days);
  if (exit_code != CCM_EXIT_OK) return exit_code;
  struct ccm_config cfg;
  exit_code = ccm_cli_setup(&cfg, "generate-metrics");
  PGconn *db = NULL;
  char err[512] = "";
  if (exit_code == CCM_EXIT_OK && ccm_db_connect(&cfg, &db, err, sizeof err) != CCM_OK) {
    fprintf(stderr, "ccm generate-metrics: PostgreSQL unavailable: %s\n", err);
    ccm_error(LOGGER, "generate-metrics: PostgreSQL unavailable: %s", err);
    exit_code = CCM_EXIT_FAILURE;
  }
  struct ccm_metrics_day *list = NULL;
  size_t n = 0;
  if (exit_code == CCM_EXIT_OK) {
    int rc = ccm_metrics_recompute(db, date, days, &list, &n);
    if (rc != CCM_OK) {
      fprintf(stderr, "ccm generate-metrics: recomputation failed (%s): nothing changed\n",
              ccm_error_name(rc));
      exit_code = CCM_EXIT_FAILURE;
    }
  }
  for (size_t i = 0; i < n; i++) {
    const struct ccm_metrics_day *m = &list[i];
    printf(
        "%s: initiated=%lld picked=%lld disconnected=%lld rnr=%lld failed=%lld "
        "retries=%lld peak=%lld call_duration=%lld avg_call_duration=%.1f dlq=%lld\n",
        m->date, m->initiated, m->picked, m->disconnected, m->rnr, m->failed, m->retries, m->peak,
        m->call_duration, m->avg_call_duration, m->dlq_entries);
  }
  if (exit_code == CCM_EXIT_OK) {
    ccm_info(LOGGER, "Metrics recomputed for %zu date(s) ending %s", n,
             n > 0 ? list[n - 1].date : "?");
  }
  free(list);
  if (db != NULL) ccm_db_close(db);
  ccm_config_free(&cfg);
  return exit_code;
}
