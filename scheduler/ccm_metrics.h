/* `ccm generate-metrics`: recomputes the daily counters of calls_callmetrics
 * (SPEC 4.2) from the call history, idempotently. peak_concurrent_calls
 * cannot be rebuilt from history and keeps its stored value. */
#ifndef CCM_METRICS_H
#define CCM_METRICS_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "ccm_metrics_sql.h"

#define CCM_METRICS_MAX_DAYS 3660

/* Returns true when text is a valid calendar date written YYYY-MM-DD
 * (years 1000-9999); false for NULL or anything else. */
bool ccm_metrics_valid_date(const char *text);

/* Recomputes days dates ending at date (NULL: today, UTC) in one
 * transaction. Returns CCM_OK with the rows, oldest first, in *out (caller
 * frees it with free()) and their number in *n; CCM_EINVAL for a bad date
 * or days outside 1..CCM_METRICS_MAX_DAYS; or a database status (nothing
 * changed). */
int ccm_metrics_recompute(PGconn *db, const char *date, int days, struct ccm_metrics_day **out,
                          size_t *n);

#endif
