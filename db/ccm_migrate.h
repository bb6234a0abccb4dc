/* Schema migrations: the numbered SQL files of db/migrations, embedded in the
 * binary at build time, applied in order and recorded in schema_migrations. */
#ifndef CCM_MIGRATE_H
#define CCM_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdio.h>

struct ccm_migration {
  const char *name; /* file name without .sql, e.g. "0001_initial" */
  const char *sql;
};

extern const struct ccm_migration ccm_migrations[];
extern const size_t ccm_migrations_count;

/* Applies every migration not yet recorded, all in one transaction under an
 * advisory lock (concurrent runs wait, then find nothing to do). Writes one
 * line per applied migration to out (may be NULL). Returns CCM_OK, or a ccm
 * status with nothing applied. */
int ccm_migrate_apply(PGconn *conn, FILE *out);

/* Writes "[X] name" / "[ ] name" for every known migration to out. Returns
 * CCM_OK or a ccm status. */
int ccm_migrate_show(PGconn *conn, FILE *out);

#endif
