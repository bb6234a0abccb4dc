#include "ccm_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_config.h"
#include "ccm_error.h"
#include "ccm_log.h"

#define CONNINFO_MAX 2048

/* Server notices ("relation already exists, skipping") go to debug.log
 * instead of raw stderr. */
static void notice_to_log(void *arg, const char *message) {
  (void)arg;
  char line[512];
  snprintf(line, sizeof line, "%s", message);
  char *nl = strchr(line, '\n');
  if (nl != NULL) *nl = '\0';
  ccm_debug("ccm.db", "PostgreSQL: %s", line);
}

int ccm_db_connect(const struct ccm_config *cfg, PGconn **out, char *err, size_t errlen) {
  if (cfg == NULL || out == NULL) return CCM_EINVAL;
  *out = NULL;
  char conninfo[CONNINFO_MAX];
  if (ccm_config_db_conninfo(cfg, conninfo, sizeof conninfo) != CCM_OK) {
    if (err != NULL) snprintf(err, errlen, "database settings too long");
    return CCM_EINVAL;
  }
  PGconn *conn = PQconnectdb(conninfo);
  memset(conninfo, 0, sizeof conninfo); /* may hold the password */
  if (conn == NULL) {
    if (err != NULL) snprintf(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    if (err != NULL) {
      snprintf(err, errlen, "%s", PQerrorMessage(conn));
      char *nl = strchr(err, '\n');
      if (nl != NULL) *nl = '\0';
    }
    PQfinish(conn);
    return CCM_EUNAVAILABLE;
  }
  PQsetNoticeProcessor(conn, notice_to_log, NULL);
  PGresult *r = PQexec(conn, "SET TIME ZONE 'UTC'");
  PQclear(r);
  *out = conn;
  return CCM_OK;
}

int ccm_db_ensure(PGconn *conn) {
  if (conn == NULL) return CCM_EUNAVAILABLE;
  if (PQstatus(conn) == CONNECTION_OK) return CCM_OK;
  PQreset(conn);
  if (PQstatus(conn) != CONNECTION_OK) return CCM_EUNAVAILABLE;
  PGresult *r = PQexec(conn, "SET TIME ZONE 'UTC'");
  PQclear(r);
  return CCM_OK;
}

const char *ccm_db_sqlstate(const PGresult *res) {
  const char *s = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  return s != NULL ? s : "";
}

int ccm_db_status_of(PGconn *conn, const PGresult *res) {
  if (conn == NULL || PQstatus(conn) != CONNECTION_OK) return CCM_EUNAVAILABLE;
  const char *state = ccm_db_sqlstate(res);
  if (strcmp(state, "23505") == 0) return CCM_ECONFLICT;      /* unique_violation */
  if (strcmp(state, "40001") == 0) return CCM_EUNAVAILABLE;   /* serialization */
  if (strcmp(state, "40P01") == 0) return CCM_EUNAVAILABLE;   /* deadlock */
  if (strncmp(state, "08", 2) == 0) return CCM_EUNAVAILABLE;  /* connection */
  if (strncmp(state, "57P", 3) == 0) return CCM_EUNAVAILABLE; /* shutdown */
  if (strcmp(state, "53300") == 0) return CCM_EUNAVAILABLE;   /* too many connections */
  if (strncmp(state, "22", 2) == 0) return CCM_EINVAL;        /* data exception */
  return CCM_EINTERNAL;
}

static void log_failure(PGconn *conn, const PGresult *res, const char *sql, int status) {
  if (status == CCM_ECONFLICT) return; /* an expected outcome the caller handles */
  const char *msg = res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  char context[48];
  snprintf(context, sizeof context, "%s", sql);
  ccm_log_write(CCM_LOG_APP, status == CCM_EUNAVAILABLE ? CCM_LOG_WARNING : CCM_LOG_ERROR, "ccm.db",
                "query failed (%s) [%s...]: %s", ccm_db_sqlstate(res), context,
                msg != NULL ? msg : "");
}

int ccm_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                PGresult **res) {
  if (res != NULL) *res = NULL;
  if (conn == NULL || sql == NULL) return CCM_EINVAL;
  if (ccm_db_ensure(conn) != CCM_OK) return CCM_EUNAVAILABLE;
  PGresult *r = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
  ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    int status = ccm_db_status_of(conn, r);
    log_failure(conn, r, sql, status);
    PQclear(r);
    return status;
  }
  if (res != NULL)
    *res = r;
  else
    PQclear(r);
  return CCM_OK;
}

int ccm_db_exec_simple(PGconn *conn, const char *sql) {
  return ccm_db_exec(conn, sql, 0, NULL, NULL);
}

int ccm_db_begin(PGconn *conn) { return ccm_db_exec_simple(conn, "BEGIN"); }
int ccm_db_commit(PGconn *conn) { return ccm_db_exec_simple(conn, "COMMIT"); }

void ccm_db_rollback(PGconn *conn) {
  if (conn == NULL || PQstatus(conn) != CONNECTION_OK) return;
  PGresult *r = PQexec(conn, "ROLLBACK");
  PQclear(r);
}

bool ccm_db_is_null(const PGresult *res, int row, int col) {
  if (res == NULL || row >= PQntuples(res) || col >= PQnfields(res)) return true;
  return PQgetisnull(res, row, col) != 0;
}

long long ccm_db_get_ll(const PGresult *res, int row, int col) {
  if (ccm_db_is_null(res, row, col)) return 0;
  return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

char *ccm_db_bytea_hex(struct ccm_arena *arena, const unsigned char *data, size_t len) {
  static const char digits[] = "0123456789abcdef";
  char *s = ccm_arena_alloc(arena, 2 * len + 3);
  if (s == NULL) return NULL;
  s[0] = '\\';
  s[1] = 'x';
  for (size_t i = 0; i < len; i++) {
    s[2 + 2 * i] = digits[data[i] >> 4];
    s[3 + 2 * i] = digits[data[i] & 15];
  }
  s[2 + 2 * len] = '\0';
  return s;
}
