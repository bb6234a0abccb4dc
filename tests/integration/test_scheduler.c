/* Integration tests for scheduler/ccm_scheduler (claims of due retries,
 * batch and per-pass limits, the concurrency limit, the stale sweep, slot
 * reconciliation after a Redis outage, two schedulers racing) and
 * scheduler/ccm_metrics (generate-metrics), against the real PostgreSQL and
 * Redis of the test stack. Connection settings come from the environment
 * exactly as the application reads them (ccm_config_load); the database
 * must be migrated (`ccm migrate`).
 *
 * Rows are private: each test has its own campaign (the scheduler is scoped
 * to it), call ids start with tsched_<pid>_ and phone numbers with a random
 * prefix; all of them are deleted at the end. Slots live under a private
 * REDIS_CONCURRENCY_KEY (test_sched_<pid>), deleted at the end.
 *
 * Without a reachable PostgreSQL or Redis every test FAILS (never skips). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_config.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_metrics.h"
#include "ccm_redis.h"
#include "ccm_rules.h"
#include "ccm_scheduler.h"
#include "ccm_slots.h"

#define MAX_CAMPAIGNS 32
#define RACE_CALLS 1000

static struct ccm_config cfg;
static bool cfg_loaded;
static char cfg_error[512];
static PGconn *db;
static redisContext *redis;
static char unreachable[1024]; /* why PostgreSQL / Redis could not be used */
static char log_dir[64];
static char key[64];          /* REDIS_CONCURRENCY_KEY */
static char id_prefix[64];    /* call ids: tsched_<pid> */
static char phone_prefix[16]; /* +1 and 5 random digits */
static int phone_seq;
static long long campaigns[MAX_CAMPAIGNS];
static int campaign_count;
static int saved_limit;
static bool saved_limit_set;
static int saved_stale;

/* ------------------------------------------------------------- helpers --- */

static void require_servers(void) {
  if (db == NULL || redis == NULL) {
    fail_msg("PostgreSQL/Redis of the test stack not usable: %s",
             unreachable[0] != '\0' ? unreachable : "see test_servers_reachable");
  }
}

/* Runs a parameterised statement and fails the test unless it succeeds. */
static PGresult *sql(const char *query, int n, const char *const *params) {
  PGresult *r = PQexecParams(db, query, n, NULL, params, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", PQresultErrorMessage(r));
    PQclear(r);
    fail_msg("SQL failed: %.160s: %s", query, msg);
  }
  return r;
}

static void sql_do(const char *query, int n, const char *const *params) {
  PQclear(sql(query, n, params));
}

/* Returns the first cell as an integer (-1 when there is no row). */
static long long sql_ll(const char *query, int n, const char *const *params) {
  PGresult *r = sql(query, n, params);
  long long v = PQntuples(r) > 0 ? ccm_db_get_ll(r, 0, 0) : -1;
  PQclear(r);
  return v;
}

static long long create_campaign(const char *tag) {
  char name[128];
  snprintf(name, sizeof name, "%s_%s", id_prefix, tag);
  const char *p[] = {name};
  long long id = sql_ll("INSERT INTO calls_campaign (name) VALUES ($1) RETURNING id", 1, p);
  assert_true(id > 0);
  assert_true(campaign_count < MAX_CAMPAIGNS);
  campaigns[campaign_count++] = id;
  return id;
}

/* Inserts count calls <id_prefix>_<tag>_<1..count> with their attempt rows
 * 1..attempts (earlier ones DISCONNECTED, the last one in the call's
 * status). next_retry_at = now() + next_retry - g seconds and
 * last_attempt_at = now() + last_attempt (NULL intervals: NULL). */
static void insert_calls(long long campaign, const char *tag, int count, const char *status,
                         int attempts, const char *next_retry, const char *last_attempt) {
  char prefix[96], camp[32], seq[16], att[16], n[16];
  snprintf(prefix, sizeof prefix, "%s_%s", id_prefix, tag);
  snprintf(camp, sizeof camp, "%lld", campaign);
  snprintf(seq, sizeof seq, "%d", phone_seq);
  snprintf(att, sizeof att, "%d", attempts);
  snprintf(n, sizeof n, "%d", count);
  phone_seq += count;
  const char *p[] = {prefix, camp, phone_prefix, seq, status, att, next_retry, last_attempt, n};
  sql_do(
      "WITH c AS (INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status, "
      "attempt_count, max_attempts, next_retry_at, last_attempt_at) "
      "SELECT $1 || '_' || g, $2::bigint, $3 || lpad(($4::int + g)::text, 6, '0'), $5, $6::int, "
      "10, now() + $7::interval - make_interval(secs => g), now() + $8::interval "
      "FROM generate_series(1, $9::int) g RETURNING call_id, attempt_count, status) "
      "INSERT INTO calls_callattempt (call_id, attempt, status) "
      "SELECT c.call_id, a, CASE WHEN a < c.attempt_count THEN 'DISCONNECTED' ELSE c.status END "
      "FROM c, generate_series(1, c.attempt_count) a",
      9, p);
}

static void call_id_of(const char *tag, int g, char *out, size_t len) {
  snprintf(out, len, "%s_%s_%d", id_prefix, tag, g);
}

/* The call's status, attempt_count and whether next_retry_at and
 * last_attempt_at are NULL ("t"/"f"). */
struct call_row {
  char status[16];
  int attempt_count;
  bool next_retry_null, last_attempt_null;
  char error_message[128];
};

