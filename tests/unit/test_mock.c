/* Unit tests for mock/ccm_mock.c: each test runs a mock provider in-process
 * on an ephemeral port, with a small libmicrohttpd receiver in this file
 * playing the gateway's callback endpoint (it records every callback with
 * its headers, and answers 500 once for one chosen call_id to prove the
 * retry). libcurl is the client. Covers initiate (200, idempotency, 400s),
 * callbacks (token, fields, retry after a 500, HMAC signature), the seeded
 * outcome sequence, MOCK_OUTCOMES validation, /api/stats, active calls,
 * simulate-callback, MOCK_FAIL_RATE=1, MOCK_RESPONSE_DELAY_MS (concurrent
 * slow answers, stop while an answer is delayed), /health, 404/405 and the
 * api.log lines. */
#include <curl/curl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ccm_buf.h"
#include "ccm_config.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_mock.h"
#include "ccm_time.h"

#define TOKEN "cb-token-7f3a"
#define SECRET "sign-secret-91c2"
#define MAX_RECORDS 512
#define RESP_MAX (1024u * 1024u)
#define WAIT_MS 3000

/* ---- the callback receiver (the gateway's part) ----------------------- */

struct record {
  char method[8];
  char url[64];
  char body[1024];
  char call_id[132];
  char status[16];
  char ext_id[40];
  long long duration;
  char timestamp[40];
  char token[64];
  char content_type[64];
  char x_timestamp[32];
  char x_signature[100];
  int answered;
  int64_t at_ms;
};

static struct {
  struct MHD_Daemon *daemon;
  int port;
  pthread_mutex_t mu;
  pthread_cond_t cond;
  struct record records[MAX_RECORDS];
  int count;
  char fail_once[132]; /* answer 500 to the first callback of this call_id */
  bool failed;
} rx = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static char log_dir[64];

static void copy_header(struct MHD_Connection *conn, const char *name, char *out, size_t len) {
  const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
  snprintf(out, len, "%s", v != NULL ? v : "");
}

/* Copies the string field name of o into out ("" when absent). */
static void copy_field(json_t *o, const char *name, char *out, size_t len) {
  const char *v = json_string_value(json_object_get(o, name));
  snprintf(out, len, "%s", v != NULL ? v : "");
}

static void parse_callback(struct record *r) {
  json_t *o = json_loads(r->body, 0, NULL);
  if (o == NULL) return;
  copy_field(o, "call_id", r->call_id, sizeof r->call_id);
  copy_field(o, "status", r->status, sizeof r->status);
  copy_field(o, "external_call_id", r->ext_id, sizeof r->ext_id);
  copy_field(o, "timestamp", r->timestamp, sizeof r->timestamp);
  json_t *d = json_object_get(o, "call_duration");
  r->duration = json_is_integer(d) ? (long long)json_integer_value(d) : -1;
  json_decref(o);
}

static enum MHD_Result rx_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **req_cls) {
  (void)cls;
  (void)version;
  struct ccm_buf *body = *req_cls;
  if (body == NULL) {
    body = calloc(1, sizeof *body);
    if (body == NULL) return MHD_NO;
    ccm_buf_init(body, 1000);
    *req_cls = body;
    return MHD_YES;
  }
  if (*size > 0) {
    ccm_buf_append(body, data, *size);
    *size = 0;
    return MHD_YES;
  }
  struct record r;
  memset(&r, 0, sizeof r);
  snprintf(r.method, sizeof r.method, "%s", method);
  snprintf(r.url, sizeof r.url, "%s", url);
  snprintf(r.body, sizeof r.body, "%s", body->data != NULL ? body->data : "");
  copy_header(conn, "X-Auth-Token", r.token, sizeof r.token);
  copy_header(conn, "Content-Type", r.content_type, sizeof r.content_type);
  copy_header(conn, "X-Timestamp", r.x_timestamp, sizeof r.x_timestamp);
  copy_header(conn, "X-Signature", r.x_signature, sizeof r.x_signature);
  parse_callback(&r);
  r.at_ms = ccm_time_mono_ms();
  pthread_mutex_lock(&rx.mu);
  r.answered = 200;
  if (!rx.failed && rx.fail_once[0] != '\0' && strcmp(rx.fail_once, r.call_id) == 0) {
    rx.failed = true;
    r.answered = 500;
  }
  if (rx.count < MAX_RECORDS) rx.records[rx.count++] = r;
  pthread_cond_broadcast(&rx.cond);
  pthread_mutex_unlock(&rx.mu);
  static const char ok[] = "{\"success\": true}";
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(sizeof ok - 1, (void *)ok, MHD_RESPMEM_PERSISTENT);
  enum MHD_Result res = MHD_queue_response(conn, (unsigned)r.answered, resp);
  MHD_destroy_response(resp);
  return res;
}

