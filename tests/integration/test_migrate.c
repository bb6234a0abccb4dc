/* Integration tests for db/ccm_migrate and the schema of
 * db/migrations/ files (SPEC 9), against the real PostgreSQL of the test
 * stack. The connection settings come from the environment exactly as the
 * application reads them (ccm_config_load: DB_* / POSTGRES_* / DATABASE_URL,
 * `.env`). The test creates its own scratch databases (as the superuser
 * `postgres`, owned by DB_USER), and drops them at the end.
 *
 * Without a reachable PostgreSQL every test FAILS (never skips). */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "ccm_config.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_migrate.h"

#define ADMIN_USER "postgres"
#define ADMIN_DB "postgres"
#define MAX_SCRATCH 8

static struct ccm_config cfg;
static bool cfg_loaded;
static char cfg_error[512];
static PGconn *admin;    /* ADMIN_USER on ADMIN_DB */
static PGconn *db;       /* DB_USER on the main scratch database */
static char scratch[64]; /* main scratch database */
static char created[MAX_SCRATCH][64];
static int created_count;
static char log_dir[64];
static char unreachable[1024]; /* why PostgreSQL could not be used */

/* ------------------------------------------------------------- helpers --- */

static void require_db(void) {
  if (db == NULL || admin == NULL) {
    fail_msg("PostgreSQL is not usable: %s",
             unreachable[0] != '\0' ? unreachable : "see test_postgres_reachable");
  }
}

