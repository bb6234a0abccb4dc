#include "ccm_config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ccm_error.h"
#include "ccm_log.h"

#define DOTENV_MAX_ENTRIES 512
#define DOTENV_MAX_LINE 8192

/* Variables read from `.env`; real environment variables win over them. */
struct dotenv {
  char *keys[DOTENV_MAX_ENTRIES];
  char *values[DOTENV_MAX_ENTRIES];
  size_t count;
};

struct loader {
  struct ccm_config *cfg;
  struct dotenv env;
  char *err;
  size_t errlen;
  int status;
};

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
  return s;
}

/* Reads KEY=VALUE lines; `export ` prefixes, comments and matching quotes
 * around the value are understood. A missing file is not an error. */
static void dotenv_read(struct dotenv *env, const char *path) {
  if (path == NULL) return;
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  char line[DOTENV_MAX_LINE];
  while (fgets(line, sizeof line, f) != NULL && env->count < DOTENV_MAX_ENTRIES) {
    char *s = trim(line);
    if (*s == '\0' || *s == '#') continue;
    if (strncmp(s, "export ", 7) == 0) s = trim(s + 7);
    char *eq = strchr(s, '=');
    if (eq == NULL) continue;
    *eq = '\0';
    char *key = trim(s);
    char *value = trim(eq + 1);
    char *closing = value[0] == '"' || value[0] == '\'' ? strchr(value + 1, value[0]) : NULL;
    if (closing != NULL) {
      /* Quoted: the text between the quotes; a comment may follow. */
      *closing = '\0';
      value++;
    } else {
      char *hash = strstr(value, " #");
      if (hash != NULL) {
        *hash = '\0';
        value = trim(value);
      }
    }
    if (*key == '\0') continue;
    env->keys[env->count] = strdup(key);
    env->values[env->count] = strdup(value);
    if (env->keys[env->count] == NULL || env->values[env->count] == NULL) {
      free(env->keys[env->count]);
      free(env->values[env->count]);
      break;
    }
    env->count++;
  }
  fclose(f);
}

static void dotenv_free(struct dotenv *env) {
  for (size_t i = 0; i < env->count; i++) {
    free(env->keys[i]);
    free(env->values[i]);
  }
  env->count = 0;
}

/* Returns the variable's value (environment first, then `.env`), or NULL when
 * unset. An empty value counts as set. */
static const char *lookup1(struct loader *ld, const char *name) {
  const char *v = getenv(name);
  if (v != NULL) return v;
  for (size_t i = ld->env.count; i > 0; i--) {
    if (strcmp(ld->env.keys[i - 1], name) == 0) return ld->env.values[i - 1];
  }
  return NULL;
}

/* Looks up a primary name, then its alias (may be NULL). Stores which name
 * answered in *used_name for error messages. */
static const char *lookup(struct loader *ld, const char *name, const char *alias,
                          const char **used_name) {
  const char *v = lookup1(ld, name);
  *used_name = name;
  if (v == NULL && alias != NULL) {
    v = lookup1(ld, alias);
    if (v != NULL) *used_name = alias;
  }
  return v;
}

static void fail(struct loader *ld, const char *fmt, ...) {
  if (ld->status != CCM_OK) return; /* keep the first error */
  ld->status = CCM_EINVAL;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ld->err, ld->errlen, fmt, ap);
  va_end(ap);
}

static char *dup_or_fail(struct loader *ld, const char *s) {
  char *d = strdup(s);
  if (d == NULL) fail(ld, "out of memory while reading configuration");
  return d;
}

static void get_string(struct loader *ld, char **out, const char *name, const char *alias,
                       const char *def) {
  const char *used;
  const char *v = lookup(ld, name, alias, &used);
  free(*out);
  *out = dup_or_fail(ld, v != NULL ? v : def);
}

static int parse_long(const char *text, long min, long max, long *out) {
  if (text == NULL || *text == '\0') return CCM_EINVAL;
  errno = 0;
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (errno != 0 || end == text) return CCM_EINVAL;
  while (isspace((unsigned char)*end)) end++;
  if (*end != '\0' || v < min || v > max) return CCM_EINVAL;
  *out = v;
  return CCM_OK;
}