static struct call_row get_call(const char *call_id) {
  const char *p[] = {call_id};
  PGresult *r =
      sql("SELECT status, attempt_count, next_retry_at IS NULL, last_attempt_at IS NULL, "
          "coalesce(error_message, '') FROM calls_calllog WHERE call_id = $1",
          1, p);
  if (PQntuples(r) != 1) {
    PQclear(r);
    fail_msg("call %s not found", call_id);
  }
  struct call_row c;
  snprintf(c.status, sizeof c.status, "%s", PQgetvalue(r, 0, 0));
  c.attempt_count = (int)ccm_db_get_ll(r, 0, 1);
  c.next_retry_null = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
  c.last_attempt_null = strcmp(PQgetvalue(r, 0, 3), "t") == 0;
  snprintf(c.error_message, sizeof c.error_message, "%s", PQgetvalue(r, 0, 4));
  PQclear(r);
  return c;
}

/* Returns the status of attempt n of call_id ("" when absent). */
static void attempt_status(const char *call_id, int n, char out[16]) {
  char num[16];
  snprintf(num, sizeof num, "%d", n);
  const char *p[] = {call_id, num};
  PGresult *r =
      sql("SELECT status FROM calls_callattempt WHERE call_id = $1 AND attempt = $2::int", 2, p);
  snprintf(out, 16, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
  PQclear(r);
}

static long long today_metric(const char *column) {
  char q[256];
  snprintf(q, sizeof q,
           "SELECT coalesce((SELECT %s FROM calls_callmetrics "
           "WHERE date = (now() AT TIME ZONE 'UTC')::date), 0)",
           column);
  return sql_ll(q, 0, NULL);
}

static long long slot_count(void) {
  long long n = -1;
  assert_int_equal(ccm_slots_count(redis, &cfg, &n), CCM_OK);
  return n;
}

/* True when some attempt of the call holds a slot (members are
 * "<call_id>:<attempt>"). */
static bool holds_slot(const char *call_id) {
  char **members = NULL;
  size_t n = 0;
  assert_int_equal(ccm_slots_members(redis, &cfg, &members, &n), CCM_OK);
  size_t len = strlen(call_id);
  bool yes = false;
  for (size_t i = 0; i < n; i++) {
    if (strncmp(members[i], call_id, len) == 0 && members[i][len] == ':') yes = true;
    free(members[i]);
  }
  free(members);
  return yes;
}

static void clear_slots(void) {
  if (redis == NULL) return;
  char set[128];
  snprintf(set, sizeof set, "%s:slots", key);
  redisReply *r = redisCommand(redis, "DEL %s %s", key, set);
  if (r != NULL) freeReplyObject(r);
}

static struct ccm_rules *rules_from(const char *yaml) {
  struct ccm_rules *rules = NULL;
  char err[CCM_RULES_ERR_MAX];
  int rc = ccm_rules_load_string(yaml, strlen(yaml), &rules, err, sizeof err);
  if (rc != CCM_OK) fail_msg("test rules rejected: %s", err);
  return rules;
}

static struct ccm_rules *rules_with(int batch_size, int max_retries) {
  char yaml[512];
  snprintf(yaml, sizeof yaml,
           "global_rules: []\nscheduler:\n  batch_size: %d\n  max_concurrent_retries: %d\n",
           batch_size, max_retries);
  return rules_from(yaml);
}

static struct ccm_scheduler *new_scheduler(const struct ccm_rules *rules, long long campaign) {
  struct ccm_scheduler *s = NULL;
  assert_int_equal(ccm_scheduler_create(&cfg, rules, &s), CCM_OK);
  ccm_scheduler_set_campaign_scope(s, campaign);
  return s;
}

/* Returns true when the file in log_dir contains text. */
static bool log_contains(const char *file, const char *text) {
  char path[128];
  snprintf(path, sizeof path, "%s/%s", log_dir, file);
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, text) != NULL;
  fclose(f);
  return found;
}

/* Decodes the one outbox event of call_id; fails unless there is exactly
 * one on the initiate topic. Caller frees it. */
static Callmanager__Events__V1__InitiateCallEvent *outbox_event(const char *call_id) {
  const char *p[] = {call_id};
  PGresult *r = sql("SELECT topic, payload FROM calls_outbox WHERE message_key = $1", 1, p);
  if (PQntuples(r) != 1) {
    int n = PQntuples(r);
    PQclear(r);
    fail_msg("call %s has %d outbox rows, expected 1", call_id, n);
  }
  assert_string_equal(PQgetvalue(r, 0, 0), cfg.topic_initiate);
  size_t len = 0;
  unsigned char *bytes = PQunescapeBytea((const unsigned char *)PQgetvalue(r, 0, 1), &len);
  PQclear(r);
  assert_non_null(bytes);
  Callmanager__Events__V1__InitiateCallEvent *ev =
      callmanager__events__v1__initiate_call_event__unpack(NULL, len, bytes);
  PQfreemem(bytes);
  assert_non_null(ev);
  return ev;
}

/* Every test starts from an empty private slot set and the configured
 * limits; the test's changes to cfg are undone afterwards. */
static int test_setup(void **state) {
  (void)state;
  clear_slots();
  saved_limit = cfg.max_concurrent_calls;
  saved_limit_set = cfg.max_concurrent_calls_set;
  saved_stale = cfg.stale_timeout_seconds;
  return 0;
}

static int test_teardown(void **state) {
  (void)state;
  cfg.max_concurrent_calls = saved_limit;
  cfg.max_concurrent_calls_set = saved_limit_set;
  cfg.stale_timeout_seconds = saved_stale;
  clear_slots();
  return 0;
}

/* --------------------------------------------------------------- tests --- */

static void test_servers_reachable(void **state) {
  (void)state;
  if (!cfg_loaded) fail_msg("configuration invalid: %s", cfg_error);
  require_servers();
  assert_true(sql_ll("SELECT count(*) FROM schema_migrations", 0, NULL) > 0);
}