static void rx_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  (void)toe;
  struct ccm_buf *body = *req_cls;
  if (body == NULL) return;
  ccm_buf_free(body);
  free(body);
  *req_cls = NULL;
}

static void rx_reset(const char *fail_once) {
  pthread_mutex_lock(&rx.mu);
  rx.count = 0;
  rx.failed = false;
  snprintf(rx.fail_once, sizeof rx.fail_once, "%s", fail_once != NULL ? fail_once : "");
  pthread_mutex_unlock(&rx.mu);
}

/* Returns how many callbacks for call_id answered with `answered` (0: any)
 * have arrived, waiting up to timeout_ms for at least want of them. */
static int rx_wait(const char *call_id, int answered, int want, int timeout_ms) {
  int64_t deadline = ccm_time_mono_ms() + timeout_ms;
  int n = 0;
  pthread_mutex_lock(&rx.mu);
  for (;;) {
    n = 0;
    for (int i = 0; i < rx.count; i++) {
      const struct record *r = &rx.records[i];
      if (strcmp(r->call_id, call_id) == 0 && (answered == 0 || r->answered == answered)) n++;
    }
    if (n >= want || ccm_time_mono_ms() >= deadline) break;
    pthread_mutex_unlock(&rx.mu);
    ccm_time_sleep_ms(5);
    pthread_mutex_lock(&rx.mu);
  }
  pthread_mutex_unlock(&rx.mu);
  return n;
}

/* Copies the nth (0-based) callback for call_id into out; false if none. */
static bool rx_get(const char *call_id, int nth, struct record *out) {
  bool found = false;
  pthread_mutex_lock(&rx.mu);
  for (int i = 0; i < rx.count && !found; i++) {
    if (strcmp(rx.records[i].call_id, call_id) != 0) continue;
    if (nth-- == 0) {
      *out = rx.records[i];
      found = true;
    }
  }
  pthread_mutex_unlock(&rx.mu);
  return found;
}

/* ---- the HTTP client ---------------------------------------------------- */

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata) {
  return ccm_buf_append(userdata, ptr, size * nmemb) == CCM_OK ? size * nmemb : 0;
}

/* Sends method path (with body and Idempotency-Key when not NULL) to the
 * mock on port; returns the HTTP status (0: no answer) and the parsed JSON
 * answer in *json (caller decrefs; may be NULL). */
