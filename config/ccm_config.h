/* Process configuration: environment variables, then `.env` in the working
 * directory, then built-in defaults (SPEC section 3). Loaded and validated
 * once at start; read-only afterwards, so threads may share it freely. */
#ifndef CCM_CONFIG_H
#define CCM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define CCM_CONFIG_MAX_TOKENS 64
#define CCM_CONFIG_MAX_KAFKA_PROPS 64

struct ccm_kafka_prop {
  char *name; /* librdkafka property, e.g. "broker.version.fallback" */
  char *value;
};

struct ccm_config {
  /* PostgreSQL: either database_url or the five parts. */
  char *database_url;
  char *db_name, *db_user, *db_password, *db_host;
  int db_port;

  char *redis_url;
  char *redis_concurrency_key;
  char *redis_duplicate_prefix;

  char *kafka_bootstrap_servers;
  char *topic_initiate, *topic_callback, *topic_dlq;
  struct ccm_kafka_prop kafka_props[CCM_CONFIG_MAX_KAFKA_PROPS];
  size_t kafka_prop_count;

  bool auth_enabled;
  char *valid_tokens[CCM_CONFIG_MAX_TOKENS];
  size_t valid_token_count;

  bool scheduler_enabled;
  int scheduler_interval_seconds;
  bool scheduler_interval_set; /* set by the environment (wins over YAML) */
  int max_retry_attempts;
  bool max_retry_attempts_set;
  char *retry_config_path;

  int max_concurrent_calls;
  bool max_concurrent_calls_set;
  int duplicate_window_seconds;
  bool duplicate_window_set;

  char *external_service_url;
  int external_timeout_seconds;
  int consumer_workers; /* handler threads per Kafka consumer */

  int dlq_retention_days;
  int stale_timeout_seconds;
  char *callback_signing_secret; /* NULL: signatures off */

  int gateway_rpc_timeout_ms;
  int gateway_max_connections;
  int gateway_idle_timeout_seconds;

  double mock_fail_rate;
  int mock_response_delay_ms;
  char *callback_url;
  char *mock_callback_token;
  int mock_delay_min_ms, mock_delay_max_ms;
  char *mock_outcomes;
  unsigned long mock_seed;
  bool mock_seed_set;

  int grpc_port;
  char *grpc_target;
  int http_port;
  int mock_port;

  char *log_dir;
  int log_level; /* enum ccm_log_level */
};

/* Loads the configuration into cfg (zeroed first). Returns CCM_OK, or
 * CCM_EINVAL with a one-line message naming the variable in err. The caller
 * owns cfg and releases it with ccm_config_free, also after a failure. */
int ccm_config_load(struct ccm_config *cfg, char *err, size_t errlen);

/* Same as ccm_config_load, reading `.env` from env_file (NULL: none). */
int ccm_config_load_from(struct ccm_config *cfg, const char *env_file, char *err, size_t errlen);

/* Releases every string of cfg and zeroes it; safe on a zeroed struct. */
void ccm_config_free(struct ccm_config *cfg);

/* Parses a boolean the way SPEC 3 allows (true/false, 1/0, yes/no, on/off, any
 * case). Returns CCM_OK and stores it in out, or CCM_EINVAL. */
int ccm_config_parse_bool(const char *text, bool *out);

/* Returns true when token is one of the valid tokens; compares in constant
 * time with respect to the token contents. */
bool ccm_config_token_valid(const struct ccm_config *cfg, const char *token);

/* Writes the PostgreSQL conninfo string (URL or key=value form) into out.
 * Returns CCM_OK or CCM_EINVAL when it does not fit. Contains the password:
 * never log it. */
int ccm_config_db_conninfo(const struct ccm_config *cfg, char *out, size_t outlen);

#endif