static void test_limits_precedence(void **state) {
  (void)state;
  require_servers();
  struct ccm_rules *yaml = rules_from(
      "global_rules: []\ndefaults:\n  concurrent_call_limit: 7\n"
      "scheduler:\n  check_interval_minutes: 3\n  batch_size: 11\n  max_concurrent_retries: 13\n");
  struct ccm_scheduler_limits lim;
  struct ccm_config c = cfg; /* shallow copy: only flags and numbers change */
  c.max_concurrent_calls = 100;
  c.max_concurrent_calls_set = false;
  c.scheduler_interval_seconds = 60;
  c.scheduler_interval_set = false;
  ccm_scheduler_limits(&c, yaml, &lim);
  assert_int_equal(lim.max_concurrent_calls, 7);
  assert_int_equal(lim.interval_seconds, 180);
  assert_int_equal(lim.batch_size, 11);
  assert_int_equal(lim.max_concurrent_retries, 13);
  c.max_concurrent_calls = 5;
  c.max_concurrent_calls_set = true;
  c.scheduler_interval_seconds = 2;
  c.scheduler_interval_set = true;
  ccm_scheduler_limits(&c, yaml, &lim);
  assert_int_equal(lim.max_concurrent_calls, 5);
  assert_int_equal(lim.interval_seconds, 2);
  c.max_concurrent_calls_set = false;
  c.max_concurrent_calls = 100;
  ccm_scheduler_limits(&c, NULL, &lim);
  assert_int_equal(lim.max_concurrent_calls, 100);
  assert_int_equal(lim.batch_size, 100);
  assert_int_equal(lim.max_concurrent_retries, 50);
  ccm_rules_destroy(yaml);
}

static void test_claims_due_calls(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("claim");
  insert_calls(campaign, "claim_d", 3, "DISCONNECTED", 1, "-1 minute", "-2 hours");
  insert_calls(campaign, "claim_r", 2, "RNR", 2, "-1 second", "-2 hours");
  insert_calls(campaign, "claim_later", 2, "DISCONNECTED", 1, "1 hour", "-2 hours");
  insert_calls(campaign, "claim_none", 1, "RNR", 1, NULL, "-2 hours");
  long long retries_before = today_metric("total_retries");
  struct ccm_rules *rules = rules_with(2, 50); /* three transactions */
  struct ccm_scheduler *s = new_scheduler(rules, campaign);
  struct ccm_scheduler_report rep;
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 5);
  assert_int_equal(rep.stale, 0);
  assert_false(rep.at_capacity);
  assert_false(rep.reconciled);
  assert_true(rep.peak >= 5);

  char campaign_name[128];
  snprintf(campaign_name, sizeof campaign_name, "%s_claim", id_prefix);
  const char *tags[] = {"claim_d", "claim_r"};
  const int counts[] = {3, 2}, before[] = {1, 2};
  for (int t = 0; t < 2; t++) {
    for (int g = 1; g <= counts[t]; g++) {
      char id[128], st[16];
      call_id_of(tags[t], g, id, sizeof id);
      struct call_row c = get_call(id);
      assert_string_equal(c.status, "RETRYING");
      assert_int_equal(c.attempt_count, before[t] + 1);
      assert_true(c.next_retry_null);
      assert_true(c.last_attempt_null); /* set by the relay at publication */
      attempt_status(id, before[t] + 1, st);
      assert_string_equal(st, "RETRYING");
      Callmanager__Events__V1__InitiateCallEvent *ev = outbox_event(id);
      assert_string_equal(ev->call_id, id);
      assert_int_equal(ev->attempt, before[t] + 1);
      assert_int_equal(ev->campaign_id, campaign);
      assert_string_equal(ev->campaign_name, campaign_name);
      assert_int_equal(strncmp(ev->phone_number, phone_prefix, strlen(phone_prefix)), 0);
      assert_true(ev->created_at_ms > 0);
      callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
      assert_true(holds_slot(id));
      char line[192];
      snprintf(line, sizeof line, "calls.scheduler - Retrying call %s (attempt %d)", id,
               before[t] + 1);
      assert_true(log_contains("calls.log", line));
      assert_true(log_contains("app.log", line));
    }
  }
  for (int g = 1; g <= 2; g++) {
    char id[128];
    call_id_of("claim_later", g, id, sizeof id);
    struct call_row c = get_call(id);
    assert_string_equal(c.status, "DISCONNECTED");
    assert_int_equal(c.attempt_count, 1);
    assert_false(c.next_retry_null);
    assert_false(holds_slot(id));
  }
  char id[128];
  call_id_of("claim_none", 1, id, sizeof id);
  assert_string_equal(get_call(id).status, "RNR");
  assert_int_equal(slot_count(), 5);
  /* At least: other schedulers (another test run) may count retries today too. */
  assert_true(today_metric("total_retries") - retries_before >= 5);
  assert_true(today_metric("peak_concurrent_calls") >= 5);

  /* Nothing more is due. */
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 0);
  ccm_scheduler_destroy(s);
  ccm_rules_destroy(rules);
}

