#include "ccm_metrics_sql.h"

#include <stdio.h>
#include <stdlib.h>

#include "ccm_db.h"

void ccm_metrics_day_read(const PGresult *res, int row, struct ccm_metrics_day *out) {
  snprintf(out->date, sizeof out->date, "%s",
           ccm_db_is_null(res, row, 0) ? "" : PQgetvalue(res, row, 0));
  out->initiated = ccm_db_get_ll(res, row, 1);
  out->picked = ccm_db_get_ll(res, row, 2);
  out->disconnected = ccm_db_get_ll(res, row, 3);
  out->rnr = ccm_db_get_ll(res, row, 4);
  out->failed = ccm_db_get_ll(res, row, 5);
  out->retries = ccm_db_get_ll(res, row, 6);
  out->peak = ccm_db_get_ll(res, row, 7);
  out->call_duration = ccm_db_get_ll(res, row, 8);
  out->avg_call_duration = ccm_db_is_null(res, row, 9) ? 0 : strtod(PQgetvalue(res, row, 9), NULL);
  out->dlq_entries = ccm_db_get_ll(res, row, 10);
}
