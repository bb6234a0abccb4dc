/* `ccm server`: wires configuration, retry rules, dependency monitoring and
 * the CallManager handlers onto the gRPC transport (ccm_rpc). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_redis.h"
#include "ccm_rules.h"
#include "ccm_service.h"
#include "ccm_signals.h"
#include "ccm_slots.h"
#include "ccm_time.h"

#define SERVER_WORKERS 16
#define SHUTDOWN_GRACE_MS 10000
#define HEALTH_INTERVAL_MS 1000
#define KAFKA_CHECK_EVERY 5 /* health rounds */
#define CHECK_TIMEOUT_MS 1000

extern const unsigned char ccm_descriptor_set[];
extern const size_t ccm_descriptor_set_len;

#define CM "/callmanager.v1.CallManager/"
static const struct ccm_rpc_method methods[] = {
    {CM "CreateCampaign", &callmanager__v1__create_campaign_request__descriptor,
     ccm_svc_create_campaign},
    {CM "ListCampaigns", &callmanager__v1__list_campaigns_request__descriptor,
     ccm_svc_list_campaigns},
    {CM "GetCampaign", &callmanager__v1__get_campaign_request__descriptor, ccm_svc_get_campaign},
    {CM "AddPhoneNumbers", &callmanager__v1__add_phone_numbers_request__descriptor,
     ccm_svc_add_phone_numbers},
    {CM "InitiateCall", &callmanager__v1__initiate_call_request__descriptor, ccm_svc_initiate_call},
    {CM "ProcessCallback", &callmanager__v1__process_callback_request__descriptor,
     ccm_svc_process_callback},
    {CM "GetCall", &callmanager__v1__get_call_request__descriptor, ccm_svc_get_call},
    {CM "GetMetrics", &callmanager__v1__get_metrics_request__descriptor, ccm_svc_get_metrics},
};

struct monitor {
  struct ccm_app *app;
  pthread_mutex_t mutex;
  pthread_cond_t cond;
  bool stop;
  PGconn *db;
  redisContext *redis;
};

static void *worker_init(void *app, int index) {
  (void)index;
  struct ccm_worker *w = calloc(1, sizeof *w);
  if (w != NULL) w->app = app;
  return w;
}

static void worker_free(void *app, void *data) {
  (void)app;
  struct ccm_worker *w = data;
  if (w == NULL) return;
  if (w->db != NULL) ccm_db_close(w->db);
  if (w->redis != NULL) redisFree(w->redis);
  free(w);
}

static enum ccm_rpc_health health(void *data, const char *service) {
  struct ccm_app *app = data;
  bool db = atomic_load(&app->db_ok);
  if (strcmp(service, "") == 0) {
    bool all = db && atomic_load(&app->redis_ok) && atomic_load(&app->kafka_ok);
    return all ? CCM_RPC_SERVING : CCM_RPC_NOT_SERVING;
  }
  if (strcmp(service, "callmanager.v1.CallManager") == 0) {
    return db ? CCM_RPC_SERVING : CCM_RPC_NOT_SERVING;
  }
  return CCM_RPC_UNKNOWN_SERVICE;
}

static bool probe_db(struct monitor *m) {
  if (m->db == NULL) {
    char err[256];
    if (ccm_db_connect(&m->app->cfg, &m->db, err, sizeof err) != CCM_OK) return false;
  }
  if (ccm_db_exec_simple(m->db, "SELECT 1") == CCM_OK) return true;
  ccm_db_close(m->db);
  m->db = NULL;
  return false;
}

static bool probe_redis(struct monitor *m) {
  if (m->redis == NULL &&
      ccm_redis_connect(&m->app->cfg, CHECK_TIMEOUT_MS, &m->redis, NULL, 0) != CCM_OK) {
    return false;
  }
  redisReply *r = redisCommand(m->redis, "PING");
  bool ok = r != NULL && r->type != REDIS_REPLY_ERROR;
  if (r != NULL) freeReplyObject(r);
  if (!ok) {
    redisFree(m->redis);
    m->redis = NULL;
  }
  return ok;
}