static void test_batch_and_per_pass_limit(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("batch");
  insert_calls(campaign, "batch", 12, "DISCONNECTED", 1, "-1 minute", NULL);
  struct ccm_rules *rules = rules_with(5, 7);
  struct ccm_scheduler *s = new_scheduler(rules, campaign);
  struct ccm_scheduler_report rep;
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 7);
  /* The most overdue first: next_retry_at = now - 1 min - g s. */
  for (int g = 1; g <= 12; g++) {
    char id[128];
    call_id_of("batch", g, id, sizeof id);
    assert_string_equal(get_call(id).status, g >= 6 ? "RETRYING" : "DISCONNECTED");
  }
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 5);
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 0);
  char camp[32];
  snprintf(camp, sizeof camp, "%lld", campaign);
  const char *p[] = {camp};
  assert_int_equal(sql_ll("SELECT count(*) FROM calls_calllog WHERE campaign_id = $1::bigint "
                          "AND status = 'RETRYING' AND attempt_count = 2",
                          1, p),
                   12);
  ccm_scheduler_destroy(s);
  ccm_rules_destroy(rules);
}

static void test_concurrency_limit(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("limit");
  insert_calls(campaign, "limit", 10, "RNR", 1, "-5 minutes", NULL);
  cfg.max_concurrent_calls = 5;
  cfg.max_concurrent_calls_set = true;
  long long count = 0;
  const char *others[] = {"test_other_1", "test_other_2", "test_other_3"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(ccm_slots_acquire(redis, &cfg, others[i], 1, 5, &count), CCM_OK);
  }
  struct ccm_rules *rules = rules_with(100, 50);
  struct ccm_scheduler *s = new_scheduler(rules, campaign);
  struct ccm_scheduler_report rep;
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK); /* full is not a failure */
  assert_int_equal(rep.claimed, 2);
  assert_true(rep.at_capacity);
  assert_int_equal(slot_count(), 5);
  char camp[32];
  snprintf(camp, sizeof camp, "%lld", campaign);
  const char *p[] = {camp};
  const char *waiting =
      "SELECT count(*) FROM calls_calllog WHERE campaign_id = $1::bigint AND status = 'RNR' "
      "AND next_retry_at IS NOT NULL AND attempt_count = 1";
  assert_int_equal(sql_ll(waiting, 1, p), 8);
  /* Still full: nothing claimed. */
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 0);
  assert_true(rep.at_capacity);
  /* Three slots are given back: three more calls go. */
  for (int i = 0; i < 3; i++)
    assert_int_equal(ccm_slots_release(redis, &cfg, others[i], 1), CCM_OK);
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.claimed, 3);
  assert_int_equal(slot_count(), 5);
  assert_int_equal(sql_ll(waiting, 1, p), 5);
  assert_int_equal(sql_ll("SELECT count(*) FROM calls_outbox WHERE message_key IN "
                          "(SELECT call_id FROM calls_calllog WHERE campaign_id = $1::bigint)",
                          1, p),
                   5);
  ccm_scheduler_destroy(s);
  ccm_rules_destroy(rules);
}

static void test_stale_sweep(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("stale");
  cfg.stale_timeout_seconds = 60;
  insert_calls(campaign, "stale_old", 1, "INITIATED", 1, NULL, "-2 hours");
  insert_calls(campaign, "stale_proc", 1, "PROCESSING", 2, NULL, "-2 hours");
  insert_calls(campaign, "stale_unsent", 1, "INITIATED", 1, NULL, NULL);
  insert_calls(campaign, "stale_retrying", 1, "RETRYING", 2, NULL, NULL);
  insert_calls(campaign, "stale_recent", 1, "RETRYING", 2, NULL, "-10 seconds");
  insert_calls(campaign, "stale_waiting", 1, "DISCONNECTED", 1, "1 hour", "-2 hours");
  char old_id[128], proc_id[128];
  call_id_of("stale_old", 1, old_id, sizeof old_id);
  call_id_of("stale_proc", 1, proc_id, sizeof proc_id);
  long long count = 0;
  assert_int_equal(ccm_slots_acquire(redis, &cfg, old_id, 1, 100, &count), CCM_OK);
  assert_int_equal(ccm_slots_acquire(redis, &cfg, proc_id, 2, 100, &count), CCM_OK);
  long long failed_before = today_metric("total_calls_failed");
  struct ccm_scheduler *s = new_scheduler(NULL, campaign);
  struct ccm_scheduler_report rep;
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.stale, 2);
  assert_int_equal(rep.claimed, 0);
  const char *failed[] = {old_id, proc_id};
  const int attempts[] = {1, 2};
  for (int i = 0; i < 2; i++) {
    struct call_row c = get_call(failed[i]);
    assert_string_equal(c.status, "FAILED");
    assert_string_equal(c.error_message, "Stale call: no outcome received");
    assert_true(c.next_retry_null);
    char st[16];
    attempt_status(failed[i], attempts[i], st);
    assert_string_equal(st, "FAILED");
    assert_false(holds_slot(failed[i]));
    char line[192];
    snprintf(line, sizeof line, "Call %s FAILED", failed[i]);
    assert_true(log_contains("calls.log", line));
  }
  char st[16];
  attempt_status(proc_id, 1, st);
  assert_string_equal(st, "DISCONNECTED"); /* earlier attempts keep their outcome */
  const char *kept[] = {"stale_unsent", "stale_retrying", "stale_recent", "stale_waiting"};
  const char *kept_status[] = {"INITIATED", "RETRYING", "RETRYING", "DISCONNECTED"};
  for (int i = 0; i < 4; i++) {
    char id[128];
    call_id_of(kept[i], 1, id, sizeof id);
    struct call_row c = get_call(id);
    assert_string_equal(c.status, kept_status[i]);
    assert_string_equal(c.error_message, "");
  }
  assert_true(today_metric("total_calls_failed") - failed_before >= 2);
  /* Idempotent: a second pass finds nothing. */
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_int_equal(rep.stale, 0);
  ccm_scheduler_destroy(s);
}