/* Reads an integer variable; returns true when the variable was set. */
static bool get_int(struct loader *ld, int *out, const char *name, const char *alias, long min,
                    long max, int def) {
  const char *used;
  const char *v = lookup(ld, name, alias, &used);
  *out = def;
  if (v == NULL) return false;
  long parsed;
  if (parse_long(v, min, max, &parsed) != CCM_OK) {
    fail(ld, "invalid configuration: %s='%s' must be an integer between %ld and %ld", used, v, min,
         max);
    return false;
  }
  *out = (int)parsed;
  return true;
}

static void get_port(struct loader *ld, int *out, const char *name, const char *alias, int def) {
  get_int(ld, out, name, alias, 1, 65535, def);
}

int ccm_config_parse_bool(const char *text, bool *out) {
  static const char *const yes[] = {"true", "1", "yes", "on"};
  static const char *const no[] = {"false", "0", "no", "off"};
  if (text == NULL || out == NULL) return CCM_EINVAL;
  char buf[16];
  size_t n = strlen(text);
  if (n >= sizeof buf) return CCM_EINVAL;
  memcpy(buf, text, n + 1);
  char *t = trim(buf);
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(t, yes[i]) == 0) {
      *out = true;
      return CCM_OK;
    }
    if (strcasecmp(t, no[i]) == 0) {
      *out = false;
      return CCM_OK;
    }
  }
  return CCM_EINVAL;
}

static void get_bool(struct loader *ld, bool *out, const char *name, bool def) {
  const char *used;
  const char *v = lookup(ld, name, NULL, &used);
  *out = def;
  if (v == NULL) return;
  if (ccm_config_parse_bool(v, out) != CCM_OK) {
    fail(ld, "invalid configuration: %s='%s' must be true or false", used, v);
  }
}

static void check_url(struct loader *ld, const char *name, const char *value,
                      const char *const *schemes) {
  for (; *schemes != NULL; schemes++) {
    size_t n = strlen(*schemes);
    if (strncmp(value, *schemes, n) == 0 && value[n] != '\0') return;
  }
  fail(ld, "invalid configuration: %s must be a URL starting with %s", name, schemes[-1]);
}

/* Splits a comma list of tokens into cfg->valid_tokens (empty items skipped). */
static void add_tokens(struct loader *ld, const char *list) {
  struct ccm_config *cfg = ld->cfg;
  const char *p = list;
  while (*p != '\0') {
    const char *comma = strchr(p, ',');
    size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
    while (n > 0 && isspace((unsigned char)*p)) {
      p++;
      n--;
    }
    while (n > 0 && isspace((unsigned char)p[n - 1])) n--;
    if (n > 0) {
      if (cfg->valid_token_count >= CCM_CONFIG_MAX_TOKENS) {
        fail(ld, "invalid configuration: VALID_TOKENS lists more than %d tokens",
             CCM_CONFIG_MAX_TOKENS);
        return;
      }
      char *t = strndup(p, n);
      if (t == NULL) {
        fail(ld, "out of memory while reading configuration");
        return;
      }
      cfg->valid_tokens[cfg->valid_token_count++] = t;
    }
    if (comma == NULL) break;
    p = comma + 1;
  }
}

/* Variables named KAFKA_* that are not ccm's own are librdkafka properties. */
static bool is_known_kafka_var(const char *name) {
  static const char *const known[] = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_INITIATE_CALL_TOPIC",
                                      "KAFKA_CALLBACK_TOPIC", "KAFKA_DLQ_TOPIC",
                                      /* read by scripts/stack.sh, not by librdkafka */
                                      "KAFKA_CONTROLLER_PORT", NULL};
  for (size_t i = 0; known[i] != NULL; i++) {
    if (strcmp(name, known[i]) == 0) return true;
  }
  return false;
}

