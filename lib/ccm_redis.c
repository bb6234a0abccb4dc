#include "ccm_redis.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_config.h"
#include "ccm_error.h"

static int copy_part(CURLU *u, CURLUPart part, char *out, size_t outlen) {
  char *value = NULL;
  out[0] = '\0';
  CURLUcode rc = curl_url_get(u, part, &value, CURLU_URLDECODE);
  if (rc != CURLUE_OK) return CCM_OK; /* absent part */
  int status = strlen(value) < outlen ? CCM_OK : CCM_EINVAL;
  if (status == CCM_OK) memcpy(out, value, strlen(value) + 1);
  curl_free(value);
  return status;
}

int ccm_redis_parse_url(const char *url, struct ccm_redis_target *out) {
  if (url == NULL || out == NULL) return CCM_EINVAL;
  memset(out, 0, sizeof *out);
  if (strncmp(url, "redis://", 8) != 0) return CCM_EINVAL;
  CURLU *u = curl_url();
  if (u == NULL) return CCM_ENOMEM;
  int status = CCM_OK;
  if (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) {
    status = CCM_EINVAL;
  }
  char port[16] = "", path[64] = "";
  if (status == CCM_OK) status = copy_part(u, CURLUPART_HOST, out->host, sizeof out->host);
  if (status == CCM_OK) status = copy_part(u, CURLUPART_PORT, port, sizeof port);
  if (status == CCM_OK) status = copy_part(u, CURLUPART_USER, out->user, sizeof out->user);
  if (status == CCM_OK) {
    status = copy_part(u, CURLUPART_PASSWORD, out->password, sizeof out->password);
  }
  if (status == CCM_OK) status = copy_part(u, CURLUPART_PATH, path, sizeof path);
  curl_url_cleanup(u);
  if (status != CCM_OK) return status;
  if (out->host[0] == '\0') return CCM_EINVAL;
  /* IPv6 literals come back bracketed; hiredis wants them bare. */
  size_t hl = strlen(out->host);
  if (out->host[0] == '[' && out->host[hl - 1] == ']') {
    memmove(out->host, out->host + 1, hl - 2);
    out->host[hl - 2] = '\0';
  }
  out->port = 6379;
  if (port[0] != '\0') {
    char *end = NULL;
    long p = strtol(port, &end, 10);
    if (*end != '\0' || p < 1 || p > 65535) return CCM_EINVAL;
    out->port = (int)p;
  }
  if (path[0] == '/' && path[1] != '\0') {
    char *end = NULL;
    long db = strtol(path + 1, &end, 10);
    if (*end != '\0' || db < 0 || db > 1000000) return CCM_EINVAL;
    out->db = (int)db;
  }
  return CCM_OK;
}

static int run_checked(redisContext *c, char *err, size_t errlen, const char *what, const char *fmt,
                       ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  int status = CCM_OK;
  if (r == NULL) {
    snprintf(err, errlen, "%s: %s", what, c->errstr);
    status = CCM_EUNAVAILABLE;
  } else if (r->type == REDIS_REPLY_ERROR) {
    snprintf(err, errlen, "%s refused: %s", what, r->str);
    status = CCM_EUNAVAILABLE;
  }
  freeReplyObject(r);
  return status;
}

int ccm_redis_connect(const struct ccm_config *cfg, int timeout_ms, redisContext **out, char *err,
                      size_t errlen) {
  char scratch[8];
  if (err == NULL) {
    err = scratch;
    errlen = sizeof scratch;
  }
  if (cfg == NULL || out == NULL) return CCM_EINVAL;
  *out = NULL;
  struct ccm_redis_target t;
  if (ccm_redis_parse_url(cfg->redis_url, &t) != CCM_OK) {
    snprintf(err, errlen, "REDIS_URL is not a valid redis:// URL");
    return CCM_EINVAL;
  }
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  redisContext *c = redisConnectWithTimeout(t.host, t.port, tv);
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  if (c->err != 0) {
    snprintf(err, errlen, "cannot connect to %s:%d: %s", t.host, t.port, c->errstr);
    redisFree(c);
    return CCM_EUNAVAILABLE;
  }
  redisSetTimeout(c, tv);
  int status = CCM_OK;
  if (t.password[0] != '\0' && t.user[0] != '\0') {
    status = run_checked(c, err, errlen, "AUTH", "AUTH %s %s", t.user, t.password);
  } else if (t.password[0] != '\0') {
    status = run_checked(c, err, errlen, "AUTH", "AUTH %s", t.password);
  }
  memset(t.password, 0, sizeof t.password);
  if (status == CCM_OK && t.db != 0) {
    status = run_checked(c, err, errlen, "SELECT", "SELECT %d", t.db);
  }
  if (status != CCM_OK) {
    redisFree(c);
    return status;
  }
  *out = c;
  return CCM_OK;
}