static void ignore_notice(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Connects with the application's settings, with dbname and user replaced
 * (user NULL: DB_USER); as ADMIN_USER no password is sent (libpq may still
 * use PGPASSWORD / ~/.pgpass). */
static PGconn *connect_as(const char *dbname, const char *user, char *err, size_t errlen) {
  char ci[2048];
  if (ccm_config_db_conninfo(&cfg, ci, sizeof ci) != CCM_OK) {
    snprintf(err, errlen, "database settings too long");
    return NULL;
  }
  char *msg = NULL;
  PQconninfoOption *opts = PQconninfoParse(ci, &msg);
  memset(ci, 0, sizeof ci);
  if (opts == NULL) {
    snprintf(err, errlen, "cannot parse the database settings: %s", msg != NULL ? msg : "?");
    PQfreemem(msg);
    return NULL;
  }
  const char *kw[64];
  const char *val[64];
  int n = 0;
  for (PQconninfoOption *o = opts; o->keyword != NULL && n < 60; o++) {
    if (o->val == NULL || o->val[0] == '\0') continue;
    if (strcmp(o->keyword, "dbname") == 0) continue;
    if (user != NULL && strcmp(o->keyword, "user") == 0) continue;
    if (user != NULL && strcmp(o->keyword, "password") == 0) continue;
    kw[n] = o->keyword;
    val[n] = o->val;
    n++;
  }
  kw[n] = "dbname";
  val[n++] = dbname;
  if (user != NULL) {
    kw[n] = "user";
    val[n++] = user;
  }
  kw[n] = NULL;
  val[n] = NULL;
  PGconn *c = PQconnectdbParams(kw, val, 0);
  PQconninfoFree(opts);
  if (c == NULL || PQstatus(c) != CONNECTION_OK) {
    snprintf(err, errlen, "%s", c != NULL ? PQerrorMessage(c) : "out of memory");
    char *nl = strchr(err, '\n');
    if (nl != NULL) *nl = '\0';
    ccm_db_close(c);
    return NULL;
  }
  PQsetNoticeProcessor(c, ignore_notice, NULL); /* silence NOTICEs */
  return c;
}

/* Connects as the application does (ccm_db_connect) to another database. */
static PGconn *app_connect(const char *dbname) {
  char err[512] = "";
  PGconn *c = NULL;
  if (cfg.database_url == NULL) {
    struct ccm_config copy = cfg; /* shallow: only db_name differs */
    copy.db_name = (char *)dbname;
    int rc = ccm_db_connect(&copy, &c, err, sizeof err);
    if (rc != CCM_OK) fail_msg("ccm_db_connect to %s failed: %s", dbname, err);
  } else {
    c = connect_as(dbname, NULL, err, sizeof err);
    if (c == NULL) fail_msg("connect to %s failed: %s", dbname, err);
  }
  return c;
}

/* Runs sql on conn and fails the test unless it succeeds. */
static PGresult *exec_ok(PGconn *conn, const char *sql) {
  PGresult *r = PQexec(conn, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
    PQclear(r);
    fail_msg("SQL failed: %.200s: %s", sql, msg);
  }
  return r;
}

static void exec_discard(PGconn *conn, const char *sql) { PQclear(exec_ok(conn, sql)); }

static long long query_ll(PGconn *conn, const char *sql) {
  PGresult *r = exec_ok(conn, sql);
  long long v = PQntuples(r) > 0 ? ccm_db_get_ll(r, 0, 0) : -1;
  PQclear(r);
  return v;
}

static void create_database(const char *name) {
  char *user = PQescapeIdentifier(admin, cfg.db_user, strlen(cfg.db_user));
  assert_non_null(user);
  char sql[512];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
  exec_discard(admin, sql);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s OWNER %s", name, user);
  PQfreemem(user);
  exec_discard(admin, sql);
  if (created_count < MAX_SCRATCH) {
    snprintf(created[created_count++], sizeof created[0], "%s", name);
  }
}

static void drop_database(const char *name) {
  if (admin == NULL) return;
  char sql[256];
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
  PGresult *r = PQexec(admin, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    print_error("could not drop %s: %s", name, PQresultErrorMessage(r));
  }
  PQclear(r);
}

/* Captures what a migrate function writes. */
struct capture {
  FILE *f;
  char *text;
  size_t len;
};

static void capture_open(struct capture *c) {
  memset(c, 0, sizeof *c);
  c->f = open_memstream(&c->text, &c->len);
  assert_non_null(c->f);
}

static void capture_close(struct capture *c) {
  fclose(c->f);
  c->f = NULL;
}

static void capture_free(struct capture *c) {
  if (c->f != NULL) fclose(c->f);
  free(c->text);
  memset(c, 0, sizeof *c);
}

static long long insert_campaign(const char *name) {
  const char *p[] = {name};
  PGresult *r = NULL;
  int rc = ccm_db_exec(db, "INSERT INTO calls_campaign (name) VALUES ($1) RETURNING id", 1, p, &r);
  assert_int_equal(rc, CCM_OK);
  long long id = ccm_db_get_ll(r, 0, 0);
  PQclear(r);
  assert_true(id > 0);
  return id;
}

static int insert_call(const char *call_id, long long campaign, const char *phone,
                       const char *status) {
  char camp[32];
  snprintf(camp, sizeof camp, "%lld", campaign);
  const char *p[] = {call_id, camp, phone, status};
  return ccm_db_exec(db,
                     "INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status)"
                     " VALUES ($1, $2, $3, $4)",
                     4, p, NULL);
}

static int set_status(const char *call_id, const char *status) {
  const char *p[] = {status, call_id};
  return ccm_db_exec(db,
                     "UPDATE calls_calllog SET status = $1, updated_at = now() WHERE call_id = $2",
                     2, p, NULL);
}

/* --------------------------------------------------------------- tests --- */

static void test_postgres_reachable(void **state) {
  (void)state;
  if (!cfg_loaded) {
    snprintf(unreachable, sizeof unreachable, "configuration error: %s", cfg_error);
    fail_msg("%s", unreachable);
  }
  char err[512] = "";
  admin = connect_as(ADMIN_DB, ADMIN_USER, err, sizeof err);
  if (admin == NULL) {
    snprintf(unreachable, sizeof unreachable,
             "cannot connect to PostgreSQL at %s:%d as %s (%s). The integration tests need "
             "the test stack's PostgreSQL; set DB_HOST/DB_PORT/DB_USER (or DATABASE_URL) as "
             "for the application",
             cfg.database_url != NULL ? "DATABASE_URL" : cfg.db_host,
             cfg.database_url != NULL ? 0 : cfg.db_port, ADMIN_USER, err);
    fail_msg("%s", unreachable);
  }
  snprintf(scratch, sizeof scratch, "ccm_test_migrate_%ld", (long)getpid());
  create_database(scratch);
  db = app_connect(scratch);
  assert_non_null(db);
  /* The application's role owns the database, so it can migrate it. */
  assert_int_equal(query_ll(db, "SELECT 1"), 1);
  PGresult *r = exec_ok(db, "SELECT current_user, current_database()");
  assert_string_equal(PQgetvalue(r, 0, 0), cfg.db_user);
  assert_string_equal(PQgetvalue(r, 0, 1), scratch);
  PQclear(r);
  /* ccm_db_connect sets the session to UTC. */
  if (cfg.database_url == NULL) {
    r = exec_ok(db, "SHOW TimeZone");
    assert_string_equal(PQgetvalue(r, 0, 0), "UTC");
    PQclear(r);
  }
}

static void test_show_before_apply(void **state) {
  (void)state;
  require_db();
  assert_true(ccm_migrations_count >= 1);
  struct capture c;
  capture_open(&c);
  assert_int_equal(ccm_migrate_show(db, c.f), CCM_OK);
  capture_close(&c);
  char want[4096];
  size_t pos = (size_t)snprintf(want, sizeof want, "calls\n");
  for (size_t i = 0; i < ccm_migrations_count; i++) {
    pos += (size_t)snprintf(want + pos, sizeof want - pos, " [ ] %s\n", ccm_migrations[i].name);
  }
  assert_string_equal(c.text, want);
  capture_free(&c);
  /* show does not create anything */
  assert_int_equal(query_ll(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 0);
  assert_int_equal(ccm_migrate_show(NULL, stdout), CCM_EINVAL);
  assert_int_equal(ccm_migrate_show(db, NULL), CCM_EINVAL);
  assert_int_equal(ccm_migrate_apply(NULL, NULL), CCM_EINVAL);
}

static void test_apply_twice(void **state) {
  (void)state;
  require_db();
  struct capture c;
  capture_open(&c);
  assert_int_equal(ccm_migrate_apply(db, c.f), CCM_OK);
  capture_close(&c);
  for (size_t i = 0; i < ccm_migrations_count; i++) {
    char line[256];
    snprintf(line, sizeof line, "  Applying %s... OK\n", ccm_migrations[i].name);
    if (strstr(c.text, line) == NULL) fail_msg("missing \"%s\" in: %s", line, c.text);
  }
  assert_null(strstr(c.text, "No migrations to apply"));
  capture_free(&c);

  /* The second run applies nothing. */
  capture_open(&c);
  assert_int_equal(ccm_migrate_apply(db, c.f), CCM_OK);
  capture_close(&c);
  assert_string_equal(c.text, "  No migrations to apply.\n");
  capture_free(&c);
  /* ... also without an output stream. */
  assert_int_equal(ccm_migrate_apply(db, NULL), CCM_OK);

  /* schema_migrations has one row per migration, in order. */
  PGresult *r = exec_ok(db,
                        "SELECT version, applied_at IS NOT NULL FROM schema_migrations"
                        " ORDER BY version");
  assert_int_equal(PQntuples(r), (int)ccm_migrations_count);
  for (size_t i = 0; i < ccm_migrations_count; i++) {
    assert_string_equal(PQgetvalue(r, (int)i, 0), ccm_migrations[i].name);
    assert_string_equal(PQgetvalue(r, (int)i, 1), "t");
  }
  PQclear(r);
  /* Migration names are sorted and unique (applied in that order). */
  for (size_t i = 1; i < ccm_migrations_count; i++) {
    assert_true(strcmp(ccm_migrations[i - 1].name, ccm_migrations[i].name) < 0);
  }
  assert_string_equal(ccm_migrations[0].name, "0001_initial");

  /* showmigrations now marks every one applied. */
  capture_open(&c);
  assert_int_equal(ccm_migrate_show(db, c.f), CCM_OK);
  capture_close(&c);
  char want[4096];
  size_t pos = (size_t)snprintf(want, sizeof want, "calls\n");
  for (size_t i = 0; i < ccm_migrations_count; i++) {
    pos += (size_t)snprintf(want + pos, sizeof want - pos, " [X] %s\n", ccm_migrations[i].name);
  }
  assert_string_equal(c.text, want);
  capture_free(&c);
}

struct table_spec {
  const char *name;
  const char *type; /* "BASE TABLE" or "VIEW" */
  const char *columns[20];
};

static const struct table_spec tables[] = {
    {"calls_campaign",
     "BASE TABLE",
     {"id", "name", "description", "is_active", "created_at", "updated_at", NULL}},
    {"calls_phonenumber", "BASE TABLE", {"id", "campaign_id", "phone_number", NULL}},
    {"calls_calllog",
     "BASE TABLE",
     {"id", "call_id", "campaign_id", "phone_number", "status", "attempt_count", "max_attempts",
      "created_at", "updated_at", "last_attempt_at", "next_retry_at", "total_call_time",
      "external_call_id", "error_message", NULL}},
    {"calls_callmetrics",
     "VIEW",
     {"id", "date", "total_calls_initiated", "total_calls_picked", "total_calls_disconnected",
      "total_calls_rnr", "total_calls_failed", "total_retries", "peak_concurrent_calls",
      "total_call_duration", "avg_call_duration", "dlq_entries_created", NULL}},
    {"calls_dlqentry", "BASE TABLE", {"id", NULL}},
    {"calls_callattempt", "BASE TABLE", {"call_id", NULL}},
    {"calls_callback", "BASE TABLE", {"call_id", "status", NULL}},
    {"calls_outbox", "BASE TABLE", {"id", NULL}},
    {"calls_idempotencykey", "BASE TABLE", {NULL}},
    {"calls_concurrencycontrol",
     "VIEW",
     {"id", "call_id", "phone_number", "campaign_id", "started_at", NULL}},
    {"schema_migrations", "BASE TABLE", {"version", NULL}},
};

static void test_tables_and_columns(void **state) {
  (void)state;
  require_db();
  for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
    const struct table_spec *ts = &tables[t];
    const char *p[] = {ts->name};
    PGresult *r = NULL;
    assert_int_equal(ccm_db_exec(db,
                                 "SELECT table_type FROM information_schema.tables"
                                 " WHERE table_schema = 'public' AND table_name = $1",
                                 1, p, &r),
                     CCM_OK);
    if (PQntuples(r) != 1) {
      PQclear(r);
      fail_msg("table %s does not exist", ts->name);
    }
    assert_string_equal(PQgetvalue(r, 0, 0), ts->type);
    PQclear(r);
    for (size_t c = 0; ts->columns[c] != NULL; c++) {
      const char *q[] = {ts->name, ts->columns[c]};
      assert_int_equal(ccm_db_exec(db,
                                   "SELECT data_type FROM information_schema.columns"
                                   " WHERE table_schema = 'public' AND table_name = $1"
                                   " AND column_name = $2",
                                   2, q, &r),
                       CCM_OK);
      int rows = PQntuples(r);
      PQclear(r);
      if (rows != 1) fail_msg("column %s.%s does not exist", ts->name, ts->columns[c]);
    }
  }
  /* The status is stored as text (the upper-case name). */
  PGresult *r = exec_ok(db,
                        "SELECT data_type FROM information_schema.columns"
                        " WHERE table_name = 'calls_calllog' AND column_name = 'status'");
  const char *type = PQgetvalue(r, 0, 0);
  assert_true(strcmp(type, "character varying") == 0 || strcmp(type, "text") == 0);
  PQclear(r);
  /* E.164 numbers (up to 16 characters) fit. */
  long long camp = insert_campaign("columns");
  assert_int_equal(insert_call("call_cols_1", camp, "+123456789012345", "PICKED"), CCM_OK);
}

/* Indexes serve the hot queries (SPEC 9). */
static void test_indexes(void **state) {
  (void)state;
  require_db();
  static const char *const wanted[] = {
      "USING btree (status, next_retry_at)", /* due retries */
      "USING btree (phone_number",           /* per-number checks */
      "USING btree (created_at",             /* recent calls */
  };
  for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
    char pattern[128];
    snprintf(pattern, sizeof pattern, "%%%s%%", wanted[i]);
    const char *p[] = {pattern};
    PGresult *r = NULL;
    assert_int_equal(ccm_db_exec(db,
                                 "SELECT count(*) FROM pg_indexes WHERE tablename = 'calls_calllog'"
                                 " AND indexdef LIKE $1",
                                 1, p, &r),
                     CCM_OK);
    long long n = ccm_db_get_ll(r, 0, 0);
    PQclear(r);
    if (n < 1) fail_msg("no index on calls_calllog %s", wanted[i]);
  }
  /* The partial unique index on the phone number. */
  assert_true(query_ll(db,
                       "SELECT count(*) FROM pg_indexes WHERE tablename = 'calls_calllog'"
                       " AND indexdef LIKE 'CREATE UNIQUE INDEX %(phone_number)%WHERE%'") >= 1);
  /* call_id is unique. */
  assert_true(query_ll(db,
                       "SELECT count(*) FROM pg_indexes WHERE tablename = 'calls_calllog'"
                       " AND indexdef LIKE 'CREATE UNIQUE INDEX %(call_id)'") >= 1);
}