/* After a Redis outage the slot set may be stale or empty: rebuild it from
 * the database's attempts in flight. */
static void reconcile_slots(struct monitor *m) {
  if (m->db == NULL || m->redis == NULL) return;
  int n = 0;
  if (ccm_slots_reconcile_from_db(m->redis, &m->app->cfg, m->db, &n) == CCM_OK)
    ccm_info("ccm.server", "Redis is back: concurrency slots reconciled (%d in flight)", n);
}

static void *monitor_run(void *arg) {
  struct monitor *m = arg;
  struct ccm_app *app = m->app;
  bool redis_was_ok = true;
  for (unsigned round = 0;; round++) {
    bool db = probe_db(m);
    bool redis = probe_redis(m);
    if (redis && !redis_was_ok && db) reconcile_slots(m);
    if (redis != redis_was_ok) {
      ccm_log_write(CCM_LOG_APP, redis ? CCM_LOG_INFO : CCM_LOG_WARNING, "ccm.server",
                    "Redis is %s", redis ? "reachable again" : "unreachable");
    }
    redis_was_ok = redis;
    atomic_store(&app->db_ok, db);
    atomic_store(&app->redis_ok, redis);
    if (round % KAFKA_CHECK_EVERY == 0) {
      char err[256];
      atomic_store(&app->kafka_ok,
                   ccm_kafka_check(&app->cfg, CHECK_TIMEOUT_MS, err, sizeof err) == CCM_OK);
    }
    pthread_mutex_lock(&m->mutex);
    if (!m->stop) {
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += HEALTH_INTERVAL_MS / 1000;
      pthread_cond_timedwait(&m->cond, &m->mutex, &until);
    }
    bool stop = m->stop;
    pthread_mutex_unlock(&m->mutex);
    if (stop) break;
  }
  if (m->db != NULL) ccm_db_close(m->db);
  if (m->redis != NULL) redisFree(m->redis);
  return NULL;
}

/* Loads the retry rules and derives the effective limits. Returns CCM_OK or
 * the loader's status (message printed). */
static int load_rules(struct ccm_app *app, bool at_start) {
  struct ccm_rules *rules = NULL;
  char err[CCM_RULES_ERR_MAX];
  int rc = ccm_rules_load_file(app->cfg.retry_config_path, &rules, err, sizeof err);
  if (rc != CCM_OK) {
    if (at_start) {
      fprintf(stderr, "ccm server: invalid configuration: RETRY_SCHEDULE_CONFIG_PATH (%s): %s\n",
              app->cfg.retry_config_path, err);
    }
    ccm_error("ccm.server", "retry rules %s not loaded: %s", app->cfg.retry_config_path, err);
    return rc;
  }
  for (size_t i = 0; i < ccm_rules_warning_count(rules); i++) {
    ccm_warn("ccm.server", "retry rules: %s", ccm_rules_warning(rules, i));
  }
  const struct ccm_rules_settings *s = ccm_rules_settings(rules);
  if (at_start) {
    app->max_concurrent_calls = app->cfg.max_concurrent_calls;
    if (!app->cfg.max_concurrent_calls_set && s->concurrent_call_limit_set) {
      app->max_concurrent_calls = s->concurrent_call_limit;
    } else if (app->cfg.max_concurrent_calls_set && s->concurrent_call_limit_set) {
      ccm_warn("ccm.server", "MAX_CONCURRENT_CALLS is set: defaults.concurrent_call_limit ignored");
    }
    app->duplicate_window_seconds = app->cfg.duplicate_window_seconds;
    if (!app->cfg.duplicate_window_set && s->duplicate_call_window_set) {
      app->duplicate_window_seconds = s->duplicate_call_window_minutes * 60;
    } else if (app->cfg.duplicate_window_set && s->duplicate_call_window_set) {
      ccm_warn("ccm.server",
               "DUPLICATE_CALL_WINDOW_MINUTES is set: defaults.duplicate_call_window_minutes "
               "ignored");
    }
  }
  pthread_rwlock_wrlock(&app->rules_lock);
  struct ccm_rules *old = app->rules;
  app->rules = rules;
  pthread_rwlock_unlock(&app->rules_lock);
  ccm_rules_destroy(old);
  return CCM_OK;
}

