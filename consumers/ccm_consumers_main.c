/* `ccm consumers` and `ccm cleanup-dlq`: the Kafka consumers, the outbox
 * relay and the DLQ consumer, each on its own thread with its own
 * connections. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_consumer.h"
#include "ccm_db.h"
#include "ccm_dlq.h"
#include "ccm_error.h"
#include "ccm_handlers.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_provider.h"
#include "ccm_rules.h"
#include "ccm_signals.h"

#define TOPIC_TIMEOUT_MS 5000

enum role { ROLE_INITIATE, ROLE_CALLBACK, ROLE_DLQ, ROLE_RELAY, ROLE_COUNT };

static const char *const role_names[ROLE_COUNT] = {"initiate", "callback", "dlq", "relay"};

struct runner {
  enum role role;
  const struct ccm_config *cfg;
  atomic_bool *stop;
  struct ccm_rules_holder *rules;
  int status;
};

static void *run_role(void *arg) {
  struct runner *r = arg;
  const struct ccm_config *cfg = r->cfg;
  switch (r->role) {
    case ROLE_INITIATE: {
      struct ccm_initiate_state shared = {.provider = NULL, .stop = r->stop};
      struct ccm_consumer_spec spec = {.name = "initiate",
                                       .topic = cfg->topic_initiate,
                                       .group = "call_initiation_consumer_group",
                                       .handle = ccm_initiate_handle,
                                       .data = &shared,
                                       .worker_init = ccm_initiate_worker_init,
                                       .worker_free = ccm_initiate_worker_free};
      r->status = ccm_consumer_run(cfg, &spec, r->stop);
      break;
    }
    case ROLE_CALLBACK: {
      struct ccm_consumer_spec spec = {.name = "callback",
                                       .topic = cfg->topic_callback,
                                       .group = "callback_consumer_group",
                                       .handle = ccm_callback_handle,
                                       .data = r->rules};
      r->status = ccm_consumer_run(cfg, &spec, r->stop);
      break;
    }
    case ROLE_DLQ:
      r->status = ccm_dlq_run(cfg, r->stop);
      break;
    case ROLE_RELAY:
      r->status = ccm_relay_run(cfg, r->stop);
      break;
    default:
      r->status = CCM_EINVAL;
  }
  if (r->status != CCM_OK) atomic_store(r->stop, true); /* fail fast: the supervisor restarts */
  return NULL;
}

/* Loads (or reloads) the retry rules into the holder. Returns CCM_OK or the
 * loader's status; on failure the previous rules stay. */
static int load_rules(const struct ccm_config *cfg, struct ccm_rules_holder *h) {
  struct ccm_rules *rules = NULL;
  char err[CCM_RULES_ERR_MAX];
  int rc = ccm_rules_load_file(cfg->retry_config_path, &rules, err, sizeof err);
  if (rc != CCM_OK) {
    ccm_error("ccm.consumers", "retry rules %s not loaded: %s", cfg->retry_config_path, err);
    return rc;
  }
  pthread_rwlock_wrlock(&h->lock);
  struct ccm_rules *old = h->rules;
  h->rules = rules;
  pthread_rwlock_unlock(&h->lock);
  ccm_rules_destroy(old);
  return CCM_OK;
}