static void test_one_active_call_per_phone(void **state) {
  (void)state;
  require_db();
  long long camp = insert_campaign("partial index");
  const char *phone = "+15550000001";
  assert_int_equal(insert_call("call_pi_1", camp, phone, "INITIATED"), CCM_OK);
  /* Every non-terminal status counts as active. */
  static const char *const active[] = {"INITIATED", "PROCESSING", "RETRYING", "DISCONNECTED",
                                       "RNR"};
  for (size_t i = 0; i < sizeof active / sizeof active[0]; i++) {
    char id[64];
    snprintf(id, sizeof id, "call_pi_dup_%zu", i);
    int rc = insert_call(id, camp, phone, active[i]);
    if (rc != CCM_ECONFLICT)
      fail_msg("second %s call was %s, not refused", active[i], ccm_error_name(rc));
  }
  for (size_t i = 0; i < sizeof active / sizeof active[0]; i++) {
    assert_int_equal(set_status("call_pi_1", active[i]), CCM_OK);
    assert_int_equal(insert_call("call_pi_2", camp, phone, "INITIATED"), CCM_ECONFLICT);
  }
  /* Another number is not affected; another campaign does not help. */
  assert_int_equal(insert_call("call_pi_other", camp, "+15550000002", "INITIATED"), CCM_OK);
  long long camp2 = insert_campaign("partial index 2");
  assert_int_equal(insert_call("call_pi_camp2", camp2, phone, "INITIATED"), CCM_ECONFLICT);

  /* Once the first is PICKED, a new call is allowed. */
  assert_int_equal(set_status("call_pi_1", "PICKED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_2", camp, phone, "INITIATED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_3", camp, phone, "INITIATED"), CCM_ECONFLICT);
  /* A terminal call cannot come back while another is active. */
  assert_int_equal(set_status("call_pi_1", "RETRYING"), CCM_ECONFLICT);
  /* Once that one is FAILED, again. */
  assert_int_equal(set_status("call_pi_2", "FAILED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_3", camp, phone, "RETRYING"), CCM_OK);
  /* Terminal calls may pile up. */
  assert_int_equal(set_status("call_pi_3", "PICKED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_4", camp, phone, "FAILED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_5", camp, phone, "PICKED"), CCM_OK);
  assert_int_equal(insert_call("call_pi_6", camp, phone, "DISCONNECTED"), CCM_OK);
  assert_int_equal(
      query_ll(db, "SELECT count(*) FROM calls_calllog WHERE phone_number = '+15550000001'"), 6);
  assert_int_equal(query_ll(db,
                            "SELECT count(*) FROM calls_calllog WHERE phone_number = "
                            "'+15550000001' AND status NOT IN ('PICKED', 'FAILED')"),
                   1);

  /* The in-flight view lists INITIATED/PROCESSING/RETRYING calls only. */
  assert_int_equal(query_ll(db,
                            "SELECT count(*) FROM calls_concurrencycontrol"
                            " WHERE phone_number = '+15550000001'"),
                   0); /* call_pi_6 is DISCONNECTED: waiting, not in flight */
  assert_int_equal(set_status("call_pi_6", "RETRYING"), CCM_OK);
  PGresult *r = exec_ok(db,
                        "SELECT v.call_id, v.campaign_id = c.campaign_id,"
                        " v.started_at = COALESCE(c.last_attempt_at, c.created_at)"
                        " FROM calls_concurrencycontrol v JOIN calls_calllog c USING (id)"
                        " WHERE v.phone_number = '+15550000001'");
  assert_int_equal(PQntuples(r), 1);
  assert_string_equal(PQgetvalue(r, 0, 0), "call_pi_6");
  assert_string_equal(PQgetvalue(r, 0, 1), "t");
  assert_string_equal(PQgetvalue(r, 0, 2), "t");
  PQclear(r);
}

