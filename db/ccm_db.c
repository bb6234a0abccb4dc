#include "ccm_db.h"

#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_config.h"
#include "ccm_error.h"
#include "ccm_log.h"

#define CONNINFO_MAX 2048

/* Statements with parameters are prepared once per connection (server-side
 * named statements) instead of parsed and planned on every call: profiling
 * showed parse+plan was about a third of PostgreSQL's CPU per InitiateCall.
 * The cache remembers, per open connection and backend process, which SQL
 * texts (by 64-bit hash) are prepared. Both tables have a hard maximum; past
 * it statements simply run unprepared. */
#define STMT_CONNS_MAX 128
#define STMT_PER_CONN_MAX 128

struct stmt_conn {
  const PGconn *conn; /* NULL: free slot */
  int backend_pid;    /* a reset connection has a new backend: nothing prepared */
  bool server_gone;   /* the backend sent FATAL or PANIC: reconnect before use */
  int count;
  uint64_t hashes[STMT_PER_CONN_MAX];
};

static pthread_mutex_t stmt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stmt_conn stmt_conns[STMT_CONNS_MAX];

static uint64_t sql_hash(const char *sql) {
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)sql; *p != '\0'; p++) {
    h ^= *p;
    h *= 1099511628211ULL;
  }
  return h;
}

/* Finds (or with create, claims) conn's record; stmt_lock held. */
static struct stmt_conn *stmt_conn_find(const PGconn *conn, int pid, bool create) {
  struct stmt_conn *free_slot = NULL;
  for (int i = 0; i < STMT_CONNS_MAX; i++) {
    struct stmt_conn *c = &stmt_conns[i];
    if (c->conn == conn) {
      if (c->backend_pid != pid) {
        c->backend_pid = pid;
        c->server_gone = false;
        c->count = 0;
      }
      return c;
    }
    if (c->conn == NULL && free_slot == NULL) free_slot = c;
  }
  if (!create || free_slot == NULL) return NULL;
  free_slot->conn = conn;
  free_slot->backend_pid = pid;
  free_slot->server_gone = false;
  free_slot->count = 0;
  return free_slot;
}

static bool stmt_is_prepared(const PGconn *conn, int pid, uint64_t hash) {
  bool found = false;
  pthread_mutex_lock(&stmt_lock);
  struct stmt_conn *c = stmt_conn_find(conn, pid, false);
  for (int i = 0; c != NULL && i < c->count && !found; i++) found = c->hashes[i] == hash;
  pthread_mutex_unlock(&stmt_lock);
  return found;
}

/* Returns false when either table is full (the statement then runs unprepared). */
static bool stmt_has_room(const PGconn *conn, int pid) {
  pthread_mutex_lock(&stmt_lock);
  struct stmt_conn *c = stmt_conn_find(conn, pid, true);
  bool room = c != NULL && c->count < STMT_PER_CONN_MAX;
  pthread_mutex_unlock(&stmt_lock);
  return room;
}

static void stmt_remember(const PGconn *conn, int pid, uint64_t hash) {
  pthread_mutex_lock(&stmt_lock);
  struct stmt_conn *c = stmt_conn_find(conn, pid, true);
  if (c != NULL && c->count < STMT_PER_CONN_MAX) c->hashes[c->count++] = hash;
  pthread_mutex_unlock(&stmt_lock);
}

static void mark_server_gone(const PGconn *conn) {
  pthread_mutex_lock(&stmt_lock);
  struct stmt_conn *c = stmt_conn_find(conn, PQbackendPID(conn), true);
  if (c != NULL) c->server_gone = true;
  pthread_mutex_unlock(&stmt_lock);
}

static bool server_gone(const PGconn *conn) {
  pthread_mutex_lock(&stmt_lock);
  struct stmt_conn *c = stmt_conn_find(conn, PQbackendPID(conn), false);
  bool gone = c != NULL && c->server_gone;
  pthread_mutex_unlock(&stmt_lock);
  return gone;
}