static void test_redis_outage_and_reconcile(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("outage");
  cfg.max_concurrent_calls = 1000000; /* the reconciled set holds every call in flight */
  cfg.max_concurrent_calls_set = true;
  insert_calls(campaign, "outage_due", 1, "DISCONNECTED", 1, "-1 minute", NULL);
  insert_calls(campaign, "outage_flight", 1, "INITIATED", 1, NULL, "-1 second");
  char due[128], flight[128];
  call_id_of("outage_due", 1, due, sizeof due);
  call_id_of("outage_flight", 1, flight, sizeof flight);
  struct ccm_scheduler *s = new_scheduler(NULL, campaign);
  char *real_url = cfg.redis_url;
  cfg.redis_url = "redis://127.0.0.1:1/0"; /* nothing listens there */
  struct ccm_scheduler_report rep;
  int rc = ccm_scheduler_run_once(s, &rep);
  cfg.redis_url = real_url;
  assert_int_equal(rc, CCM_EUNAVAILABLE);
  assert_true(rep.redis_down);
  assert_int_equal(rep.claimed, 0);
  assert_string_equal(get_call(due).status, "DISCONNECTED");
  assert_false(holds_slot(flight));
  /* A slot taken by another process just before the reconciliation (its
   * call not committed yet) must survive it: the rebuild merges. */
  long long count = 0;
  assert_int_equal(ccm_slots_acquire(redis, &cfg, "concurrent_slot", 1, 1000000, &count), CCM_OK);
  /* Redis answers again: the slot set is rebuilt, then claims go on. */
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_true(rep.reconciled);
  assert_true(rep.reconciled_n >= 1);
  assert_true(holds_slot(flight));
  assert_true(holds_slot("concurrent_slot"));
  assert_int_equal(ccm_slots_release(redis, &cfg, "concurrent_slot", 1), CCM_OK);
  assert_int_equal(rep.claimed, 1);
  assert_string_equal(get_call(due).status, "RETRYING");
  assert_true(log_contains("app.log", "concurrency slots reconciled"));
  /* Only after an outage. */
  assert_int_equal(ccm_scheduler_run_once(s, &rep), CCM_OK);
  assert_false(rep.reconciled);
  ccm_scheduler_destroy(s);
}

struct racer {
  const struct ccm_rules *rules;
  long long campaign;
  int claimed;
  int passes;
  int failures;
};

static void *race(void *arg) {
  struct racer *r = arg;
  struct ccm_scheduler *s = NULL;
  if (ccm_scheduler_create(&cfg, r->rules, &s) != CCM_OK) {
    r->failures++;
    return NULL;
  }
  ccm_scheduler_set_campaign_scope(s, r->campaign);
  int idle = 0;
  while (idle < 3 && r->passes < 1000) {
    struct ccm_scheduler_report rep;
    if (ccm_scheduler_run_once(s, &rep) != CCM_OK) r->failures++;
    r->passes++;
    r->claimed += rep.claimed;
    idle = rep.claimed == 0 ? idle + 1 : 0;
  }
  ccm_scheduler_destroy(s);
  return NULL;
}