static long http(int port, const char *method, const char *path, const char *body, const char *key,
                 json_t **json) {
  CURL *curl = curl_easy_init();
  assert_non_null(curl);
  char url[256], key_line[300];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
  if (key != NULL) {
    snprintf(key_line, sizeof key_line, "Idempotency-Key: %s", key);
    headers = curl_slist_append(headers, key_line);
  }
  struct ccm_buf resp;
  ccm_buf_init(&resp, RESP_MAX);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  if (body != NULL) curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  long code = 0;
  if (curl_easy_perform(curl) == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  if (json != NULL) *json = resp.data != NULL ? json_loads(resp.data, 0, NULL) : NULL;
  ccm_buf_free(&resp);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return code;
}

static long initiate(int port, const char *call_id, const char *key, json_t **json) {
  char body[256];
  snprintf(body, sizeof body,
           "{\"call_id\": \"%s\", \"phone_number\": \"+12345678900\", \"campaign_id\": 1, "
           "\"campaign_name\": \"Test\", \"attempt\": 1}",
           call_id);
  return http(port, "POST", "/api/initiate-call", body, key, json);
}

static json_t *get_json(int port, const char *path) {
  json_t *j = NULL;
  assert_int_equal(http(port, "GET", path, NULL, NULL, &j), 200);
  assert_non_null(j);
  return j;
}

static long long jint(json_t *o, const char *path) {
  /* path "a.b.c": nested object lookup */
  char copy[256];
  snprintf(copy, sizeof copy, "%s", path);
  json_t *v = o;
  char *save = NULL;
  for (char *part = strtok_r(copy, ".", &save); part != NULL; part = strtok_r(NULL, ".", &save)) {
    v = json_object_get(v, part);
  }
  assert_true(json_is_integer(v));
  return (long long)json_integer_value(v);
}

/* ---- mock set-up ------------------------------------------------------- */

static char url_buf[128];
static char token_buf[] = TOKEN;
static char outcomes_buf[128];
static char secret_buf[] = SECRET;

static void base_config(struct ccm_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  snprintf(url_buf, sizeof url_buf, "http://127.0.0.1:%d/api/v1/callback/", rx.port);
  snprintf(outcomes_buf, sizeof outcomes_buf, "PICKED:0.60,DISCONNECTED:0.25,RNR:0.15");
  cfg->callback_url = url_buf;
  cfg->mock_callback_token = token_buf;
  cfg->mock_outcomes = outcomes_buf;
  cfg->mock_port = 0;
  cfg->mock_delay_min_ms = 0;
  cfg->mock_delay_max_ms = 50;
  cfg->mock_seed = 12345;
  cfg->mock_seed_set = true;
}

static struct ccm_mock *start(const struct ccm_config *cfg) {
  struct ccm_mock *m = NULL;
  char err[256] = "";
  int rc = ccm_mock_start(cfg, NULL, &m, err, sizeof err);
  if (rc != CCM_OK) fprintf(stderr, "ccm_mock_start: %s\n", err);
  assert_int_equal(rc, CCM_OK);
  assert_non_null(m);
  assert_true(ccm_mock_port(m) > 0);
  return m;
}

static struct ccm_mock *start_default(void) {
  struct ccm_config cfg;
  base_config(&cfg);
  return start(&cfg);
}

/* ---- tests ------------------------------------------------------------- */

static void test_health_and_routes(void **state) {
  (void)state;
  struct ccm_mock *m = start_default();
  int port = ccm_mock_port(m);
  json_t *j = get_json(port, "/health");
  assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
  json_decref(j);
  j = get_json(port, "/health/");
  json_decref(j);
  assert_int_equal(http(port, "GET", "/nowhere", NULL, NULL, &j), 404);
  assert_non_null(j); /* a JSON error */
  assert_non_null(json_object_get(j, "error"));
  json_decref(j);
  assert_int_equal(http(port, "GET", "/api/initiate-call", NULL, NULL, &j), 405);
  json_decref(j);
  assert_int_equal(http(port, "DELETE", "/api/stats", NULL, NULL, NULL), 405);
  ccm_mock_stop(m);
}

static void check_callback_fields(const struct record *r, const char *call_id, const char *ext) {
  assert_string_equal(r->method, "PUT");
  assert_string_equal(r->url, "/api/v1/callback/");
  assert_string_equal(r->token, TOKEN);
  assert_string_equal(r->content_type, "application/json");
  assert_string_equal(r->call_id, call_id);
  assert_string_equal(r->ext_id, ext);
  bool picked = strcmp(r->status, "PICKED") == 0;
  assert_true(picked || strcmp(r->status, "DISCONNECTED") == 0 || strcmp(r->status, "RNR") == 0);
  if (picked) {
    assert_in_range(r->duration, 10, 300);
  } else {
    assert_in_range(r->duration, 0, 10);
  }
  /* ISO-8601 UTC: 2025-01-24T10:30:00Z */
  assert_int_equal(strlen(r->timestamp), 20);
  assert_int_equal(r->timestamp[10], 'T');
  assert_int_equal(r->timestamp[19], 'Z');
}

static void test_initiate_and_idempotency(void **state) {
  (void)state;
  rx_reset(NULL);
  struct ccm_mock *m = start_default();
  int port = ccm_mock_port(m);
  json_t *a = NULL, *b = NULL;
  assert_int_equal(initiate(port, "call-idem", "call-idem:1", &a), 200);
  assert_non_null(a);
  assert_true(json_is_true(json_object_get(a, "success")));
  assert_string_equal(json_string_value(json_object_get(a, "status")), "initiated");
  assert_string_equal(json_string_value(json_object_get(a, "call_id")), "call-idem");
  const char *ext = json_string_value(json_object_get(a, "external_call_id"));
  assert_non_null(ext);
  assert_memory_equal(ext, "ext_", 4);
  assert_true(strlen(ext) > 4);
  /* the same key again, also on the seed README's path */
  assert_int_equal(http(port, "POST", "/initiate-call",
                        "{\"call_id\": \"call-idem\", \"phone_number\": \"+12345678900\", "
                        "\"campaign_id\": 1}",
                        "call-idem:1", &b),
                   200);
  assert_string_equal(json_string_value(json_object_get(b, "external_call_id")), ext);
  /* without the header the key is <call_id>:<attempt> */
  json_t *c = NULL;
  assert_int_equal(http(port, "POST", "/api/initiate-call",
                        "{\"call_id\": \"call-nokey\", \"phone_number\": \"+1999\", "
                        "\"campaign_id\": 2, \"attempt\": 3}",
                        NULL, &c),
                   200);
  const char *ext2 = json_string_value(json_object_get(c, "external_call_id"));
  assert_string_not_equal(ext2, ext);

  assert_int_equal(rx_wait("call-idem", 200, 1, WAIT_MS), 1);
  assert_int_equal(rx_wait("call-nokey", 200, 1, WAIT_MS), 1);
  ccm_time_sleep_ms(100); /* nothing more may arrive for the repeated key */
  assert_int_equal(rx_wait("call-idem", 0, 2, 0), 1);
  struct record r;
  assert_true(rx_get("call-idem", 0, &r));
  check_callback_fields(&r, "call-idem", ext);
  assert_string_equal(r.x_signature, ""); /* no secret: not signed */
  assert_true(rx_get("call-nokey", 0, &r));
  check_callback_fields(&r, "call-nokey", ext2);

  json_t *s = get_json(port, "/api/stats");
  assert_int_equal(jint(s, "requests"), 3);
  assert_int_equal(jint(s, "dials"), 2);
  assert_int_equal(jint(s, "by_key.call-idem:1.requests"), 2);
  assert_int_equal(jint(s, "by_key.call-idem:1.dials"), 1);
  assert_int_equal(jint(s, "by_key.call-nokey:3.requests"), 1);
  assert_int_equal(jint(s, "by_key.call-nokey:3.dials"), 1);
  long long sent = jint(s, "callbacks_sent.PICKED") + jint(s, "callbacks_sent.DISCONNECTED") +
                   jint(s, "callbacks_sent.RNR") + jint(s, "callbacks_sent.FAILED");
  assert_int_equal(sent, 2);
  json_decref(s);
  s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 0);
  assert_int_equal(json_array_size(json_object_get(s, "active_calls")), 0);
  json_decref(s);
  json_decref(a);
  json_decref(b);
  json_decref(c);
  ccm_mock_stop(m);
}