static void add_kafka_prop(struct loader *ld, const char *var, const char *value) {
  struct ccm_config *cfg = ld->cfg;
  if (strncmp(var, "KAFKA_", 6) != 0 || var[6] == '\0' || is_known_kafka_var(var)) return;
  char name[128];
  size_t n = strlen(var + 6);
  if (n >= sizeof name) return;
  for (size_t i = 0; i <= n; i++) {
    char c = var[6 + i];
    name[i] = c == '_' ? '.' : (char)tolower((unsigned char)c);
  }
  for (size_t i = 0; i < cfg->kafka_prop_count; i++) {
    if (strcmp(cfg->kafka_props[i].name, name) == 0) return; /* environment came first */
  }
  if (cfg->kafka_prop_count >= CCM_CONFIG_MAX_KAFKA_PROPS) {
    fail(ld, "invalid configuration: more than %d KAFKA_* properties", CCM_CONFIG_MAX_KAFKA_PROPS);
    return;
  }
  struct ccm_kafka_prop *p = &cfg->kafka_props[cfg->kafka_prop_count];
  p->name = dup_or_fail(ld, name);
  p->value = dup_or_fail(ld, value);
  cfg->kafka_prop_count++;
}

extern char **environ;

static void collect_kafka_props(struct loader *ld) {
  for (char **e = environ; e != NULL && *e != NULL; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || (size_t)(eq - *e) >= 128) continue;
    char var[128];
    memcpy(var, *e, (size_t)(eq - *e));
    var[eq - *e] = '\0';
    add_kafka_prop(ld, var, eq + 1);
  }
  for (size_t i = 0; i < ld->env.count; i++) add_kafka_prop(ld, ld->env.keys[i], ld->env.values[i]);
}

/* Seconds from a *_SECONDS variable, else minutes from *_MINUTES, else def. */
static bool get_duration(struct loader *ld, int *seconds, const char *minutes_name,
                         const char *seconds_name, int def_seconds) {
  int value;
  if (seconds_name != NULL && get_int(ld, &value, seconds_name, NULL, 0, 365L * 86400, 0)) {
    *seconds = value;
    return true;
  }
  if (get_int(ld, &value, minutes_name, NULL, 0, 365L * 1440, 0)) {
    *seconds = value * 60;
    return true;
  }
  *seconds = def_seconds;
  return false;
}