static void test_calllog_constraints(void **state) {
  (void)state;
  require_db();
  long long camp = insert_campaign("constraints");
  assert_int_equal(insert_call("call_cc_1", camp, "+15550000101", "PICKED"), CCM_OK);
  /* call_id is unique. */
  assert_int_equal(insert_call("call_cc_1", camp, "+15550000102", "PICKED"), CCM_ECONFLICT);
  /* Only the seven statuses. */
  int rc = insert_call("call_cc_2", camp, "+15550000103", "BOGUS");
  assert_int_not_equal(rc, CCM_OK);
  rc = insert_call("call_cc_3", camp, "+15550000104", "picked");
  assert_int_not_equal(rc, CCM_OK);
  /* The campaign must exist. */
  rc = insert_call("call_cc_4", 999999999, "+15550000105", "PICKED");
  assert_int_not_equal(rc, CCM_OK);
  /* Defaults of a new call. */
  assert_int_equal(insert_call("call_cc_5", camp, "+15550000106", "INITIATED"), CCM_OK);
  PGresult *r = exec_ok(db,
                        "SELECT attempt_count, max_attempts, total_call_time,"
                        " last_attempt_at IS NULL, next_retry_at IS NULL,"
                        " external_call_id IS NULL, error_message IS NULL,"
                        " created_at IS NOT NULL, updated_at IS NOT NULL"
                        " FROM calls_calllog WHERE call_id = 'call_cc_5'");
  assert_string_equal(PQgetvalue(r, 0, 0), "1");
  assert_string_equal(PQgetvalue(r, 0, 1), "3");
  assert_string_equal(PQgetvalue(r, 0, 2), "0");
  for (int c = 3; c < 9; c++) assert_string_equal(PQgetvalue(r, 0, c), "t");
  PQclear(r);
  /* One row per date and shard; the view sums a date's shards into one row. */
  exec_discard(db,
               "INSERT INTO calls_callmetrics_shard (date, shard, total_calls_picked, "
               "total_call_duration, peak_concurrent_calls) VALUES ('2025-01-24', 0, 1, 30, 4), "
               "('2025-01-24', 7, 2, 90, 9)");
  assert_int_equal(ccm_db_exec_simple(db,
                                      "INSERT INTO calls_callmetrics_shard (date, shard) "
                                      "VALUES ('2025-01-24', 7)"),
                   CCM_ECONFLICT);
  r = exec_ok(db,
              "SELECT count(*), sum(total_calls_picked), sum(total_call_duration), "
              "max(peak_concurrent_calls), max(avg_call_duration), max(id) "
              "FROM calls_callmetrics WHERE date = '2025-01-24'");
  assert_string_equal(PQgetvalue(r, 0, 0), "1");
  assert_string_equal(PQgetvalue(r, 0, 1), "3");
  assert_string_equal(PQgetvalue(r, 0, 2), "120");
  assert_string_equal(PQgetvalue(r, 0, 3), "9");
  assert_string_equal(PQgetvalue(r, 0, 4), "40");
  assert_string_equal(PQgetvalue(r, 0, 5), "20112");
  PQclear(r);
}