static void test_bad_requests(void **state) {
  (void)state;
  struct ccm_mock *m = start_default();
  int port = ccm_mock_port(m);
  static const char *const bodies[] = {
      "{\"phone_number\": \"+1234567\", \"campaign_id\": 1}",
      "{\"call_id\": \"x\", \"campaign_id\": 1}",
      "{\"call_id\": \"x\", \"phone_number\": \"+1234567\"}",
      "{\"call_id\": 5, \"phone_number\": \"+1234567\", \"campaign_id\": 1}",
      "{\"call_id\": \"x\", \"phone_number\": \"+1234567\", \"campaign_id\": 1, \"attempt\": 0}",
      "{\"call_id\": \"x\", \"phone_number\": ",
      "not json",
      "[1, 2]",
      "",
  };
  for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    json_t *j = NULL;
    long code = http(port, "POST", "/api/initiate-call", bodies[i], NULL, &j);
    if (code != 400) fprintf(stderr, "body %zu: %ld\n", i, code);
    assert_int_equal(code, 400);
    assert_non_null(j);
    assert_true(json_is_string(json_object_get(j, "error")));
    json_decref(j);
  }
  json_t *s = get_json(port, "/api/stats");
  assert_int_equal(jint(s, "dials"), 0);
  json_decref(s);
  ccm_mock_stop(m);
}

