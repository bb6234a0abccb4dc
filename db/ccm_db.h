/* PostgreSQL access (libpq): connections with the configured conninfo,
 * parameterised queries, and the mapping of libpq failures onto the ccm
 * error vocabulary: a lost or refused connection is CCM_EUNAVAILABLE, a
 * unique violation CCM_ECONFLICT, anything else CCM_EINTERNAL. */
#ifndef CCM_DB_H
#define CCM_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "ccm_arena.h"

struct ccm_config;

/* Opens a connection. Returns CCM_OK and the connection in *out (caller owns
 * it, PQfinish), or CCM_EUNAVAILABLE with the reason in err (no password in
 * it). */
int ccm_db_connect(const struct ccm_config *cfg, PGconn **out, char *err, size_t errlen);

/* Closes a connection opened by ccm_db_connect and forgets its prepared
 * statements; conn may be NULL. Use it instead of PQfinish. */
void ccm_db_close(PGconn *conn);

/* Makes sure conn is usable, resetting it once when the server went away.
 * Returns CCM_OK or CCM_EUNAVAILABLE. */
int ccm_db_ensure(PGconn *conn);

/* Runs a parameterised statement (text parameters; NULL entries are SQL NULL),
 * prepared once per connection when it has parameters (sql must then not
 * change meaning between calls: the same text is the same statement).
 * Returns CCM_OK with the result in *res (caller PQclears it; res may be NULL
 * to discard), or a ccm status; the failure is logged with the sql's first
 * words as context, never the parameters. */
int ccm_db_exec(PGconn *conn, const char *sql, int nparams, const char *const *params,
                PGresult **res);

/* Runs a statement without parameters; errors as ccm_db_exec. */
int ccm_db_exec_simple(PGconn *conn, const char *sql);

/* BEGIN / COMMIT / ROLLBACK. ccm_db_rollback never fails visibly. */
int ccm_db_begin(PGconn *conn);
int ccm_db_commit(PGconn *conn);
void ccm_db_rollback(PGconn *conn);

/* Maps a failed result's SQLSTATE (or the connection state) to a ccm status. */
int ccm_db_status_of(PGconn *conn, const PGresult *res);

/* Returns the SQLSTATE of a failed result, or "" when none. */
const char *ccm_db_sqlstate(const PGresult *res);

/* Returns true when the value at (row, col) is SQL NULL or out of range. */
bool ccm_db_is_null(const PGresult *res, int row, int col);

/* Returns the value at (row, col) as a 64-bit integer, 0 for NULL. */
long long ccm_db_get_ll(const PGresult *res, int row, int col);

/* Returns len bytes as bytea hex input ("\\x0a1b..."), allocated in the arena,
 * for passing binary data as a text parameter; NULL when out of memory. */
char *ccm_db_bytea_hex(struct ccm_arena *arena, const unsigned char *data, size_t len);

#endif