static void test_phonenumber_unique(void **state) {
  (void)state;
  require_db();
  long long camp = insert_campaign("numbers");
  long long camp2 = insert_campaign("numbers 2");
  char c1[32], c2[32];
  snprintf(c1, sizeof c1, "%lld", camp);
  snprintf(c2, sizeof c2, "%lld", camp2);
  const char *sql = "INSERT INTO calls_phonenumber (campaign_id, phone_number) VALUES ($1, $2)";
  const char *a[] = {c1, "+15551230001"};
  assert_int_equal(ccm_db_exec(db, sql, 2, a, NULL), CCM_OK);
  assert_int_equal(ccm_db_exec(db, sql, 2, a, NULL), CCM_ECONFLICT);
  const char *b[] = {c2, "+15551230001"}; /* same number, other campaign */
  assert_int_equal(ccm_db_exec(db, sql, 2, b, NULL), CCM_OK);
  const char *d[] = {c1, "+15551230002"};
  assert_int_equal(ccm_db_exec(db, sql, 2, d, NULL), CCM_OK);
  /* The bulk form the service may use: ON CONFLICT DO NOTHING counts duplicates. */
  PGresult *r = NULL;
  const char *bulk =
      "INSERT INTO calls_phonenumber (campaign_id, phone_number)"
      " SELECT $1, unnest($2::text[]) ON CONFLICT (campaign_id, phone_number)"
      " DO NOTHING RETURNING phone_number";
  const char *e[] = {c1, "{+15551230001,+15551230003,+15551230004}"};
  assert_int_equal(ccm_db_exec(db, bulk, 2, e, &r), CCM_OK);
  assert_int_equal(PQntuples(r), 2);
  PQclear(r);
  char q[256];
  snprintf(q, sizeof q, "SELECT count(*) FROM calls_phonenumber WHERE campaign_id = %lld", camp);
  assert_int_equal(query_ll(db, q), 4);
}

/* The seed README's psql monitoring queries, verbatim (whitespace included). */
static const char q_distribution[] =
    "SELECT status, COUNT(*) as count \n"
    "   FROM calls_calllog \n"
    "   GROUP BY status;";
static const char q_retry_candidates[] =
    "SELECT call_id, phone_number, status, attempt_count, next_retry_at \n"
    "   FROM calls_calllog \n"
    "   WHERE status IN ('DISCONNECTED', 'RNR') \n"
    "   AND attempt_count < max_attempts \n"
    "   ORDER BY next_retry_at;";