static void test_two_schedulers_race(void **state) {
  (void)state;
  require_servers();
  long long campaign = create_campaign("race");
  cfg.max_concurrent_calls = 100000;
  cfg.max_concurrent_calls_set = true;
  insert_calls(campaign, "race", RACE_CALLS, "DISCONNECTED", 1, "-1 minute", NULL);
  long long retries_before = today_metric("total_retries");
  struct ccm_rules *rules = rules_with(25, 150);
  struct racer racers[2] = {{.rules = rules, .campaign = campaign},
                            {.rules = rules, .campaign = campaign}};
  pthread_t threads[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
  assert_int_equal(racers[0].failures + racers[1].failures, 0);
  print_message("race: scheduler A claimed %d in %d passes, B %d in %d passes\n", racers[0].claimed,
                racers[0].passes, racers[1].claimed, racers[1].passes);
  assert_int_equal(racers[0].claimed + racers[1].claimed, RACE_CALLS);

  char camp[32], prefix[96];
  snprintf(camp, sizeof camp, "%lld", campaign);
  snprintf(prefix, sizeof prefix, "%s_race_%%", id_prefix);
  const char *p[] = {camp};
  assert_int_equal(sql_ll("SELECT count(*) FROM calls_calllog WHERE campaign_id = $1::bigint "
                          "AND status = 'RETRYING' AND attempt_count = 2 AND next_retry_at IS NULL",
                          1, p),
                   RACE_CALLS);
  /* Exactly one new attempt row and one outbox event per call. */
  assert_int_equal(sql_ll("SELECT count(*) FROM calls_callattempt a JOIN calls_calllog c "
                          "USING (call_id) WHERE c.campaign_id = $1::bigint AND a.attempt > 1",
                          1, p),
                   RACE_CALLS);
  assert_int_equal(sql_ll("SELECT count(*) FROM calls_callattempt a JOIN calls_calllog c "
                          "USING (call_id) WHERE c.campaign_id = $1::bigint AND a.attempt = 2 "
                          "AND a.status = 'RETRYING'",
                          1, p),
                   RACE_CALLS);
  PGresult *r =
      sql("SELECT o.message_key, o.payload FROM calls_outbox o JOIN calls_calllog c "
          "ON c.call_id = o.message_key WHERE c.campaign_id = $1::bigint ORDER BY o.id",
          1, p);
  assert_int_equal(PQntuples(r), RACE_CALLS);
  for (int i = 0; i < PQntuples(r); i++) {
    size_t len = 0;
    unsigned char *bytes = PQunescapeBytea((const unsigned char *)PQgetvalue(r, i, 1), &len);
    assert_non_null(bytes);
    Callmanager__Events__V1__InitiateCallEvent *ev =
        callmanager__events__v1__initiate_call_event__unpack(NULL, len, bytes);
    PQfreemem(bytes);
    assert_non_null(ev);
    assert_string_equal(ev->call_id, PQgetvalue(r, i, 0));
    assert_int_equal(ev->attempt, 2);
    callmanager__events__v1__initiate_call_event__free_unpacked(ev, NULL);
  }
  PQclear(r);
  assert_int_equal(sql_ll("SELECT count(DISTINCT o.message_key) FROM calls_outbox o JOIN "
                          "calls_calllog c ON c.call_id = o.message_key "
                          "WHERE c.campaign_id = $1::bigint",
                          1, p),
                   RACE_CALLS);
  assert_int_equal(slot_count(), RACE_CALLS);
  assert_true(today_metric("total_retries") - retries_before >= RACE_CALLS);
  ccm_rules_destroy(rules);
}

/* ------------------------------------------------------ generate-metrics --- */

static void test_metrics_date_validation(void **state) {
  (void)state;
  assert_true(ccm_metrics_valid_date("2024-02-29"));
  assert_true(ccm_metrics_valid_date("2025-12-31"));
  assert_false(ccm_metrics_valid_date("2023-02-29"));
  assert_false(ccm_metrics_valid_date("2025-04-31"));
  assert_false(ccm_metrics_valid_date("2025-13-01"));
  assert_false(ccm_metrics_valid_date("2025-00-10"));
  assert_false(ccm_metrics_valid_date("2025-1-01"));
  assert_false(ccm_metrics_valid_date("2025-01-01x"));
  assert_false(ccm_metrics_valid_date("abcd-ef-gh"));
  assert_false(ccm_metrics_valid_date(""));
  assert_false(ccm_metrics_valid_date(NULL));
  char *bad_date[] = {"generate-metrics", "--date", "2025-02-30"};
  assert_int_equal(ccm_cmd_generate_metrics(3, bad_date), CCM_EXIT_USAGE);
  char *bad_days[] = {"generate-metrics", "--days=0"};
  assert_int_equal(ccm_cmd_generate_metrics(2, bad_days), CCM_EXIT_USAGE);
  char *no_value[] = {"generate-metrics", "--days"};
  assert_int_equal(ccm_cmd_generate_metrics(2, no_value), CCM_EXIT_USAGE);
  char *unknown[] = {"generate-metrics", "--bogus"};
  assert_int_equal(ccm_cmd_generate_metrics(2, unknown), CCM_EXIT_USAGE);
  char *sched_unknown[] = {"scheduler", "--bogus"};
  assert_int_equal(ccm_cmd_scheduler(2, sched_unknown), CCM_EXIT_USAGE);
  if (db != NULL) {
    struct ccm_metrics_day *rows = NULL;
    size_t n = 0;
    assert_int_equal(ccm_metrics_recompute(db, "2025-02-30", 1, &rows, &n), CCM_EINVAL);
    assert_int_equal(ccm_metrics_recompute(db, NULL, 0, &rows, &n), CCM_EINVAL);
    assert_null(rows);
  }
}

/* Inserts a callback row applied at the given time. */
static void add_callback(const char *call_id, const char *result, const char *duration,
                         const char *applied_at) {
  const char *p[] = {call_id, duration, result, applied_at};
  sql_do(
      "INSERT INTO calls_callback (call_id, status, call_duration, applied_at, result) "
      "VALUES ($1, 'X', $2::int, $4::timestamptz, $3)",
      4, p);
}

static void assert_day(const struct ccm_metrics_day *got, const struct ccm_metrics_day *want) {
  assert_string_equal(got->date, want->date);
  assert_int_equal(got->initiated, want->initiated);
  assert_int_equal(got->picked, want->picked);
  assert_int_equal(got->disconnected, want->disconnected);
  assert_int_equal(got->rnr, want->rnr);
  assert_int_equal(got->failed, want->failed);
  assert_int_equal(got->retries, want->retries);
  assert_int_equal(got->peak, want->peak);
  assert_int_equal(got->call_duration, want->call_duration);
  assert_int_equal(got->dlq_entries, want->dlq_entries);
}

static void test_generate_metrics(void **state) {
  (void)state;
  require_servers();
  /* A private date in the past, D, with D-2 .. D+1 around it (4 days per
   * process id, so concurrent runs do not share dates). */
  char offset[16];
  snprintf(offset, sizeof offset, "%d", (int)(getpid() % 2500) * 4 + 2);
  const char *op[] = {offset};
  PGresult *r =
      sql("SELECT to_char(d, 'YYYY-MM-DD'), to_char(d - 1, 'YYYY-MM-DD'), "
          "to_char(d + 1, 'YYYY-MM-DD'), to_char(d - 2, 'YYYY-MM-DD') "
          "FROM (SELECT date '1995-01-01' + $1::int AS d) x",
          1, op);
  char day[CCM_METRICS_DATE_BUF], prev[CCM_METRICS_DATE_BUF], next[CCM_METRICS_DATE_BUF],
      prev2[CCM_METRICS_DATE_BUF];
  snprintf(day, sizeof day, "%s", PQgetvalue(r, 0, 0));
  snprintf(prev, sizeof prev, "%s", PQgetvalue(r, 0, 1));
  snprintf(next, sizeof next, "%s", PQgetvalue(r, 0, 2));
  snprintf(prev2, sizeof prev2, "%s", PQgetvalue(r, 0, 3));
  PQclear(r);
  const char *dates[] = {prev2, prev, day, next};
  for (int i = 0; i < 4; i++) {
    sql_do("DELETE FROM calls_callmetrics_shard WHERE date = $1::date", 1, &dates[i]);
  }
  /* Stored shards with wrong counters and a peak that must survive. */
  sql_do(
      "INSERT INTO calls_callmetrics_shard (date, shard, total_calls_initiated, "
      "peak_concurrent_calls, total_calls_picked) VALUES ($1::date, 5, 999, 7, 40), "
      "($1::date, 0, 12, 2, 3)",
      1, &dates[2]);

  long long campaign = create_campaign("metrics");
  char camp[32], c1[128], c2[128], c3[128], c4[128], c5[128], topic[96];
  snprintf(camp, sizeof camp, "%lld", campaign);
  call_id_of("m", 1, c1, sizeof c1);
  call_id_of("m", 2, c2, sizeof c2);
  call_id_of("m", 3, c3, sizeof c3);
  call_id_of("m", 4, c4, sizeof c4);
  call_id_of("m", 5, c5, sizeof c5);
  snprintf(topic, sizeof topic, "%s_topic", id_prefix);
  /* calls: id, status, error, created_at, updated_at */
  struct {
    const char *id, *status, *error, *created, *updated;
  } calls[] = {
      {c1, "PICKED", NULL, "10:00", "10:45"},
      {c2, "FAILED", "Failed to initiate external call", "10:00", "11:00"},
      {c3, "FAILED", "Stale call: no outcome received", "10:00", "12:00"},
      {c4, "FAILED", "Max retry attempts reached (3)", "-00:00:01", "09:00"},
      {c5, "PICKED", NULL, "24:00", "24:00"},
  };
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
    char phone[32];
    snprintf(phone, sizeof phone, "%s%06d", phone_prefix, ++phone_seq);
    const char *p[] = {
        calls[i].id,      camp, phone, calls[i].status, calls[i].error, calls[i].created,
        calls[i].updated, day};
    sql_do(
        "INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status, error_message, "
        "created_at, updated_at) VALUES ($1, $2::bigint, $3, $4, $5, "
        "($8::date::timestamp + $6::interval) AT TIME ZONE 'UTC', "
        "($8::date::timestamp + $7::interval) AT TIME ZONE 'UTC')",
        8, p);
  }
  /* attempts: retries are attempts > 1 created that day */
  struct {
    const char *id, *attempt, *created;
  } attempts[] = {
      {c1, "1", "10:00"},  {c1, "2", "10:30"}, {c4, "1", "-02:00"},
      {c4, "2", "-01:00"}, {c4, "3", "08:00"},
  };
  for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
    const char *p[] = {attempts[i].id, attempts[i].attempt, attempts[i].created, day};
    sql_do(
        "INSERT INTO calls_callattempt (call_id, attempt, status, created_at) "
        "VALUES ($1, $2::int, 'DISCONNECTED', ($4::date::timestamp + $3::interval) "
        "AT TIME ZONE 'UTC')",
        4, p);
  }
  char at[8][40];
  const char *times[] = {"10:45", "13:00", "14:00", "15:00", "15:30", "16:00", "09:30", "24:00"};
  for (int i = 0; i < 8; i++) {
    const char *p[] = {day, times[i]};
    PGresult *t = sql(
        "SELECT to_char(($1::date::timestamp + $2::interval), 'YYYY-MM-DD HH24:MI:SS') || '+00'", 2,
        p);
    snprintf(at[i], sizeof at[i], "%s", PQgetvalue(t, 0, 0));
    PQclear(t);
  }
  add_callback(c1, "applied:PICKED", "40", at[0]);
  add_callback(c5, "applied:PICKED", "20", at[1]);
  add_callback(c1, "applied:DISCONNECTED", "0", at[2]);
  add_callback(c1, "applied:RNR", NULL, at[3]);
  add_callback(c4, "applied:RNR", NULL, at[4]);
  add_callback(c4, "applied:FAILED", NULL, at[5]);
  add_callback(c1, "ignored_terminal", "99", at[6]);
  add_callback(c5, "applied:PICKED", "30", at[7]); /* next day */
  add_callback(c1, "applied:RNR", NULL, NULL);     /* not applied */
  /* dead letters: two that day, one the day before */
  const char *dlq[][2] = {{"1", "11:00"}, {"2", "23:59:59"}, {"3", "-00:00:01"}};
  for (int i = 0; i < 3; i++) {
    const char *p[] = {topic, dlq[i][0], dlq[i][1], day};
    sql_do(
        "INSERT INTO calls_dlqentry (original_topic, partition, \"offset\", payload, "
        "error_message, created_at) VALUES ($1, 0, $2::bigint, '\\x00', 'test', "
        "($4::date::timestamp + $3::interval) AT TIME ZONE 'UTC')",
        4, p);
  }

  struct ccm_metrics_day want[3] = {
      {.initiated = 0},
      {.initiated = 1, .retries = 1, .dlq_entries = 1},
      {.initiated = 3,
       .picked = 2,
       .disconnected = 1,
       .rnr = 2,
       .failed = 3,
       .retries = 2,
       .peak = 7,
       .call_duration = 60,
       .dlq_entries = 2},
  };
  snprintf(want[0].date, sizeof want[0].date, "%s", prev2);
  snprintf(want[1].date, sizeof want[1].date, "%s", prev);
  snprintf(want[2].date, sizeof want[2].date, "%s", day);
  for (int run = 0; run < 2; run++) { /* idempotent */
    struct ccm_metrics_day *rows = NULL;
    size_t n = 0;
    assert_int_equal(ccm_metrics_recompute(db, day, 3, &rows, &n), CCM_OK);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) assert_day(&rows[i], &want[i]);
    assert_true(rows[2].avg_call_duration > 29.99 && rows[2].avg_call_duration < 30.01);
    free(rows);
    /* What is stored is what was returned. */
    const char *p[] = {day};
    PGresult *m =
        sql("SELECT total_calls_initiated, total_calls_picked, total_calls_failed, total_retries, "
            "peak_concurrent_calls, total_call_duration, avg_call_duration, dlq_entries_created "
            "FROM calls_callmetrics WHERE date = $1::date",
            1, p);
    assert_int_equal(PQntuples(m), 1);
    assert_int_equal(ccm_db_get_ll(m, 0, 0), 3);
    assert_int_equal(ccm_db_get_ll(m, 0, 1), 2);
    assert_int_equal(ccm_db_get_ll(m, 0, 2), 3);
    assert_int_equal(ccm_db_get_ll(m, 0, 3), 2);
    assert_int_equal(ccm_db_get_ll(m, 0, 4), 7);
    assert_int_equal(ccm_db_get_ll(m, 0, 5), 60);
    assert_string_equal(PQgetvalue(m, 0, 6), "30");
    assert_int_equal(ccm_db_get_ll(m, 0, 7), 2);
    PQclear(m);
  }
  /* The next day on its own: c5 created at its midnight, one PICKED callback. */
  struct ccm_metrics_day *rows = NULL;
  size_t n = 0;
  assert_int_equal(ccm_metrics_recompute(db, next, 1, &rows, &n), CCM_OK);
  assert_int_equal(n, 1);
  struct ccm_metrics_day want_next = {.initiated = 1, .picked = 1, .call_duration = 30};
  snprintf(want_next.date, sizeof want_next.date, "%s", next);
  assert_day(&rows[0], &want_next);
  free(rows);

  for (int i = 0; i < 4; i++) {
    sql_do("DELETE FROM calls_callmetrics_shard WHERE date = $1::date", 1, &dates[i]);
  }
  const char *tp[] = {topic};
  sql_do("DELETE FROM calls_dlqentry WHERE original_topic = $1", 1, tp);
}