static void test_callback_retry(void **state) {
  (void)state;
  rx_reset("call-retry");
  struct ccm_mock *m = start_default(); /* default retry: 1 s */
  int port = ccm_mock_port(m);
  json_t *a = NULL;
  assert_int_equal(initiate(port, "call-retry", NULL, &a), 200);
  assert_int_equal(rx_wait("call-retry", 500, 1, WAIT_MS), 1);
  json_t *s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 1); /* not delivered yet */
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(json_object_get(s, "active_calls"), 0), "call_id")),
                      "call-retry");
  json_decref(s);
  assert_int_equal(rx_wait("call-retry", 200, 1, WAIT_MS), 1);
  struct record first, second;
  assert_true(rx_get("call-retry", 0, &first));
  assert_true(rx_get("call-retry", 1, &second));
  assert_int_equal(first.answered, 500);
  assert_int_equal(second.answered, 200);
  assert_true(second.at_ms - first.at_ms >= 900);
  assert_string_equal(first.body, second.body); /* the same callback, resent */
  check_callback_fields(&second, "call-retry",
                        json_string_value(json_object_get(a, "external_call_id")));
  ccm_time_sleep_ms(20);
  s = get_json(port, "/api/stats");
  long long sent = jint(s, "callbacks_sent.PICKED") + jint(s, "callbacks_sent.DISCONNECTED") +
                   jint(s, "callbacks_sent.RNR") + jint(s, "callbacks_sent.FAILED");
  assert_int_equal(sent, 1); /* the 500 is not counted */
  assert_int_equal(jint(s, "dials"), 1);
  json_decref(s);
  s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 0);
  json_decref(s);
  json_decref(a);
  ccm_mock_stop(m);
}

#define SEQ_LEN 24

/* Dials SEQ_LEN calls "<prefix>-<i>" on a mock with seed and collects each
 * callback's status and duration in dial order. */
static void run_sequence(unsigned long seed, const char *prefix, char status[][16],
                         long long *duration) {
  struct ccm_config cfg;
  base_config(&cfg);
  cfg.mock_seed = seed;
  cfg.mock_delay_max_ms = 20;
  struct ccm_mock *m = start(&cfg);
  char id[64];
  for (int i = 0; i < SEQ_LEN; i++) {
    snprintf(id, sizeof id, "%s-%d", prefix, i);
    assert_int_equal(initiate(ccm_mock_port(m), id, NULL, NULL), 200);
  }
  for (int i = 0; i < SEQ_LEN; i++) {
    snprintf(id, sizeof id, "%s-%d", prefix, i);
    assert_int_equal(rx_wait(id, 200, 1, WAIT_MS), 1);
    struct record r;
    assert_true(rx_get(id, 0, &r));
    snprintf(status[i], 16, "%s", r.status);
    duration[i] = r.duration;
  }
  ccm_mock_stop(m);
}

static void test_seed_is_deterministic(void **state) {
  (void)state;
  rx_reset(NULL);
  char s1[SEQ_LEN][16], s2[SEQ_LEN][16], s3[SEQ_LEN][16];
  long long d1[SEQ_LEN], d2[SEQ_LEN], d3[SEQ_LEN];
  run_sequence(777, "seqA", s1, d1);
  run_sequence(777, "seqB", s2, d2);
  run_sequence(778, "seqC", s3, d3);
  bool same_other_seed = true;
  int picked = 0;
  for (int i = 0; i < SEQ_LEN; i++) {
    assert_string_equal(s1[i], s2[i]);
    assert_int_equal(d1[i], d2[i]);
    if (strcmp(s1[i], s3[i]) != 0 || d1[i] != d3[i]) same_other_seed = false;
    if (strcmp(s1[i], "PICKED") == 0) picked++;
  }
  assert_false(same_other_seed);
  assert_true(picked > 0 && picked < SEQ_LEN); /* a mix, drawn by the weights */
}

