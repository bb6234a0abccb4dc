/* Redis access (hiredis): connection from REDIS_URL. The concurrency slots
 * and duplicate locks built on it live in ccm_slots. */
#ifndef CCM_REDIS_H
#define CCM_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

struct ccm_config;

struct ccm_redis_target {
  char host[256];
  int port;
  char user[128];
  char password[256];
  int db;
};

/* Parses redis://[[user]:password@]host[:port][/db] with libcurl's URL API.
 * Returns CCM_OK or CCM_EINVAL. */
int ccm_redis_parse_url(const char *url, struct ccm_redis_target *out);

/* Connects (timeout timeout_ms), authenticates and selects the database.
 * Returns CCM_OK and the context in *out (caller owns it, redisFree), or
 * CCM_EUNAVAILABLE / CCM_EINVAL with the reason in err (never the password). */
int ccm_redis_connect(const struct ccm_config *cfg, int timeout_ms, redisContext **out, char *err,
                      size_t errlen);

#endif