static void load_all(struct loader *ld) {
  struct ccm_config *cfg = ld->cfg;
  const char *used;
  char buf[512];

  const char *url = lookup(ld, "DATABASE_URL", NULL, &used);
  if (url != NULL && *url != '\0') cfg->database_url = dup_or_fail(ld, url);
  get_string(ld, &cfg->db_name, "DB_NAME", "POSTGRES_DB", "campaign_db");
  get_string(ld, &cfg->db_user, "DB_USER", "POSTGRES_USER", "campaign_user");
  get_string(ld, &cfg->db_password, "DB_PASSWORD", "POSTGRES_PASSWORD", "");
  get_string(ld, &cfg->db_host, "DB_HOST", "POSTGRES_HOST", "localhost");
  get_port(ld, &cfg->db_port, "DB_PORT", "POSTGRES_PORT", 5432);

  get_string(ld, &cfg->redis_url, "REDIS_URL", NULL, "redis://localhost:6379/0");
  static const char *const redis_schemes[] = {"redis://", "unix://", NULL};
  check_url(ld, "REDIS_URL", cfg->redis_url, redis_schemes);
  get_string(ld, &cfg->redis_concurrency_key, "REDIS_CONCURRENCY_KEY", NULL, "active_calls_count");
  get_string(ld, &cfg->redis_duplicate_prefix, "REDIS_DUPLICATE_PREVENTION_PREFIX", NULL,
             "call_lock:");

  get_string(ld, &cfg->kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS", NULL, "localhost:9092");
  if (cfg->kafka_bootstrap_servers != NULL && cfg->kafka_bootstrap_servers[0] == '\0') {
    fail(ld, "invalid configuration: KAFKA_BOOTSTRAP_SERVERS must not be empty");
  }
  get_string(ld, &cfg->topic_initiate, "KAFKA_INITIATE_CALL_TOPIC", NULL, "initiated_call_topic");
  get_string(ld, &cfg->topic_callback, "KAFKA_CALLBACK_TOPIC", NULL, "callback_topic");
  get_string(ld, &cfg->topic_dlq, "KAFKA_DLQ_TOPIC", NULL, "dlq_topic");
  collect_kafka_props(ld);

  get_bool(ld, &cfg->auth_enabled, "AUTH_ENABLED", true);
  const char *tokens = lookup(ld, "VALID_TOKENS", NULL, &used);
  add_tokens(ld, tokens != NULL ? tokens : "dev-token-12345,another-token-67890");
  const char *extra = lookup(ld, "X_AUTH_TOKEN", NULL, &used);
  if (extra != NULL) add_tokens(ld, extra);
  if (cfg->auth_enabled && cfg->valid_token_count == 0) {
    fail(ld, "invalid configuration: VALID_TOKENS is empty while AUTH_ENABLED is true");
  }

  get_bool(ld, &cfg->scheduler_enabled, "SCHEDULER_ENABLED", true);
  cfg->scheduler_interval_set =
      get_duration(ld, &cfg->scheduler_interval_seconds, "SCHEDULER_INTERVAL_MINUTES",
                   "SCHEDULER_INTERVAL_SECONDS", 60);
  if (cfg->scheduler_interval_seconds < 1) {
    const char *used_name = lookup1(ld, "SCHEDULER_INTERVAL_SECONDS") != NULL
                                ? "SCHEDULER_INTERVAL_SECONDS"
                                : "SCHEDULER_INTERVAL_MINUTES";
    fail(ld, "invalid configuration: %s must be at least 1 second", used_name);
  }
  cfg->max_retry_attempts_set =
      get_int(ld, &cfg->max_retry_attempts, "MAX_RETRY_ATTEMPTS", NULL, 1, 1000, 3);
  get_string(ld, &cfg->retry_config_path, "RETRY_SCHEDULE_CONFIG_PATH", NULL,
             "config/retry_config.yaml");

  cfg->max_concurrent_calls_set =
      get_int(ld, &cfg->max_concurrent_calls, "MAX_CONCURRENT_CALLS", NULL, 1, 1000000, 100);
  cfg->duplicate_window_set =
      get_duration(ld, &cfg->duplicate_window_seconds, "DUPLICATE_CALL_WINDOW_MINUTES",
                   "DUPLICATE_CALL_WINDOW_SECONDS", 300);

  get_port(ld, &cfg->grpc_port, "GRPC_PORT", NULL, 50051);
  get_port(ld, &cfg->http_port, "HTTP_PORT", NULL, 8000);
  get_port(ld, &cfg->mock_port, "MOCK_PORT", NULL, 8001);
  snprintf(buf, sizeof buf, "127.0.0.1:%d", cfg->grpc_port);
  get_string(ld, &cfg->grpc_target, "GRPC_TARGET", NULL, buf);

  snprintf(buf, sizeof buf, "http://localhost:%d/api/initiate-call", cfg->mock_port);
  get_string(ld, &cfg->external_service_url, "EXTERNAL_SERVICE_URL", "EXTERNAL_CALL_SERVICE_URL",
             buf);
  static const char *const http_schemes[] = {"http://", "https://", NULL};
  check_url(ld, "EXTERNAL_SERVICE_URL", cfg->external_service_url, http_schemes);
  if (ld->status == CCM_OK) {
    /* A base URL (no path, or just "/") gets the provider's endpoint path. */
    const char *after_scheme = strstr(cfg->external_service_url, "://") + 3;
    const char *slash = strchr(after_scheme, '/');
    if (slash == NULL || strcmp(slash, "/") == 0) {
      size_t host_len = slash != NULL ? (size_t)(slash - cfg->external_service_url)
                                      : strlen(cfg->external_service_url);
      snprintf(buf, sizeof buf, "%.*s/api/initiate-call", (int)host_len, cfg->external_service_url);
      free(cfg->external_service_url);
      cfg->external_service_url = dup_or_fail(ld, buf);
    }
  }
  get_int(ld, &cfg->external_timeout_seconds, "EXTERNAL_SERVICE_TIMEOUT_SECONDS", NULL, 1, 3600,
          30);
  get_int(ld, &cfg->consumer_workers, "CONSUMER_WORKERS", NULL, 1, 64, 8);
  get_int(ld, &cfg->dlq_retention_days, "DLQ_RETENTION_DAYS", NULL, 0, 36500, 7);
  get_duration(ld, &cfg->stale_timeout_seconds, "STALE_CALL_TIMEOUT_MINUTES",
               "STALE_CALL_TIMEOUT_SECONDS", 3600);

  const char *secret = lookup(ld, "CALLBACK_SIGNING_SECRET", NULL, &used);
  if (secret != NULL && *secret != '\0') cfg->callback_signing_secret = dup_or_fail(ld, secret);

  get_int(ld, &cfg->gateway_rpc_timeout_ms, "GATEWAY_RPC_TIMEOUT_MS", NULL, 1, 3600000, 10000);
  get_int(ld, &cfg->gateway_max_connections, "GATEWAY_MAX_CONNECTIONS", NULL, 1, 1000000, 20000);
  get_int(ld, &cfg->gateway_idle_timeout_seconds, "GATEWAY_IDLE_TIMEOUT_SECONDS", NULL, 1, 86400,
          30);

  const char *rate = lookup(ld, "MOCK_FAIL_RATE", NULL, &used);
  cfg->mock_fail_rate = 0.0;
  if (rate != NULL) {
    char *end = NULL;
    errno = 0;
    double r = strtod(rate, &end);
    if (errno != 0 || end == rate || *end != '\0' || !(r >= 0.0 && r <= 1.0)) {
      fail(ld, "invalid configuration: MOCK_FAIL_RATE='%s' must be a number from 0 to 1", rate);
    } else {
      cfg->mock_fail_rate = r;
    }
  }
  get_int(ld, &cfg->mock_response_delay_ms, "MOCK_RESPONSE_DELAY_MS", NULL, 0, 3600000, 0);
  snprintf(buf, sizeof buf, "http://localhost:%d/api/v1/callback/", cfg->http_port);
  get_string(ld, &cfg->callback_url, "CALLBACK_URL", NULL, buf);
  check_url(ld, "CALLBACK_URL", cfg->callback_url, http_schemes);
  get_string(ld, &cfg->mock_callback_token, "MOCK_CALLBACK_TOKEN", NULL,
             cfg->valid_token_count > 0 ? cfg->valid_tokens[0] : "");
  get_int(ld, &cfg->mock_delay_min_ms, "MOCK_DELAY_MIN_MS", NULL, 0, 3600000, 1000);
  get_int(ld, &cfg->mock_delay_max_ms, "MOCK_DELAY_MAX_MS", NULL, 0, 3600000, 10000);
  if (cfg->mock_delay_max_ms < cfg->mock_delay_min_ms) {
    fail(ld, "invalid configuration: MOCK_DELAY_MAX_MS must not be below MOCK_DELAY_MIN_MS");
  }
  get_string(ld, &cfg->mock_outcomes, "MOCK_OUTCOMES", NULL,
             "PICKED:0.60,DISCONNECTED:0.25,RNR:0.15");
  const char *seed = lookup(ld, "MOCK_SEED", NULL, &used);
  if (seed != NULL && *seed != '\0') {
    long s;
    if (parse_long(seed, 0, LONG_MAX, &s) != CCM_OK) {
      fail(ld, "invalid configuration: MOCK_SEED='%s' must be a non-negative integer", seed);
    } else {
      cfg->mock_seed = (unsigned long)s;
      cfg->mock_seed_set = true;
    }
  }

  get_string(ld, &cfg->log_dir, "LOG_DIR", NULL, "logs");
  const char *level = lookup(ld, "LOG_LEVEL", NULL, &used);
  cfg->log_level = CCM_LOG_INFO;
  if (level != NULL && ccm_log_level_parse(level, &cfg->log_level) != CCM_OK) {
    fail(ld, "invalid configuration: LOG_LEVEL='%s' must be debug, info, warning or error", level);
  }
}

int ccm_config_load_from(struct ccm_config *cfg, const char *env_file, char *err, size_t errlen) {
  if (cfg == NULL || err == NULL || errlen == 0) return CCM_EINVAL;
  memset(cfg, 0, sizeof *cfg);
  err[0] = '\0';
  struct loader ld = {.cfg = cfg, .err = err, .errlen = errlen, .status = CCM_OK};
  dotenv_read(&ld.env, env_file);
  load_all(&ld);
  dotenv_free(&ld.env);
  return ld.status;
}

int ccm_config_load(struct ccm_config *cfg, char *err, size_t errlen) {
  const char *env_file = getenv("CCM_ENV_FILE");
  return ccm_config_load_from(cfg, env_file != NULL ? env_file : ".env", err, errlen);
}

void ccm_config_free(struct ccm_config *cfg) {
  if (cfg == NULL) return;
  char **strings[] = {&cfg->database_url,
                      &cfg->db_name,
                      &cfg->db_user,
                      &cfg->db_password,
                      &cfg->db_host,
                      &cfg->redis_url,
                      &cfg->redis_concurrency_key,
                      &cfg->redis_duplicate_prefix,
                      &cfg->kafka_bootstrap_servers,
                      &cfg->topic_initiate,
                      &cfg->topic_callback,
                      &cfg->topic_dlq,
                      &cfg->retry_config_path,
                      &cfg->external_service_url,
                      &cfg->callback_signing_secret,
                      &cfg->callback_url,
                      &cfg->mock_callback_token,
                      &cfg->mock_outcomes,
                      &cfg->grpc_target,
                      &cfg->log_dir};
  for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++) free(*strings[i]);
  for (size_t i = 0; i < cfg->valid_token_count; i++) free(cfg->valid_tokens[i]);
  for (size_t i = 0; i < cfg->kafka_prop_count; i++) {
    free(cfg->kafka_props[i].name);
    free(cfg->kafka_props[i].value);
  }
  memset(cfg, 0, sizeof *cfg);
}