static int serve(struct ccm_app *app) {
  char address[64];
  snprintf(address, sizeof address, "0.0.0.0:%d", app->cfg.grpc_port);
  struct ccm_rpc_server_options options = {
      .listen_address = address,
      .workers = SERVER_WORKERS,
      .methods = methods,
      .method_count = sizeof methods / sizeof methods[0],
      .app = app,
      .worker_init = worker_init,
      .worker_free = worker_free,
      .health = health,
      .descriptor_set = ccm_descriptor_set,
      .descriptor_set_len = ccm_descriptor_set_len,
  };
  struct ccm_rpc_server *server = NULL;
  if (ccm_rpc_server_create(&options, &server) != CCM_OK) {
    fprintf(stderr, "ccm server: cannot listen on %s (GRPC_PORT)\n", address);
    ccm_error("ccm.server", "cannot listen on %s", address);
    return CCM_EXIT_FAILURE;
  }
  struct monitor mon = {
      .app = app, .mutex = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
  pthread_t monitor_thread;
  if (pthread_create(&monitor_thread, NULL, monitor_run, &mon) != 0 ||
      ccm_rpc_server_start(server) != CCM_OK) {
    ccm_rpc_server_destroy(server);
    return CCM_EXIT_FAILURE;
  }
  ccm_info("ccm.server", "gRPC server listening on %s (%d workers)", address, SERVER_WORKERS);
  for (;;) {
    int sig = ccm_signals_wait(1000);
    if (sig == SIGHUP) {
      ccm_info("ccm.server", "SIGHUP: reloading retry rules");
      load_rules(app, false);
    } else if (sig != 0) {
      ccm_info("ccm.server", "signal %d: shutting down (grace %d ms)", sig, SHUTDOWN_GRACE_MS);
      break;
    }
  }
  ccm_rpc_server_shutdown(server, SHUTDOWN_GRACE_MS);
  ccm_rpc_server_destroy(server);
  pthread_mutex_lock(&mon.mutex);
  mon.stop = true;
  pthread_cond_signal(&mon.cond);
  pthread_mutex_unlock(&mon.mutex);
  pthread_join(monitor_thread, NULL);
  ccm_info("ccm.server", "gRPC server stopped");
  return CCM_EXIT_OK;
}

int ccm_cmd_server(int argc, char **argv) {
  (void)argc;
  (void)argv;
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct ccm_app *app = calloc(1, sizeof *app);
  if (app == NULL) return CCM_EXIT_FAILURE;
  pthread_rwlock_init(&app->rules_lock, NULL);
  atomic_init(&app->db_ok, true);
  atomic_init(&app->redis_ok, true);
  atomic_init(&app->kafka_ok, true);
  int exit_code = ccm_cli_setup(&app->cfg, "server");
  if (exit_code == CCM_EXIT_OK && load_rules(app, true) != CCM_OK) exit_code = CCM_EXIT_USAGE;
  if (exit_code == CCM_EXIT_OK) {
    if (!app->cfg.auth_enabled) {
      ccm_warn("ccm.server", "AUTH_ENABLED=false: x-auth-token is not checked on any RPC");
    }
    exit_code = serve(app);
  }
  ccm_rules_destroy(app->rules);
  pthread_rwlock_destroy(&app->rules_lock);
  ccm_config_free(&app->cfg);
  free(app);
  return exit_code;
}