/* ---------------------------------------------------------------- main --- */

static int group_setup(void **state) {
  (void)state;
  snprintf(log_dir, sizeof log_dir, "/tmp/ccm-test-sched-log-XXXXXX");
  if (mkdtemp(log_dir) == NULL) return -1;
  ccm_log_open(log_dir, CCM_LOG_INFO);
  snprintf(key, sizeof key, "test_sched_%d", (int)getpid());
  setenv("REDIS_CONCURRENCY_KEY", key, 1);
  snprintf(id_prefix, sizeof id_prefix, "tsched_%d", (int)getpid());
  unsigned int rnd = 0;
  if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) rnd = (unsigned)getpid();
  snprintf(phone_prefix, sizeof phone_prefix, "+1%05u", rnd % 100000);
  cfg_loaded = ccm_config_load(&cfg, cfg_error, sizeof cfg_error) == CCM_OK;
  if (!cfg_loaded) {
    snprintf(unreachable, sizeof unreachable, "configuration invalid: %s", cfg_error);
    return 0;
  }
  char err[512] = "";
  if (ccm_db_connect(&cfg, &db, err, sizeof err) != CCM_OK) {
    snprintf(unreachable, sizeof unreachable,
             "cannot connect to PostgreSQL (DB_HOST/DB_PORT/DB_NAME): %s", err);
    db = NULL;
    return 0;
  }
  if (ccm_redis_connect(&cfg, 2000, &redis, err, sizeof err) != CCM_OK) {
    snprintf(unreachable, sizeof unreachable, "cannot connect to Redis (REDIS_URL=%s): %s",
             cfg.redis_url, err);
    redis = NULL;
    return 0;
  }
  PGresult *r = PQexec(db, "SELECT 1 FROM calls_calllog LIMIT 1");
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    snprintf(unreachable, sizeof unreachable, "database %s is not migrated (run ccm migrate)",
             cfg.db_name != NULL ? cfg.db_name : "?");
    ccm_db_close(db);
    db = NULL;
  }
  PQclear(r);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  for (int i = 0; db != NULL && i < campaign_count; i++) {
    char text[32];
    snprintf(text, sizeof text, "%lld", campaigns[i]);
    const char *p[] = {text};
    static const char *const cleanup[] = {
        "DELETE FROM calls_outbox WHERE message_key IN "
        "(SELECT call_id FROM calls_calllog WHERE campaign_id = $1::bigint)",
        "DELETE FROM calls_callback WHERE call_id IN "
        "(SELECT call_id FROM calls_calllog WHERE campaign_id = $1::bigint)",
        "DELETE FROM calls_calllog WHERE campaign_id = $1::bigint",
        "DELETE FROM calls_campaign WHERE id = $1::bigint"};
    for (size_t q = 0; q < sizeof cleanup / sizeof cleanup[0]; q++) {
      PGresult *r = PQexecParams(db, cleanup[q], 1, NULL, p, NULL, NULL, 0);
      if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        print_error("cleanup failed: %s", PQresultErrorMessage(r));
      }
      PQclear(r);
    }
  }
  clear_slots();
  if (redis != NULL) redisFree(redis);
  if (db != NULL) ccm_db_close(db);
  redis = NULL;
  db = NULL;
  ccm_config_free(&cfg);
  ccm_log_close();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", log_dir);
  if (system(cmd) != 0) print_error("could not remove %s", log_dir);
  return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_servers_reachable),          T(test_limits_precedence),
      T(test_claims_due_calls),           T(test_batch_and_per_pass_limit),
      T(test_concurrency_limit),          T(test_stale_sweep),
      T(test_redis_outage_and_reconcile), T(test_two_schedulers_race),
      T(test_metrics_date_validation),    T(test_generate_metrics),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