static void test_outcomes_validation(void **state) {
  (void)state;
  char err[256];
  assert_int_equal(
      ccm_mock_check_outcomes("PICKED:0.60,DISCONNECTED:0.25,RNR:0.15", err, sizeof err), CCM_OK);
  assert_int_equal(ccm_mock_check_outcomes(" FAILED : 1 , RNR:0", err, sizeof err), CCM_OK);
  static const char *const bad[] = {"BUSY:1", "PICKED:0",  "PICKED:x",
                                    "PICKED", "PICKED:-1", "PICKED:1,PICKED:1",
                                    "",       ",,",        "PICKED:1,RNR:"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    assert_int_equal(ccm_mock_check_outcomes(bad[i], err, sizeof err), CCM_EINVAL);
    assert_non_null(strstr(err, "MOCK_OUTCOMES"));
  }
  /* and at start */
  struct ccm_config cfg;
  base_config(&cfg);
  snprintf(outcomes_buf, sizeof outcomes_buf, "PICKED:1,BUSY:1");
  struct ccm_mock *m = NULL;
  err[0] = '\0';
  assert_int_equal(ccm_mock_start(&cfg, NULL, &m, err, sizeof err), CCM_EINVAL);
  assert_null(m);
  assert_non_null(strstr(err, "MOCK_OUTCOMES"));
  assert_non_null(strstr(err, "BUSY"));
  /* a single outcome: every callback has it */
  rx_reset(NULL);
  base_config(&cfg);
  snprintf(outcomes_buf, sizeof outcomes_buf, "FAILED:2");
  m = start(&cfg);
  assert_int_equal(initiate(ccm_mock_port(m), "call-failed", NULL, NULL), 200);
  assert_int_equal(rx_wait("call-failed", 200, 1, WAIT_MS), 1);
  struct record r;
  assert_true(rx_get("call-failed", 0, &r));
  assert_string_equal(r.status, "FAILED");
  assert_in_range(r.duration, 0, 10);
  ccm_time_sleep_ms(20);
  json_t *s = get_json(ccm_mock_port(m), "/api/stats");
  assert_int_equal(jint(s, "callbacks_sent.FAILED"), 1);
  json_decref(s);
  ccm_mock_stop(m);
}

static void test_simulate_callback(void **state) {
  (void)state;
  rx_reset(NULL);
  struct ccm_config cfg;
  base_config(&cfg);
  cfg.mock_delay_min_ms = 60000; /* the scheduled callback never comes during the test */
  cfg.mock_delay_max_ms = 60000;
  struct ccm_mock *m = start(&cfg);
  int port = ccm_mock_port(m);
  json_t *a = NULL;
  assert_int_equal(initiate(port, "call-sim", NULL, &a), 200);
  const char *ext = json_string_value(json_object_get(a, "external_call_id"));
  json_t *s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 1);
  json_decref(s);

  json_t *j = NULL;
  assert_int_equal(http(port, "POST", "/api/simulate-callback",
                        "{\"call_id\": \"call-sim\", \"status\": \"RNR\"}", NULL, &j),
                   200);
  assert_true(json_is_true(json_object_get(j, "success")));
  json_decref(j);
  assert_int_equal(rx_wait("call-sim", 200, 1, WAIT_MS), 1);
  struct record r;
  assert_true(rx_get("call-sim", 0, &r));
  assert_string_equal(r.status, "RNR");
  assert_string_equal(r.ext_id, ext); /* the dialled call's id */
  assert_int_equal(r.duration, 0);
  assert_string_equal(r.token, TOKEN);

  assert_int_equal(http(port, "POST", "/api/simulate-callback",
                        "{\"call_id\": \"call-unknown\", \"status\": \"PICKED\"}", NULL, NULL),
                   200);
  assert_int_equal(rx_wait("call-unknown", 200, 1, WAIT_MS), 1);
  assert_true(rx_get("call-unknown", 0, &r));
  assert_string_equal(r.status, "PICKED");
  assert_memory_equal(r.ext_id, "ext_", 4);
  assert_string_not_equal(r.ext_id, ext);
  assert_in_range(r.duration, 10, 300);

  static const char *const bad[] = {"{\"status\": \"RNR\"}",
                                    "{\"call_id\": \"call-sim\", \"status\": \"BUSY\"}",
                                    "{\"call_id\": \"call-sim\"}", "{oops",
                                    "{\"call_id\": \"\", "
                                    "\"status\": \"RNR\"}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(http(port, "POST", "/api/simulate-callback", bad[i], NULL, NULL), 400);
  }
  ccm_time_sleep_ms(20);
  s = get_json(port, "/api/stats");
  assert_int_equal(jint(s, "callbacks_sent.RNR"), 1);
  assert_int_equal(jint(s, "callbacks_sent.PICKED"), 1);
  assert_int_equal(jint(s, "dials"), 1);
  json_decref(s);
  s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 0); /* its outcome was delivered */
  json_decref(s);
  json_decref(a);
  ccm_mock_stop(m); /* the superseded scheduled callback is dropped */
}

