/* The daily counters in SQL (db/migrations/0005): writers increment the
 * shard row of their database session, readers use the calls_callmetrics
 * view (one row per UTC date); and the reader of one day's row. */
#ifndef CCM_METRICS_SQL_H
#define CCM_METRICS_SQL_H

#include <libpq-fe.h>

#define CCM_METRICS_DATE_BUF 11 /* "YYYY-MM-DD" */

/* One UTC date's counters. */
struct ccm_metrics_day {
  char date[CCM_METRICS_DATE_BUF];
  long long initiated, picked, disconnected, rnr, failed, retries;
  long long peak; /* cannot be rebuilt from history */
  long long call_duration;
  double avg_call_duration;
  long long dlq_entries;
};

/* Reads row `row` of res, whose columns are, in this order: date
 * (YYYY-MM-DD), initiated, picked, disconnected, rnr, failed, retries,
 * peak, call duration, average call duration, dlq entries. NULLs read as 0. */
void ccm_metrics_day_read(const PGresult *res, int row, struct ccm_metrics_day *out);

/* The shard this session writes: sessions run in different backends, so
 * concurrent transactions rarely lock the same row. */
#define CCM_SQL_METRICS_SHARD "(pg_backend_pid() % 32)"

/* Today as a UTC date. */
#define CCM_SQL_UTC_TODAY "(now() AT TIME ZONE 'UTC')::date"

/* "col = calls_callmetrics_shard.col + EXCLUDED.col" for an upsert. */
#define CCM_SQL_METRICS_ADD(col) col " = calls_callmetrics_shard." col " + EXCLUDED." col

#endif
