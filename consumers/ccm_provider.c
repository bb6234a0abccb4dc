#include "ccm_provider.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_buf.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_time.h"

#define RESPONSE_MAX (64u * 1024u)
#define RETRIES 3
#define RETRY_FIRST_MS 1000

struct ccm_provider {
  CURL *curl;
  const struct ccm_config *cfg;
  struct ccm_buf body;
};

static size_t collect(char *data, size_t size, size_t n, void *userdata) {
  struct ccm_buf *b = userdata;
  /* Past the limit the transfer is aborted: a provider answer is small. */
  return ccm_buf_append(b, data, size * n) == CCM_OK ? size * n : 0;
}

struct ccm_provider *ccm_provider_create(const struct ccm_config *cfg) {
  struct ccm_provider *p = calloc(1, sizeof *p);
  if (p == NULL) return NULL;
  p->curl = curl_easy_init();
  if (p->curl == NULL) {
    free(p);
    return NULL;
  }
  p->cfg = cfg;
  ccm_buf_init(&p->body, RESPONSE_MAX);
  return p;
}

void ccm_provider_destroy(struct ccm_provider *p) {
  if (p == NULL) return;
  curl_easy_cleanup(p->curl);
  ccm_buf_free(&p->body);
  free(p);
}

/* One HTTP exchange. Returns the HTTP status, or 0 for a transport error
 * (timeout, refused connection). */
static long post_once(struct ccm_provider *p, const char *json, const char *key, char *err,
                      size_t errlen) {
  char header[300];
  snprintf(header, sizeof header, "Idempotency-Key: %s", key);
  struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *more = headers != NULL ? curl_slist_append(headers, header) : NULL;
  if (more == NULL) {
    curl_slist_free_all(headers);
    snprintf(err, errlen, "out of memory");
    return 0;
  }
  headers = more;
  ccm_buf_reset(&p->body);
  CURL *c = p->curl;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, p->cfg->external_service_url);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)p->cfg->external_timeout_seconds);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &p->body);
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    snprintf(err, errlen, "provider request failed: %s", curl_easy_strerror(rc));
    return 0;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (status < 200 || status >= 300) snprintf(err, errlen, "provider answered HTTP %ld", status);
  return status;
}

static int parse_answer(struct ccm_provider *p, char external_id[CCM_PROVIDER_ID_MAX + 1],
                        char *err, size_t errlen) {
  json_error_t jerr;
  json_t *root = p->body.data != NULL ? json_loadb(p->body.data, p->body.len, 0, &jerr) : NULL;
  const char *id = json_string_value(json_object_get(root, "external_call_id"));
  int rc = CCM_OK;
  if (id == NULL || id[0] == '\0' || strlen(id) > CCM_PROVIDER_ID_MAX) {
    snprintf(err, errlen, "provider answer without a usable external_call_id");
    rc = CCM_EPRECOND;
  } else {
    memcpy(external_id, id, strlen(id) + 1);
  }
  json_decref(root);
  return rc;
}

int ccm_provider_initiate(struct ccm_provider *p, const struct ccm_provider_request *req,
                          atomic_bool *stop, char external_id[CCM_PROVIDER_ID_MAX + 1], char *err,
                          size_t errlen) {
  if (p == NULL || req == NULL || external_id == NULL) return CCM_EINVAL;
  json_t *body =
      json_pack("{s:s, s:s, s:I, s:s, s:i}", "call_id", req->call_id, "phone_number",
                req->phone_number, "campaign_id", (json_int_t)req->campaign_id, "campaign_name",
                req->campaign_name != NULL ? req->campaign_name : "", "attempt", req->attempt);
  char *json = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (json == NULL) {
    snprintf(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  char key[200];
  snprintf(key, sizeof key, "%s:%d", req->call_id, req->attempt);
  int rc = CCM_EUNAVAILABLE;
  for (int attempt = 0; attempt <= RETRIES; attempt++) {
    if (attempt > 0) {
      int64_t wait = (int64_t)RETRY_FIRST_MS << (attempt - 1);
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_WARNING, "calls.provider",
                    "Call %s attempt %d: %s; retrying in %lld ms", req->call_id, req->attempt, err,
                    (long long)wait);
      for (int64_t waited = 0; waited < wait && !atomic_load(stop); waited += 100) {
        ccm_time_sleep_ms(100);
      }
      if (atomic_load(stop)) {
        rc = CCM_ECONFLICT;
        break;
      }
    }
    long status = post_once(p, json, key, err, errlen);
    if (status >= 200 && status < 300) {
      rc = parse_answer(p, external_id, err, errlen);
      break;
    }
    if (status >= 400 && status < 500) {
      rc = CCM_EPRECOND;
      break;
    }
  }
  free(json);
  return rc;
}
