/* Administrative subcommands: check, migrate, showmigrations. */
#include <stdio.h>
#include <string.h>

#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_migrate.h"
#include "ccm_redis.h"
#include "ccm_rules.h"

#define CHECK_TIMEOUT_MS 5000

static int open_db(const struct ccm_config *cfg, const char *cmd, PGconn **conn) {
  char err[512];
  int rc = ccm_db_connect(cfg, conn, err, sizeof err);
  if (rc != CCM_OK) {
    fprintf(stderr, "ccm %s: cannot connect to PostgreSQL: %s\n", cmd, err);
    ccm_error("ccm.db", "cannot connect to PostgreSQL: %s", err);
  }
  return rc;
}

int ccm_cmd_migrate(int argc, char **argv) {
  (void)argc;
  (void)argv;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "migrate");
  PGconn *conn = NULL;
  if (exit_code == CCM_EXIT_OK && open_db(&cfg, "migrate", &conn) != CCM_OK) {
    exit_code = CCM_EXIT_FAILURE;
  }
  if (exit_code == CCM_EXIT_OK) {
    printf("Operations to perform:\n  Apply all migrations: calls\nRunning migrations:\n");
    int rc = ccm_migrate_apply(conn, stdout);
    if (rc != CCM_OK) {
      fprintf(stderr, "ccm migrate: failed (%s), nothing applied\n", ccm_error_name(rc));
      exit_code = CCM_EXIT_FAILURE;
    }
  }
  if (conn != NULL) ccm_db_close(conn);
  ccm_config_free(&cfg);
  return exit_code;
}

int ccm_cmd_showmigrations(int argc, char **argv) {
  (void)argc;
  (void)argv;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "showmigrations");
  PGconn *conn = NULL;
  if (exit_code == CCM_EXIT_OK && open_db(&cfg, "showmigrations", &conn) != CCM_OK) {
    exit_code = CCM_EXIT_FAILURE;
  }
  if (exit_code == CCM_EXIT_OK && ccm_migrate_show(conn, stdout) != CCM_OK) {
    exit_code = CCM_EXIT_FAILURE;
  }
  if (conn != NULL) ccm_db_close(conn);
  ccm_config_free(&cfg);
  return exit_code;
}

static int check_postgres(const struct ccm_config *cfg, char *detail, size_t len) {
  PGconn *conn = NULL;
  int rc = ccm_db_connect(cfg, &conn, detail, len);
  if (rc != CCM_OK) return rc;
  PGresult *res = NULL;
  rc = ccm_db_exec(conn, "SELECT count(*) FROM schema_migrations", 0, NULL, &res);
  if (rc != CCM_OK) {
    snprintf(detail, len, "connected, but the schema is missing: run 'ccm migrate'");
  } else if (ccm_db_get_ll(res, 0, 0) < (long long)ccm_migrations_count) {
    snprintf(detail, len, "connected, but %lld of %zu migrations applied: run 'ccm migrate'",
             ccm_db_get_ll(res, 0, 0), ccm_migrations_count);
    rc = CCM_EPRECOND;
  } else {
    snprintf(detail, len, "%s:%s/%s, schema up to date", PQhost(conn), PQport(conn), PQdb(conn));
  }
  PQclear(res);
  ccm_db_close(conn);
  return rc;
}

static int check_redis(const struct ccm_config *cfg, char *detail, size_t len) {
  redisContext *c = NULL;
  int rc = ccm_redis_connect(cfg, CHECK_TIMEOUT_MS, &c, detail, len);
  if (rc != CCM_OK) return rc;
  redisReply *r = redisCommand(c, "PING");
  if (r == NULL || r->type == REDIS_REPLY_ERROR) {
    snprintf(detail, len, "PING failed");
    rc = CCM_EUNAVAILABLE;
  } else {
    struct ccm_redis_target t;
    ccm_redis_parse_url(cfg->redis_url, &t);
    snprintf(detail, len, "%s:%d db %d, PONG", t.host, t.port, t.db);
    memset(t.password, 0, sizeof t.password);
  }
  if (r != NULL) freeReplyObject(r);
  redisFree(c);
  return rc;
}

static int check_kafka(const struct ccm_config *cfg, char *detail, size_t len) {
  int rc = ccm_kafka_check(cfg, CHECK_TIMEOUT_MS, detail, len);
  if (rc == CCM_OK) snprintf(detail, len, "%s", cfg->kafka_bootstrap_servers);
  return rc;
}

static int check_rules(const struct ccm_config *cfg, char *detail, size_t len) {
  struct ccm_rules *rules = NULL;
  char err[CCM_RULES_ERR_MAX];
  int rc = ccm_rules_load_file(cfg->retry_config_path, &rules, err, sizeof err);
  if (rc != CCM_OK) {
    snprintf(detail, len, "%s: %s", cfg->retry_config_path, err);
    return rc;
  }
  snprintf(detail, len, "%s (time zone %s, %zu warning(s))", cfg->retry_config_path,
           ccm_rules_timezone(rules), ccm_rules_warning_count(rules));
  for (size_t i = 0; i < ccm_rules_warning_count(rules); i++) {
    ccm_warn("ccm.check", "retry rules: %s", ccm_rules_warning(rules, i));
  }
  ccm_rules_destroy(rules);
  return CCM_OK;
}

int ccm_cmd_check(int argc, char **argv) {
  (void)argc;
  (void)argv;
  struct ccm_config cfg;
  int setup = ccm_cli_setup(&cfg, "check");
  if (setup != CCM_EXIT_OK) {
    printf("configuration: FAILED\n");
    ccm_config_free(&cfg);
    return CCM_EXIT_FAILURE;
  }
  printf("configuration: OK\n");
  struct {
    const char *name;
    int (*run)(const struct ccm_config *, char *, size_t);
  } checks[] = {{"PostgreSQL", check_postgres},
                {"Redis", check_redis},
                {"Kafka", check_kafka},
                {"retry rules", check_rules}};
  char failed[256] = "";
  for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
    char detail[768] = "";
    int rc = checks[i].run(&cfg, detail, sizeof detail);
    printf("%s: %s (%s)\n", checks[i].name, rc == CCM_OK ? "OK" : "FAILED", detail);
    if (rc != CCM_OK) {
      ccm_error("ccm.check", "%s check failed: %s", checks[i].name, detail);
      size_t used = strlen(failed);
      snprintf(failed + used, sizeof failed - used, "%s%s", used > 0 ? ", " : "", checks[i].name);
    }
  }
  ccm_config_free(&cfg);
  if (failed[0] != '\0') {
    fprintf(stderr, "ccm check: failed: %s\n", failed);
    return CCM_EXIT_FAILURE;
  }
  printf("System check identified no issues.\n");
  return CCM_EXIT_OK;
}