static const char q_recent[] =
    "SELECT call_id, phone_number, status, attempt_count, created_at \n"
    "   FROM calls_calllog \n"
    "   ORDER BY created_at DESC \n"
    "   LIMIT 10;";
static const char q_scenario[] =
    "SELECT call_id, status, attempt_count, error_message \n"
    "   FROM calls_calllog \n"
    "   WHERE phone_number='+1555000001';";
static const char q_disconnected[] =
    "SELECT call_id, status, next_retry_at, attempt_count \n"
    "   FROM calls_calllog \n"
    "   WHERE status='DISCONNECTED';";

static void test_seed_monitoring_queries(void **state) {
  (void)state;
  require_db();
  /* A fresh database so the expected results are exact. */
  char name[80];
  snprintf(name, sizeof name, "%s_q", scratch);
  create_database(name);
  PGconn *saved = db;
  db = app_connect(name);
  assert_int_equal(ccm_migrate_apply(db, NULL), CCM_OK);
  long long camp = insert_campaign("Test Campaign");
  /* 12 calls: statuses, attempts and retry times of the README scenarios. */
  static const struct {
    const char *id, *phone, *status;
    int attempts;
    const char *next_retry;
  } calls[] = {
      {"call_q_01", "+1555000001", "FAILED", 3, NULL},
      {"call_q_02", "+1555000002", "PICKED", 1, NULL},
      {"call_q_03", "+1555000003", "PICKED", 2, NULL},
      {"call_q_04", "+1555000004", "DISCONNECTED", 1, "2030-01-01 10:00:00+00"},
      {"call_q_05", "+1555000005", "RNR", 2, "2030-01-01 09:00:00+00"},
      {"call_q_06", "+1555000006", "DISCONNECTED", 3, "2030-01-01 08:00:00+00"},
      {"call_q_07", "+1555000007", "INITIATED", 1, NULL},
      {"call_q_08", "+1555000008", "PROCESSING", 1, NULL},
      {"call_q_09", "+1555000009", "RETRYING", 2, NULL},
      {"call_q_10", "+1555000010", "PICKED", 1, NULL},
      {"call_q_11", "+1555000011", "PICKED", 1, NULL},
      {"call_q_12", "+1555000012", "FAILED", 1, NULL},
  };
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
    char camp_s[32], att[16], stamp[64];
    snprintf(camp_s, sizeof camp_s, "%lld", camp);
    snprintf(att, sizeof att, "%d", calls[i].attempts);
    snprintf(stamp, sizeof stamp, "2025-01-24 10:%02zu:00+00", i);
    const char *p[] = {
        calls[i].id,
        camp_s,
        calls[i].phone,
        calls[i].status,
        att,
        calls[i].next_retry,
        stamp,
        strcmp(calls[i].id, "call_q_01") == 0 ? "Max retry attempts reached (3)" : NULL};
    assert_int_equal(
        ccm_db_exec(db,
                    "INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status,"
                    " attempt_count, max_attempts, next_retry_at, created_at, updated_at,"
                    " error_message) VALUES ($1, $2, $3, $4, $5, 3, $6, $7, $7, $8)",
                    8, p, NULL),
        CCM_OK);
  }

  PGresult *r = exec_ok(db, q_distribution);
  assert_int_equal(PQnfields(r), 2);
  assert_string_equal(PQfname(r, 0), "status");
  assert_string_equal(PQfname(r, 1), "count");
  static const struct {
    const char *status;
    int count;
  } dist[] = {{"FAILED", 2},    {"PICKED", 4},     {"DISCONNECTED", 2}, {"RNR", 1},
              {"INITIATED", 1}, {"PROCESSING", 1}, {"RETRYING", 1}};
  assert_int_equal(PQntuples(r), 7);
  for (size_t d = 0; d < sizeof dist / sizeof dist[0]; d++) {
    bool found = false;
    for (int i = 0; i < PQntuples(r); i++) {
      if (strcmp(PQgetvalue(r, i, 0), dist[d].status) == 0) {
        assert_int_equal(atoi(PQgetvalue(r, i, 1)), dist[d].count);
        found = true;
      }
    }
    if (!found) fail_msg("status %s missing from the distribution", dist[d].status);
  }
  PQclear(r);

  r = exec_ok(db, q_retry_candidates);
  assert_int_equal(PQnfields(r), 5);
  assert_int_equal(PQntuples(r), 2); /* call_q_06 has used all 3 attempts */
  assert_string_equal(PQgetvalue(r, 0, 0), "call_q_05");
  assert_string_equal(PQgetvalue(r, 1, 0), "call_q_04");
  PQclear(r);

  r = exec_ok(db, q_recent);
  assert_int_equal(PQnfields(r), 5);
  assert_int_equal(PQntuples(r), 10);
  assert_string_equal(PQgetvalue(r, 0, 0), "call_q_12");
  assert_string_equal(PQgetvalue(r, 9, 0), "call_q_03");
  PQclear(r);

  r = exec_ok(db, q_scenario);
  assert_int_equal(PQntuples(r), 1);
  assert_string_equal(PQgetvalue(r, 0, 1), "FAILED");
  assert_string_equal(PQgetvalue(r, 0, 2), "3");
  assert_string_equal(PQgetvalue(r, 0, 3), "Max retry attempts reached (3)");
  PQclear(r);

  r = exec_ok(db, q_disconnected);
  assert_int_equal(PQntuples(r), 2);
  PQclear(r);

  ccm_db_close(db);
  db = saved;
  drop_database(name);
}