static void test_fail_rate_one(void **state) {
  (void)state;
  rx_reset(NULL);
  struct ccm_config cfg;
  base_config(&cfg);
  cfg.mock_fail_rate = 1.0;
  struct ccm_mock *m = start(&cfg);
  int port = ccm_mock_port(m);
  char id[32];
  for (int i = 0; i < 5; i++) {
    snprintf(id, sizeof id, "call-fail-%d", i);
    json_t *j = NULL;
    assert_int_equal(initiate(port, id, NULL, &j), 500);
    assert_non_null(j);
    json_decref(j);
  }
  assert_int_equal(initiate(port, "call-fail-0", NULL, NULL), 500);
  json_t *s = get_json(port, "/api/stats");
  assert_int_equal(jint(s, "requests"), 6);
  assert_int_equal(jint(s, "dials"), 0);
  assert_int_equal(jint(s, "by_key.call-fail-0:1.requests"), 2);
  assert_int_equal(jint(s, "by_key.call-fail-0:1.dials"), 0);
  json_decref(s);
  ccm_time_sleep_ms(100);
  assert_int_equal(rx_wait("call-fail-0", 0, 1, 0), 0);
  s = get_json(port, "/api/active-calls");
  assert_int_equal(jint(s, "count"), 0);
  json_decref(s);
  ccm_mock_stop(m);
}

static void test_signature(void **state) {
  (void)state;
  rx_reset(NULL);
  struct ccm_config cfg;
  base_config(&cfg);
  cfg.callback_signing_secret = secret_buf;
  struct ccm_mock *m = start(&cfg);
  assert_int_equal(initiate(ccm_mock_port(m), "call-signed", NULL, NULL), 200);
  assert_int_equal(rx_wait("call-signed", 200, 1, WAIT_MS), 1);
  struct record r;
  assert_true(rx_get("call-signed", 0, &r));
  long long ts = strtoll(r.x_timestamp, NULL, 10);
  long long now = ccm_time_now_ms() / 1000;
  assert_true(ts > now - 10 && ts <= now + 1);
  char msg[1200];
  snprintf(msg, sizeof msg, "%s.%s", r.x_timestamp, r.body);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  assert_non_null(HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const unsigned char *)msg,
                       strlen(msg), md, &len));
  char expect[100] = "sha256=";
  for (unsigned int i = 0; i < len; i++) sprintf(expect + 7 + 2 * i, "%02x", md[i]);
  assert_string_equal(r.x_signature, expect);
  ccm_mock_stop(m);
}

#define SLOW_MS 600

struct slow_call {
  int port;
  char call_id[32];
  long code;
  int64_t elapsed;
};

static void *slow_call_main(void *arg) {
  struct slow_call *c = arg;
  int64_t t0 = ccm_time_mono_ms();
  c->code = initiate(c->port, c->call_id, NULL, NULL);
  c->elapsed = ccm_time_mono_ms() - t0;
  return NULL;
}