/* Compares without an early exit so the time does not reveal how much of a
 * candidate token matched. */
static bool constant_time_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  size_t n = la > lb ? la : lb;
  unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < n; i++) {
    unsigned char ca = i < la ? (unsigned char)a[i] : 0;
    unsigned char cb = i < lb ? (unsigned char)b[i] : 0;
    diff |= (unsigned char)(ca ^ cb);
  }
  return diff == 0;
}

bool ccm_config_token_valid(const struct ccm_config *cfg, const char *token) {
  if (cfg == NULL || token == NULL || token[0] == '\0') return false;
  bool ok = false;
  for (size_t i = 0; i < cfg->valid_token_count; i++) {
    ok |= constant_time_equal(cfg->valid_tokens[i], token);
  }
  return ok;
}

/* Quotes a libpq key=value value: single quotes, with \ and ' escaped. */
static int append_value(char *out, size_t outlen, size_t *pos, const char *key, const char *v) {
  int n = snprintf(out + *pos, outlen - *pos, "%s%s='", *pos > 0 ? " " : "", key);
  if (n < 0 || (size_t)n >= outlen - *pos) return CCM_EINVAL;
  *pos += (size_t)n;
  for (; *v != '\0'; v++) {
    if (*pos + 3 >= outlen) return CCM_EINVAL;
    if (*v == '\'' || *v == '\\') out[(*pos)++] = '\\';
    out[(*pos)++] = *v;
  }
  if (*pos + 2 >= outlen) return CCM_EINVAL;
  out[(*pos)++] = '\'';
  out[*pos] = '\0';
  return CCM_OK;
}