/* Two migrations started at the same moment on a fresh database, each with
 * its own connection: both succeed, the schema is applied exactly once. */
struct racer {
  const char *dbname;
  pthread_barrier_t *barrier;
  PGconn *conn;
  int rc;
  char *out;
  size_t outlen;
};

static void *race(void *arg) {
  struct racer *r = arg;
  FILE *f = open_memstream(&r->out, &r->outlen);
  pthread_barrier_wait(r->barrier);
  r->rc = f != NULL ? ccm_migrate_apply(r->conn, f) : CCM_ENOMEM;
  if (f != NULL) fclose(f);
  return NULL;
}

static void test_concurrent_apply(void **state) {
  (void)state;
  require_db();
  for (int round = 0; round < 3; round++) {
    char name[80];
    snprintf(name, sizeof name, "%s_c%d", scratch, round);
    create_database(name);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct racer r[2];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 2; i++) {
      r[i].dbname = name;
      r[i].barrier = &barrier;
      r[i].conn = app_connect(name); /* connected before the start signal */
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);

    int applied = 0, nothing = 0;
    for (int i = 0; i < 2; i++) {
      if (r[i].rc != CCM_OK) {
        fail_msg("round %d: concurrent ccm_migrate_apply %d failed: %s", round, i,
                 ccm_error_name(r[i].rc));
      }
      if (r[i].out != NULL && strstr(r[i].out, "Applying 0001_initial... OK") != NULL) applied++;
      if (r[i].out != NULL && strstr(r[i].out, "No migrations to apply.") != NULL) nothing++;
    }
    assert_int_equal(applied, 1);
    assert_int_equal(nothing, 1);
    assert_int_equal(query_ll(r[0].conn, "SELECT count(*) FROM schema_migrations"),
                     (long long)ccm_migrations_count);
    assert_int_equal(query_ll(r[1].conn,
                              "SELECT count(*) FROM pg_views WHERE viewname ="
                              " 'calls_concurrencycontrol'"),
                     1);
    /* And a third run finds nothing to do. */
    assert_int_equal(ccm_migrate_apply(r[1].conn, NULL), CCM_OK);
    for (int i = 0; i < 2; i++) {
      ccm_db_close(r[i].conn);
      free(r[i].out);
    }
    drop_database(name);
  }
}

/* A failed migration leaves nothing behind (one transaction). */
static void test_failure_rolls_back(void **state) {
  (void)state;
  require_db();
  char name[80];
  snprintf(name, sizeof name, "%s_f", scratch);
  create_database(name);
  PGconn *c = app_connect(name);
  /* A table in the way makes 0001_initial fail half-way. */
  exec_discard(c, "CREATE TABLE calls_dlqentry (x int)");
  int rc = ccm_migrate_apply(c, NULL);
  assert_int_not_equal(rc, CCM_OK);
  assert_int_equal(query_ll(c, "SELECT count(*) FROM pg_tables WHERE tablename = 'calls_campaign'"),
                   0);
  assert_int_equal(
      query_ll(c, "SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'"), 0);
  /* The connection is usable afterwards (no transaction left open). */
  assert_int_equal(PQtransactionStatus(c), PQTRANS_IDLE);
  exec_discard(c, "DROP TABLE calls_dlqentry");
  assert_int_equal(ccm_migrate_apply(c, NULL), CCM_OK);
  assert_int_equal(query_ll(c, "SELECT count(*) FROM schema_migrations"),
                   (long long)ccm_migrations_count);
  ccm_db_close(c);
  drop_database(name);
}

/* Regression (fixed): db/ccm_db.c line 36 (ccm_db_connect): `PQsetNoticeProcessor(conn,
 * NULL, NULL)` is meant to silence server NOTICEs, but libpq ignores a NULL
 * processor ("no action is taken"), so libpq's default processor still
 * prints every NOTICE raw to stderr: e.g. each `ccm migrate` after the first
 * prints "NOTICE:  relation "schema_migrations" already exists, skipping",
 * outside the log format of SPEC 10. Expected: nothing on stderr. */
/* ccm_db_exec prepares a statement with parameters once per connection,
 * prepares again on a new backend (after a reset), never breaks a
 * transaction, and past its cache limit runs statements unprepared. */