int ccm_cmd_consumers(int argc, char **argv) {
  bool wanted[ROLE_COUNT] = {false};
  bool any = false;
  for (int i = 1; i < argc; i++) {
    const char *value = NULL;
    if (strcmp(argv[i], "--consumer") == 0 && i + 1 < argc)
      value = argv[++i];
    else if (strncmp(argv[i], "--consumer=", 11) == 0)
      value = argv[i] + 11;
    if (value == NULL) {
      fprintf(stderr, "ccm consumers: unknown option '%s'\n", argv[i]);
      return CCM_EXIT_USAGE;
    }
    bool matched = strcmp(value, "all") == 0;
    for (int r = 0; r < ROLE_COUNT; r++) {
      if (matched && strcmp(value, "all") == 0) wanted[r] = true;
      if (strcmp(value, role_names[r]) == 0) {
        wanted[r] = true;
        matched = true;
      }
    }
    if (!matched) {
      fprintf(stderr, "ccm consumers: --consumer must be initiate, callback, dlq, relay or all\n");
      return CCM_EXIT_USAGE;
    }
    any = true;
  }
  if (!any) {
    for (int r = 0; r < ROLE_COUNT; r++) wanted[r] = true;
  }
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "consumers");
  struct ccm_rules_holder holder = {.rules = NULL};
  pthread_rwlock_init(&holder.lock, NULL);
  holder.max_attempts_override = cfg.max_retry_attempts_set ? cfg.max_retry_attempts : 0;
  if (exit_code == CCM_EXIT_OK && wanted[ROLE_CALLBACK] && load_rules(&cfg, &holder) != CCM_OK) {
    fprintf(stderr, "ccm consumers: invalid configuration: RETRY_SCHEDULE_CONFIG_PATH (%s)\n",
            cfg.retry_config_path);
    exit_code = CCM_EXIT_USAGE;
  }
  if (exit_code == CCM_EXIT_OK) {
    /* SPEC 7: topics are created at start if missing (an external cluster
     * may not have them). A broker that is down is not fatal here: the
     * consumers wait for it. */
    char err[512];
    if (ccm_kafka_ensure_topics(&cfg, TOPIC_TIMEOUT_MS, err, sizeof err) != CCM_OK) {
      ccm_warn("ccm.consumers", "topics not checked (%s); consumers will wait for the broker", err);
    }
  }
  atomic_bool stop;
  atomic_init(&stop, false);
  struct runner runners[ROLE_COUNT];
  pthread_t threads[ROLE_COUNT];
  bool started[ROLE_COUNT] = {false};
  for (int r = 0; exit_code == CCM_EXIT_OK && r < ROLE_COUNT; r++) {
    if (!wanted[r]) continue;
    runners[r] = (struct runner){
        .role = (enum role)r, .cfg = &cfg, .stop = &stop, .rules = &holder, .status = CCM_OK};
    started[r] = pthread_create(&threads[r], NULL, run_role, &runners[r]) == 0;
    if (!started[r]) exit_code = CCM_EXIT_FAILURE;
  }
  while (exit_code == CCM_EXIT_OK && !atomic_load(&stop)) {
    int sig = ccm_signals_wait(500);
    if (sig == SIGHUP) {
      ccm_info("ccm.consumers", "SIGHUP: reloading retry rules");
      load_rules(&cfg, &holder);
    } else if (sig != 0) {
      ccm_info("ccm.consumers", "signal %d: stopping", sig);
      break;
    }
  }
  atomic_store(&stop, true);
  for (int r = 0; r < ROLE_COUNT; r++) {
    if (!started[r]) continue;
    pthread_join(threads[r], NULL);
    if (runners[r].status != CCM_OK) exit_code = CCM_EXIT_FAILURE;
  }
  ccm_rules_destroy(holder.rules);
  pthread_rwlock_destroy(&holder.lock);
  ccm_config_free(&cfg);
  return exit_code;
}

int ccm_cmd_cleanup_dlq(int argc, char **argv) {
  bool redrive = false, purge = false;
  int retention = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--process-unprocessed") == 0) {
      redrive = true;
    } else if (strcmp(argv[i], "--cleanup-old") == 0) {
      purge = true;
    } else if (strcmp(argv[i], "--retention-days") == 0 && i + 1 < argc) {
      char *end = NULL;
      long v = strtol(argv[++i], &end, 10);
      if (*end != '\0' || v < 0 || v > 36500) {
        fprintf(stderr, "ccm cleanup-dlq: --retention-days must be 0 to 36500\n");
        return CCM_EXIT_USAGE;
      }
      retention = (int)v;
    } else {
      fprintf(stderr, "ccm cleanup-dlq: unknown option '%s'\n", argv[i]);
      return CCM_EXIT_USAGE;
    }
  }
  if (!redrive && !purge) redrive = purge = true;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "cleanup-dlq");
  if (retention < 0) retention = cfg.dlq_retention_days;
  PGconn *db = NULL;
  char err[512];
  if (exit_code == CCM_EXIT_OK && ccm_db_connect(&cfg, &db, err, sizeof err) != CCM_OK) {
    fprintf(stderr, "ccm cleanup-dlq: cannot connect to PostgreSQL: %s\n", err);
    exit_code = CCM_EXIT_FAILURE;
  }
  if (exit_code == CCM_EXIT_OK && redrive) {
    rd_kafka_t *producer = ccm_consumer_producer_new(&cfg, err, sizeof err);
    int count = 0, rc = producer != NULL ? CCM_OK : CCM_EUNAVAILABLE;
    /* Batches of 100 until none is left. */
    for (int n = 1; rc == CCM_OK && n > 0; count += n) {
      rc = ccm_dlq_redrive(&cfg, db, producer, true, &n);
    }
    if (producer != NULL) rd_kafka_destroy(producer);
    printf("Re-driven dead letters: %d\n", count);
    if (rc != CCM_OK) {
      fprintf(stderr, "ccm cleanup-dlq: re-drive failed (%s)\n", ccm_error_name(rc));
      exit_code = CCM_EXIT_FAILURE;
    }
  }
  if (exit_code == CCM_EXIT_OK && purge) {
    int count = 0;
    if (ccm_dlq_purge(db, retention, &count) != CCM_OK) {
      exit_code = CCM_EXIT_FAILURE;
    } else {
      printf("Deleted processed dead letters older than %d days: %d\n", retention, count);
    }
  }
  if (db != NULL) ccm_db_close(db);
  ccm_config_free(&cfg);
  return exit_code;
}