int ccm_config_db_conninfo(const struct ccm_config *cfg, char *out, size_t outlen) {
  if (cfg == NULL || out == NULL || outlen == 0) return CCM_EINVAL;
  if (cfg->database_url != NULL) {
    int n = snprintf(out, outlen, "%s", cfg->database_url);
    return n < 0 || (size_t)n >= outlen ? CCM_EINVAL : CCM_OK;
  }
  size_t pos = 0;
  char port[16];
  snprintf(port, sizeof port, "%d", cfg->db_port);
  out[0] = '\0';
  if (append_value(out, outlen, &pos, "host", cfg->db_host) != CCM_OK ||
      append_value(out, outlen, &pos, "port", port) != CCM_OK ||
      append_value(out, outlen, &pos, "dbname", cfg->db_name) != CCM_OK ||
      append_value(out, outlen, &pos, "user", cfg->db_user) != CCM_OK ||
      append_value(out, outlen, &pos, "connect_timeout", "5") != CCM_OK ||
      append_value(out, outlen, &pos, "application_name", "ccm") != CCM_OK) {
    return CCM_EINVAL;
  }
  if (cfg->db_password[0] != '\0' &&
      append_value(out, outlen, &pos, "password", cfg->db_password) != CCM_OK) {
    return CCM_EINVAL;
  }
  return CCM_OK;
}