static long long prepared_count(PGconn *conn, const char *sql_like) {
  const char *params[] = {sql_like};
  PGresult *r =
      PQexecParams(conn, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE $1", 1,
                   NULL, params, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  long long n = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return n;
}

static void expect_sum(PGconn *conn, const char *sql, const char *arg, const char *want) {
  const char *params[] = {arg};
  PGresult *r = NULL;
  assert_int_equal(ccm_db_exec(conn, sql, 1, params, &r), CCM_OK);
  assert_string_equal(PQgetvalue(r, 0, 0), want);
  PQclear(r);
}

static void test_prepared_statements(void **state) {
  (void)state;
  require_db();
  static const char sql[] = "SELECT $1::int + 1 /* ccm prepared test */";
  expect_sum(db, sql, "41", "42");
  expect_sum(db, sql, "1", "2");
  assert_int_equal(prepared_count(db, "%ccm prepared test%"), 1);

  /* In an aborted transaction the statement fails like any other and the
   * connection recovers after ROLLBACK. */
  exec_discard(db, "BEGIN");
  PQclear(PQexec(db, "SELECT 1/0"));
  static const char other[] = "SELECT $1::int * 2 /* ccm prepared test 2 */";
  const char *params[] = {"21"};
  assert_int_not_equal(ccm_db_exec(db, other, 1, params, NULL), CCM_OK);
  exec_discard(db, "ROLLBACK");
  expect_sum(db, other, "21", "42");
  /* Inside a healthy transaction a first use prepares and runs it. */
  static const char third[] = "SELECT $1::int - 1 /* ccm prepared test 3 */";
  exec_discard(db, "BEGIN");
  expect_sum(db, third, "43", "42");
  exec_discard(db, "COMMIT");
  assert_int_equal(prepared_count(db, "%ccm prepared test 3%"), 1);

  /* A new backend knows nothing: the statement is prepared again. */
  int pid = PQbackendPID(db);
  PQreset(db);
  assert_int_equal(PQstatus(db), CONNECTION_OK);
  assert_int_not_equal(PQbackendPID(db), pid);
  assert_int_equal(prepared_count(db, "%ccm prepared test%"), 0);
  expect_sum(db, sql, "9", "10");
  assert_int_equal(prepared_count(db, "%ccm prepared test%"), 1);

  /* More distinct statements than the cache holds: all still run. */
  for (int i = 0; i < 300; i++) {
    char text[128], want[16];
    snprintf(text, sizeof text, "SELECT $1::int + %d /* ccm many %d */", i, i);
    snprintf(want, sizeof want, "%d", 5 + i);
    expect_sum(db, text, "5", want);
  }
  long long many = prepared_count(db, "%ccm many%");
  assert_true(many > 0 && many < 300);
}

/* A connection whose backend went away while idle (PostgreSQL restarted,
 * or an administrator terminated it) is reconnected before the next
 * statement, which then succeeds instead of failing once. */
static void test_reconnects_after_backend_terminated(void **state) {
  (void)state;
  require_db();
  int pid = PQbackendPID(db);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d)", pid);
  exec_discard(admin, sql);
  snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
  for (int i = 0; i < 250; i++) {
    PGresult *r = exec_ok(admin, sql);
    bool gone = strcmp(PQgetvalue(r, 0, 0), "0") == 0;
    PQclear(r);
    if (gone) break;
    usleep(20 * 1000);
  }
  expect_sum(db, "SELECT $1::int + 1 /* ccm prepared test */", "1", "2");
  assert_int_not_equal(PQbackendPID(db), pid);
}

static void test_no_stray_notices(void **state) {
  (void)state;
  require_db();
  /* A connection made by ccm_db_connect (never the test's own helper). */
  PGconn *c = NULL;
  if (cfg.database_url == NULL) {
    c = app_connect(scratch);
  } else {
    char err[512] = "";
    if (ccm_db_connect(&cfg, &c, err, sizeof err) != CCM_OK) fail_msg("ccm_db_connect: %s", err);
  }
  char path[128];
  snprintf(path, sizeof path, "%s/stderr.txt", log_dir);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  assert_true(saved >= 0 && fd >= 0);
  dup2(fd, STDERR_FILENO);
  close(fd);
  int rc = ccm_db_exec_simple(c, "DO $$ BEGIN RAISE NOTICE 'ccm test notice'; END $$");
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  ccm_db_close(c);
  assert_int_equal(rc, CCM_OK);
  char text[1024] = "";
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  unlink(path);
  text[n] = '\0';
  if (n > 0) fail_msg("stray output on stderr: %s", text);
}

/* ----------------------------------------------------------- fixtures --- */

static void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  struct dirent *e;
  char path[512];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

static int group_setup(void **state) {
  (void)state;
  /* Logs of the code under test go to a temporary folder. */
  snprintf(log_dir, sizeof log_dir, "/tmp/ccm-test-migrate-log-XXXXXX");
  if (mkdtemp(log_dir) == NULL) return -1;
  ccm_log_open(log_dir, CCM_LOG_WARNING);
  cfg_loaded = ccm_config_load(&cfg, cfg_error, sizeof cfg_error) == CCM_OK;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  if (db != NULL) ccm_db_close(db);
  db = NULL;
  for (int i = 0; i < created_count; i++) drop_database(created[i]);
  if (admin != NULL) ccm_db_close(admin);
  admin = NULL;
  ccm_config_free(&cfg);
  ccm_log_close();
  rm_rf(log_dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_postgres_reachable),
      cmocka_unit_test(test_show_before_apply),
      cmocka_unit_test(test_apply_twice),
      cmocka_unit_test(test_tables_and_columns),
      cmocka_unit_test(test_indexes),
      cmocka_unit_test(test_one_active_call_per_phone),
      cmocka_unit_test(test_calllog_constraints),
      cmocka_unit_test(test_phonenumber_unique),
      cmocka_unit_test(test_seed_monitoring_queries),
      cmocka_unit_test(test_concurrent_apply),
      cmocka_unit_test(test_failure_rolls_back),
      cmocka_unit_test(test_no_stray_notices),
      cmocka_unit_test(test_prepared_statements),
      cmocka_unit_test(test_reconnects_after_backend_terminated),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
