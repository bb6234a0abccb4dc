#include "ccm_migrate.h"

#include <stdbool.h>
#include <string.h>

#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"

/* Any constant works; it only has to be the same for every ccm process. */
#define MIGRATION_LOCK_KEY "7320145"

static const char create_table_sql[] =
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version VARCHAR(255) PRIMARY KEY,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";

static int is_applied(PGconn *conn, const char *name, bool *applied) {
  PGresult *res = NULL;
  const char *params[] = {name};
  int rc = ccm_db_exec(conn, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, params, &res);
  if (rc != CCM_OK) return rc;
  *applied = PQntuples(res) > 0;
  PQclear(res);
  return CCM_OK;
}

int ccm_migrate_apply(PGconn *conn, FILE *out) {
  if (conn == NULL) return CCM_EINVAL;
  int rc = ccm_db_begin(conn);
  if (rc != CCM_OK) return rc;
  rc = ccm_db_exec_simple(conn, "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK_KEY ")");
  if (rc == CCM_OK) rc = ccm_db_exec_simple(conn, create_table_sql);
  size_t applied_now = 0;
  for (size_t i = 0; rc == CCM_OK && i < ccm_migrations_count; i++) {
    const struct ccm_migration *m = &ccm_migrations[i];
    bool applied = false;
    rc = is_applied(conn, m->name, &applied);
    if (rc != CCM_OK || applied) continue;
    PGresult *res = PQexec(conn, m->sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
      ccm_error("ccm.migrate", "migration %s failed: %s", m->name, PQresultErrorMessage(res));
      rc = ccm_db_status_of(conn, res);
      if (rc == CCM_OK || rc == CCM_ECONFLICT) rc = CCM_EINTERNAL;
      PQclear(res);
      break;
    }
    PQclear(res);
    const char *params[] = {m->name};
    rc = ccm_db_exec(conn, "INSERT INTO schema_migrations (version) VALUES ($1)", 1, params, NULL);
    if (rc == CCM_OK) {
      applied_now++;
      if (out != NULL) fprintf(out, "  Applying %s... OK\n", m->name);
      ccm_info("ccm.migrate", "Applied migration %s", m->name);
    }
  }
  if (rc != CCM_OK) {
    ccm_db_rollback(conn);
    return rc;
  }
  rc = ccm_db_commit(conn);
  if (rc == CCM_OK && out != NULL && applied_now == 0) fprintf(out, "  No migrations to apply.\n");
  return rc;
}

int ccm_migrate_show(PGconn *conn, FILE *out) {
  if (conn == NULL || out == NULL) return CCM_EINVAL;
  PGresult *res = NULL;
  int rc = ccm_db_exec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL, &res);
  if (rc != CCM_OK) return rc;
  bool table_exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
  PQclear(res);
  fprintf(out, "calls\n");
  for (size_t i = 0; i < ccm_migrations_count; i++) {
    bool applied = false;
    if (table_exists) {
      rc = is_applied(conn, ccm_migrations[i].name, &applied);
      if (rc != CCM_OK) return rc;
    }
    fprintf(out, " [%c] %s\n", applied ? 'X' : ' ', ccm_migrations[i].name);
  }
  return CCM_OK;
}