static void stmt_forget(const PGconn *conn) {
  pthread_mutex_lock(&stmt_lock);
  for (int i = 0; i < STMT_CONNS_MAX; i++)
    if (stmt_conns[i].conn == conn) memset(&stmt_conns[i], 0, sizeof stmt_conns[i]);
  pthread_mutex_unlock(&stmt_lock);
}

/* Prepares sql on conn when it is not yet. Returns the statement's name in
 * name, or false to run the statement unprepared (table full, or the prepare
 * failed: the unprepared run then reports the real error). */
static bool stmt_prepare(PGconn *conn, const char *sql, int nparams, char *name, size_t len) {
  int pid = PQbackendPID(conn);
  uint64_t hash = sql_hash(sql);
  snprintf(name, len, "ccm_%016llx", (unsigned long long)hash);
  if (stmt_is_prepared(conn, pid, hash)) return true;
  if (!stmt_has_room(conn, pid)) return false;
  /* A failed Parse inside a transaction would abort it; only prepare when
   * the connection is idle or in a healthy transaction. */
  PGTransactionStatusType ts = PQtransactionStatus(conn);
  if (ts != PQTRANS_IDLE && ts != PQTRANS_INTRANS) return false;
  PGresult *r = PQprepare(conn, name, sql, nparams, NULL);
  bool ok = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK;
  /* 42P05: already prepared on this backend (e.g. by a caller that lost
   * track of it); usable as it is. */
  if (!ok && r != NULL && strcmp(ccm_db_sqlstate(r), "42P05") == 0) ok = true;
  PQclear(r);
  if (ok) stmt_remember(conn, pid, hash);
  return ok;
}

/* Server notices ("relation already exists, skipping") go to debug.log
 * instead of raw stderr. A FATAL one arrives on an idle connection whose
 * backend is terminating (PostgreSQL shutting down or restarting): the
 * connection is marked, and reconnected before its next statement. */
static void on_notice(void *arg, const PGresult *res) {
  const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0))
    mark_server_gone(arg);
  char line[512];
  snprintf(line, sizeof line, "%s", PQresultErrorMessage(res));
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
  PQsetNoticeReceiver(conn, on_notice, conn);
  PGresult *r = PQexec(conn, "SET TIME ZONE 'UTC'");
  PQclear(r);
  *out = conn;
  return CCM_OK;
}

void ccm_db_close(PGconn *conn) {
  if (conn == NULL) return;
  stmt_forget(conn);
  PQfinish(conn);
}

/* True when an idle connection's server has gone away: a restarting or
 * terminated backend sends its last message and closes the socket, which
 * libpq only notices on the next use. Checking first spares the first
 * request after a PostgreSQL restart a failure (with a transaction open
 * nothing is checked: it could not be carried over anyway). */
static bool idle_and_closed(PGconn *conn) {
  if (PQtransactionStatus(conn) != PQTRANS_IDLE) return false;
  struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN | POLLRDHUP};
  if (pfd.fd < 0) return true;
  /* Readable while idle: a notification (LISTEN), a notice, or the
   * server's last words and the end of the stream. */
  bool read = false;
  for (int i = 0; i < 4 && poll(&pfd, 1, 0) > 0; i++) {
    if ((pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0) return true;
    if (PQconsumeInput(conn) == 0 || PQstatus(conn) != CONNECTION_OK) return true;
    (void)PQisBusy(conn); /* parses what was read: notifications, notices */
    read = true;
  }
  /* The last words may come before the end of the stream: libpq hands an
   * error received while idle to the notice receiver (on_notice). Only
   * looked up when something arrived, to keep the common path a poll. */
  return read && server_gone(conn);
}

int ccm_db_ensure(PGconn *conn) {
  if (conn == NULL) return CCM_EUNAVAILABLE;
  if (PQstatus(conn) == CONNECTION_OK && !idle_and_closed(conn)) return CCM_OK;
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
  char name[32];
  PGresult *r;
  if (nparams > 0 && stmt_prepare(conn, sql, nparams, name, sizeof name))
    r = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);
  else
    r = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
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