static void test_response_delay(void **state) {
  (void)state;
  rx_reset(NULL);
  struct ccm_config cfg;
  base_config(&cfg);
  cfg.mock_response_delay_ms = SLOW_MS;
  struct ccm_mock_options opts = {.http_threads = 1}; /* one thread: delays must not block it */
  struct ccm_mock *m = NULL;
  assert_int_equal(ccm_mock_start(&cfg, &opts, &m, NULL, 0), CCM_OK);
  struct slow_call calls[4];
  pthread_t threads[4];
  int64_t t0 = ccm_time_mono_ms();
  for (int i = 0; i < 4; i++) {
    calls[i] = (struct slow_call){.port = ccm_mock_port(m)};
    snprintf(calls[i].call_id, sizeof calls[i].call_id, "call-slow-%d", i);
    assert_int_equal(pthread_create(&threads[i], NULL, slow_call_main, &calls[i]), 0);
  }
  ccm_time_sleep_ms(50);
  int64_t h0 = ccm_time_mono_ms();
  json_t *h = get_json(ccm_mock_port(m), "/health"); /* not delayed, not blocked */
  json_decref(h);
  assert_true(ccm_time_mono_ms() - h0 < SLOW_MS / 2);
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    assert_int_equal(calls[i].code, 200);
    assert_true(calls[i].elapsed >= SLOW_MS - 10);
  }
  assert_true(ccm_time_mono_ms() - t0 < 3 * SLOW_MS); /* concurrent, not 4 x SLOW_MS */

  /* stopping while an answer is delayed: it is sent at once, no abort */
  cfg.mock_response_delay_ms = 5000;
  struct ccm_mock *m2 = start(&cfg);
  struct slow_call late = {.port = ccm_mock_port(m2)};
  snprintf(late.call_id, sizeof late.call_id, "call-late");
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, slow_call_main, &late), 0);
  ccm_time_sleep_ms(150);
  int64_t s0 = ccm_time_mono_ms();
  ccm_mock_stop(m2);
  pthread_join(t, NULL);
  assert_true(ccm_time_mono_ms() - s0 < 2000);
  assert_true(late.elapsed < 2000);
  assert_int_equal(late.code, 200);
  ccm_mock_stop(m);
}

static bool file_contains(const char *name, const char *needle) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", log_dir, name);
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  char line[CCM_LOG_MAX_LINE];
  bool found = false;
  while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, needle) != NULL;
  fclose(f);
  return found;
}

static void test_logs(void **state) {
  (void)state;
  assert_true(file_contains("api.log", "Incoming Request: POST /api/initiate-call status=200"));
  assert_true(file_contains("api.log", "Incoming Request: POST /api/initiate-call status=400"));
  assert_true(file_contains("api.log", "Incoming Request: GET /health status=200 latency_ms="));
  assert_true(file_contains("calls.log", "Callback sent: call-idem"));
  assert_true(file_contains("calls.log", "Callback for call-retry status="));
  static const char *const files[] = {"app.log",   "error.log", "debug.log",
                                      "calls.log", "api.log",   "kafka.log"};
  for (size_t i = 0; i < 6; i++) {
    assert_false(file_contains(files[i], TOKEN));
    assert_false(file_contains(files[i], SECRET));
  }
}

/* ---- main -------------------------------------------------------------- */

static int group_setup(void **state) {
  (void)state;
  snprintf(log_dir, sizeof log_dir, "/tmp/ccm-test-mock-XXXXXX");
  if (mkdtemp(log_dir) == NULL) return -1;
  if (ccm_log_open(log_dir, CCM_LOG_DEBUG) != CCM_OK) return -1;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
  rx.daemon =
      MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, rx_handler,
                       NULL, MHD_OPTION_NOTIFY_COMPLETED, rx_completed, NULL, MHD_OPTION_END);
  if (rx.daemon == NULL) return -1;
  rx.port = MHD_get_daemon_info(rx.daemon, MHD_DAEMON_INFO_BIND_PORT)->port;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  MHD_stop_daemon(rx.daemon);
  curl_global_cleanup();
  ccm_log_close();
  static const char *const files[] = {"app.log", "error.log", "debug.log",    "calls.log",
                                      "api.log", "kafka.log", ".ccm-log.lock"};
  char path[256];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", log_dir, files[i]);
    unlink(path);
  }
  rmdir(log_dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_health_and_routes),
      cmocka_unit_test(test_initiate_and_idempotency),
      cmocka_unit_test(test_bad_requests),
      cmocka_unit_test(test_callback_retry),
      cmocka_unit_test(test_seed_is_deterministic),
      cmocka_unit_test(test_outcomes_validation),
      cmocka_unit_test(test_simulate_callback),
      cmocka_unit_test(test_fail_rate_one),
      cmocka_unit_test(test_signature),
      cmocka_unit_test(test_response_delay),
      cmocka_unit_test(test_logs),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
