/* End-to-end tests of `ccm server` from C, as a gRPC client written in C sees
 * it: the gateway's client module (ccm_rpc_client, blocking and asynchronous
 * calls) and the protobuf-c messages generated from proto/. Run by
 * tests/e2e/test_grpc_c.sh against a live server with no consumers, so that
 * every accepted call stays INITIATED and holds its concurrency slot.
 *
 *   e2e_grpc_client limit   on a fresh database with MAX_CONCURRENT_CALLS=50:
 *                           200 parallel InitiateCall to distinct numbers give
 *                           exactly 50 OK and 150 RESOURCE_EXHAUSTED
 *                           (concurrency_limit); Redis agrees with PostgreSQL.
 *   e2e_grpc_client api     (server restarted with free slots) every RPC's
 *                           success and documented errors, auth, health,
 *                           deadlines, and 20 parallel InitiateCall to one
 *                           number giving exactly one OK.
 *
 * Prints PASS or FAIL per check (with the reasons of a failure) and exits 1
 * when any check failed, 2 on a usage or set-up error. Reads GRPC_TARGET or
 * GRPC_PORT, DB_HOST/DB_PORT/DB_USER/DB_NAME, REDIS_URL and
 * MAX_CONCURRENT_CALLS from the environment; shells out to psql and
 * redis-cli for the audits. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_error.h"
#include "ccm_rpc_client.h"
#include "grpc/health/v1/health.pb-c.h"

#define CM "/callmanager.v1.CallManager/"
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define TOKEN "dev-token-12345"
#define OTHER_TOKEN "another-token-67890"
#define TIMEOUT_MS 30000
#define RACE_CALLS 200
#define SAME_NUMBER_CALLS 20

#define MSG_NO_TOKEN "Authentication credentials were not provided or are invalid."
#define MSG_BAD_TOKEN "Invalid authentication token."
#define MSG_NO_CAMPAIGN "Campaign not found or inactive."
#define MSG_NO_CALL "Call not found."
#define MSG_REQUIRED "phone_number and campaign_id are required"
#define MSG_BAD_PHONE "Invalid phone number format. Must start with + and contain digits."
#define MSG_BAD_STATUS "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED"
#define MSG_DUPLICATE "A call to this number is already in progress or was made recently."
#define MSG_LIMIT "Maximum concurrent calls limit reached. Please try again later."
#define MSG_IDEMPOTENCY "Idempotency-Key reused with a different request."
#define MSG_PHONE_COUNT "phone_numbers must contain 1 to 10000 entries"

typedef struct ccm_rpc_call_result result_t;

static struct ccm_rpc_client *g_client;
static bool g_check_failed;
static int g_passed;
static int g_failed;
static long g_max_calls;
static unsigned g_number_seq;
static int64_t g_campaign;  /* the api phase's active campaign */
static char g_call_id[256]; /* a call of the api phase, INITIATED */
static char g_call_number[32];

/* ------------------------------------------------------------ reporting --- */

static void failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void failf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("    - ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  g_check_failed = true;
}

static void run_check(const char *name, void (*fn)(void)) {
  g_check_failed = false;
  fn();
  if (g_check_failed) {
    g_failed++;
    printf("FAIL %s\n", name);
  } else {
    g_passed++;
    printf("PASS %s\n", name);
  }
  fflush(stdout);
}

static const char *status_name(int status) {
  switch (status) {
    case CCM_GRPC_OK:
      return "OK";
    case CCM_GRPC_CANCELLED:
      return "CANCELLED";
    case CCM_GRPC_UNKNOWN:
      return "UNKNOWN";
    case CCM_GRPC_INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case CCM_GRPC_DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case CCM_GRPC_NOT_FOUND:
      return "NOT_FOUND";
    case CCM_GRPC_RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case CCM_GRPC_UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case CCM_GRPC_INTERNAL:
      return "INTERNAL";
    case CCM_GRPC_UNAVAILABLE:
      return "UNAVAILABLE";
    case CCM_GRPC_UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "other";
  }
}

static const char *or_null(const char *s) { return s != NULL ? s : "(null)"; }

static void expect_true(bool ok, const char *what) {
  if (!ok) failf("%s", what);
}

static void expect_int(const char *what, long long got, long long want) {
  if (got != want) failf("%s: got %lld, want %lld", what, got, want);
}

static void expect_str(const char *what, const char *got, const char *want) {
  if (got == NULL || strcmp(got, want) != 0) {
    failf("%s: got \"%s\", want \"%s\"", what, or_null(got), want);
  }
}

/* The call completed with OK. */
static bool expect_ok(const char *what, const result_t *r) {
  if (r->grpc_status == CCM_GRPC_OK) return true;
  failf("%s: got %s \"%s\" (reason %s), want OK", what, status_name(r->grpc_status),
        or_null(r->message), or_null(r->error_reason));
  return false;
}

/* The call failed with status; message, reason and field are checked when
 * not NULL (reason/field "" means: must be absent). */
static void expect_error(const char *what, const result_t *r, int status, const char *message,
                         const char *reason, const char *field) {
  if (r->grpc_status != status) {
    failf("%s: got %s \"%s\", want %s", what, status_name(r->grpc_status), or_null(r->message),
          status_name(status));
    return;
  }
  if (message != NULL) expect_str(what, r->message, message);
  if (reason != NULL && reason[0] == '\0' && r->error_reason != NULL) {
    failf("%s: unexpected ccm-error-reason \"%s\"", what, r->error_reason);
  } else if (reason != NULL && reason[0] != '\0') {
    if (r->error_reason == NULL || strcmp(r->error_reason, reason) != 0) {
      failf("%s: ccm-error-reason \"%s\", want \"%s\"", what, or_null(r->error_reason), reason);
    }
  }
  if (field != NULL && field[0] != '\0') {
    if (r->error_field == NULL || strcmp(r->error_field, field) != 0) {
      failf("%s: ccm-error-field \"%s\", want \"%s\"", what, or_null(r->error_field), field);
    }
  }
}

/* "YYYY-MM-DDTHH:MM:SSZ". */
static bool is_timestamp(const char *s) {
  static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
  if (s == NULL || strlen(s) != sizeof shape - 1) return false;
  for (size_t i = 0; shape[i] != '\0'; i++) {
    bool digit = s[i] >= '0' && s[i] <= '9';
    if (shape[i] == 'd' ? !digit : s[i] != shape[i]) return false;
  }
  return true;
}

/* "call_<campaign>_<number>_<14 digits>_<8 lower-case hex>". */
static bool is_call_id(const char *id, int64_t campaign, const char *number) {
  char prefix[96];
  snprintf(prefix, sizeof prefix, "call_%" PRId64 "_%s_", campaign, number);
  size_t n = strlen(prefix);
  if (id == NULL || strncmp(id, prefix, n) != 0 || strlen(id) != n + 14 + 1 + 8) return false;
  for (size_t i = 0; i < 14; i++) {
    if (id[n + i] < '0' || id[n + i] > '9') return false;
  }
  if (id[n + 14] != '_') return false;
  for (size_t i = n + 15; id[i] != '\0'; i++) {
    bool hex = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
    if (!hex) return false;
  }
  return true;
}

/* ---------------------------------------------------------------- calls --- */

static unsigned char *pack(const ProtobufCMessage *msg, size_t *len) {
  *len = protobuf_c_message_get_packed_size(msg);
  unsigned char *buf = malloc(*len > 0 ? *len : 1);
  if (buf == NULL) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  protobuf_c_message_pack(msg, buf);
  return buf;
}

/* Sends raw request bytes to a full method path with an optional token and
 * idempotency key; waits for the outcome in *out (always to be freed). */
static void call_raw(const char *path, const void *data, size_t len, const char *token,
                     const char *idempotency_key, int timeout_ms, result_t *out) {
  struct ccm_rpc_metadata md[2];
  size_t n = 0;
  if (token != NULL) md[n++] = (struct ccm_rpc_metadata){"x-auth-token", token};
  if (idempotency_key != NULL)
    md[n++] = (struct ccm_rpc_metadata){"idempotency-key", idempotency_key};
  int rc = ccm_rpc_client_call(g_client, path, data, len, md, n, timeout_ms, out);
  if (rc != CCM_OK) {
    failf("%s: ccm_rpc_client_call failed (%d)", path, rc);
    out->grpc_status = -1;
  }
}

/* One CallManager RPC with request message req. */
static void call_rpc(const char *rpc, const ProtobufCMessage *req, const char *token,
                     const char *idempotency_key, result_t *out) {
  char path[128];
  snprintf(path, sizeof path, CM "%s", rpc);
  size_t len;
  unsigned char *buf = pack(req, &len);
  call_raw(path, buf, len, token, idempotency_key, TIMEOUT_MS, out);
  free(buf);
}

/* Decodes an OK reply; NULL (reported) when it does not decode. */
static void *unpack(const ProtobufCMessageDescriptor *desc, const result_t *r) {
  static const uint8_t empty[1];
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, r->len, r->data ? r->data : empty);
  if (m == NULL) failf("%s: the reply does not decode", desc->name);
  return m;
}

static void release(void *msg) {
  if (msg != NULL) protobuf_c_message_free_unpacked(msg, NULL);
}

/* A number no earlier run on this database used: +1 <3-digit prefix> <pid> <seq>. */
static void fresh_number(const char *prefix, char *out, size_t cap) {
  snprintf(out, cap, "+1%s%04d%03u", prefix, (int)(getpid() % 10000), g_number_seq++ % 1000);
}

static int64_t create_campaign(const char *name, bool active) {
  Callmanager__V1__CreateCampaignRequest req = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
  req.name = (char *)name;
  if (!active) {
    req._is_active_case = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST___IS_ACTIVE_IS_ACTIVE;
    req.is_active = false;
  }
  result_t r;
  call_rpc("CreateCampaign", &req.base, TOKEN, NULL, &r);
  int64_t id = 0;
  if (expect_ok("CreateCampaign", &r)) {
    Callmanager__V1__CreateCampaignResponse *resp =
        unpack(&callmanager__v1__create_campaign_response__descriptor, &r);
    if (resp != NULL && resp->campaign != NULL) id = resp->campaign->id;
    release(resp);
  }
  ccm_rpc_call_result_free(&r);
  return id;
}

static void initiate(const char *number, int64_t campaign, const char *token,
                     const char *idempotency_key, result_t *out) {
  Callmanager__V1__InitiateCallRequest req = CALLMANAGER__V1__INITIATE_CALL_REQUEST__INIT;
  req.phone_number = (char *)number;
  req.campaign_id = campaign;
  call_rpc("InitiateCall", &req.base, token, idempotency_key, out);
}

static Callmanager__V1__GetCallResponse *get_call(const char *call_id, result_t *r) {
  Callmanager__V1__GetCallRequest req = CALLMANAGER__V1__GET_CALL_REQUEST__INIT;
  req.call_id = (char *)call_id;
  call_rpc("GetCall", &req.base, TOKEN, NULL, r);
  if (r->grpc_status != CCM_GRPC_OK) return NULL;
  return unpack(&callmanager__v1__get_call_response__descriptor, r);
}

static Callmanager__V1__GetMetricsResponse *get_metrics(void) {
  Callmanager__V1__GetMetricsRequest req = CALLMANAGER__V1__GET_METRICS_REQUEST__INIT;
  result_t r;
  call_rpc("GetMetrics", &req.base, TOKEN, NULL, &r);
  Callmanager__V1__GetMetricsResponse *m = NULL;
  if (expect_ok("GetMetrics", &r))
    m = unpack(&callmanager__v1__get_metrics_response__descriptor, &r);
  ccm_rpc_call_result_free(&r);
  return m;
}

/* --------------------------------------------------------------- audits --- */

static const char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? v : fallback;
}

/* Runs a shell command and returns its first output line as a number, or
 * -1 (reported) when it fails. */
static long long command_number(const char *cmd) {
  FILE *p = popen(cmd, "r");
  if (p == NULL) {
    failf("cannot run: %s", cmd);
    return -1;
  }
  char line[128] = "";
  bool got = fgets(line, sizeof line, p) != NULL;
  int rc = pclose(p);
  char *end = NULL;
  long long v = got ? strtoll(line, &end, 10) : -1;
  if (!got || rc != 0 || end == line) {
    failf("command failed (status %d, output \"%s\"): %s", rc, line, cmd);
    return -1;
  }
  return v;
}

/* COUNT(*) of calls holding a slot, from PostgreSQL. */
static long long db_in_flight(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "psql -X -A -t -h '%s' -p '%s' -U '%s' -d '%s' -c \"SELECT count(*) FROM "
           "calls_calllog WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING')\"",
           env_or("DB_HOST", "localhost"), env_or("DB_PORT", "5432"),
           env_or("DB_USER", "campaign_user"), env_or("DB_NAME", "campaign_db"));
  return command_number(cmd);
}

/* GET active_calls_count (REDIS_CONCURRENCY_KEY) from REDIS_URL's database. */
static long long redis_active_count(void) {
  const char *url = env_or("REDIS_URL", "redis://localhost:6379/0");
  char host[128] = "localhost";
  int port = 6379;
  int db = 0;
  const char *p = strstr(url, "://");
  p = p != NULL ? p + 3 : url;
  const char *at = strchr(p, '@');
  if (at != NULL) p = at + 1;
  size_t hl = strcspn(p, ":/");
  if (hl > 0 && hl < sizeof host) {
    memcpy(host, p, hl);
    host[hl] = '\0';
  }
  p += hl;
  if (*p == ':') port = (int)strtol(p + 1, (char **)&p, 10);
  if (*p == '/') db = (int)strtol(p + 1, NULL, 10);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "redis-cli -h '%s' -p %d -n %d GET '%s'", host, port, db,
           env_or("REDIS_CONCURRENCY_KEY", "active_calls_count"));
  return command_number(cmd);
}

static void expect_slots_agree(const char *when, long long want) {
  long long redis = redis_active_count();
  long long db = db_in_flight();
  char what[128];
  snprintf(what, sizeof what, "%s: Redis active_calls_count = database in-flight calls", when);
  expect_int(what, redis, db);
  if (want >= 0) {
    snprintf(what, sizeof what, "%s: database in-flight calls", when);
    expect_int(what, db, want);
  }
}

/* ------------------------------------------------- phase 1: the limit --- */

struct race;

struct race_slot {
  struct race *race;
  int status;
  char reason[64];
  char message[CCM_RPC_CLIENT_MAX_MESSAGE];
};

struct race {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  int pending;
  struct race_slot slots[RACE_CALLS];
};

/* Completion of one asynchronous InitiateCall (completion-queue thread). */
static void race_done(void *user, const struct ccm_rpc_reply *reply) {
  struct race_slot *slot = user;
  slot->status = reply->grpc_status;
  snprintf(slot->reason, sizeof slot->reason, "%s", or_null(reply->error_reason));
  snprintf(slot->message, sizeof slot->message, "%s", reply->message);
  pthread_mutex_lock(&slot->race->mu);
  slot->race->pending--;
  pthread_cond_signal(&slot->race->cond);
  pthread_mutex_unlock(&slot->race->mu);
}

static void check_server_fresh(void) {
  Callmanager__V1__GetMetricsResponse *m = get_metrics();
  if (m == NULL) return;
  expect_int("max_concurrent_calls", m->max_concurrent_calls, g_max_calls);
  expect_int("current_concurrent_calls on a fresh database", m->current_concurrent_calls, 0);
  release(m);
  expect_slots_agree("before the race", 0);
}

static void check_concurrency_limit_race(void) {
  int64_t campaign = create_campaign("C race", true);
  if (campaign == 0) return;
  struct race *race = calloc(1, sizeof *race);
  if (race == NULL) {
    failf("out of memory");
    return;
  }
  pthread_mutex_init(&race->mu, NULL);
  pthread_cond_init(&race->cond, NULL);
  struct ccm_rpc_metadata md[] = {{"x-auth-token", TOKEN}};
  /* Pack all the requests first so that the calls start back to back. */
  unsigned char *bufs[RACE_CALLS];
  size_t lens[RACE_CALLS];
  for (int i = 0; i < RACE_CALLS; i++) {
    char number[32];
    snprintf(number, sizeof number, "+1900555%04d", i);
    Callmanager__V1__InitiateCallRequest req = CALLMANAGER__V1__INITIATE_CALL_REQUEST__INIT;
    req.phone_number = number;
    req.campaign_id = campaign;
    bufs[i] = pack(&req.base, &lens[i]);
  }
  int started = 0;
  for (int i = 0; i < RACE_CALLS; i++) {
    race->slots[i].race = race;
    pthread_mutex_lock(&race->mu);
    race->pending++;
    pthread_mutex_unlock(&race->mu);
    int rc = ccm_rpc_client_start(g_client, CM "InitiateCall", bufs[i], lens[i], md, 1, TIMEOUT_MS,
                                  race_done, &race->slots[i]);
    if (rc != CCM_OK) {
      failf("ccm_rpc_client_start #%d failed (%d)", i, rc);
      pthread_mutex_lock(&race->mu);
      race->pending--;
      pthread_mutex_unlock(&race->mu);
      race->slots[i].status = -1;
      continue;
    }
    started++;
  }
  pthread_mutex_lock(&race->mu);
  while (race->pending > 0) pthread_cond_wait(&race->cond, &race->mu);
  pthread_mutex_unlock(&race->mu);
  int ok = 0;
  int limited = 0;
  int first_ok = -1;
  for (int i = 0; i < RACE_CALLS; i++) {
    const struct race_slot *s = &race->slots[i];
    if (s->status == CCM_GRPC_OK) {
      if (first_ok < 0) first_ok = i;
      ok++;
    } else if (s->status == CCM_GRPC_RESOURCE_EXHAUSTED &&
               strcmp(s->reason, "concurrency_limit") == 0 && strcmp(s->message, MSG_LIMIT) == 0) {
      limited++;
    } else {
      failf("call #%d: %s \"%s\" (reason %s)", i, status_name(s->status), s->message, s->reason);
    }
    free(bufs[i]);
  }
  printf("    %d calls started: %d OK, %d RESOURCE_EXHAUSTED (concurrency_limit)\n", started, ok,
         limited);
  expect_int("OK answers", ok, g_max_calls);
  expect_int("RESOURCE_EXHAUSTED concurrency_limit answers", limited, RACE_CALLS - g_max_calls);
  pthread_cond_destroy(&race->cond);
  pthread_mutex_destroy(&race->mu);
  free(race);
  expect_slots_agree("after the race", g_max_calls);

  Callmanager__V1__GetMetricsResponse *m = get_metrics();
  if (m != NULL) {
    expect_int("current_concurrent_calls", m->current_concurrent_calls, g_max_calls);
    expect_str("system_status", m->system_status, "at_capacity");
    if (m->n_recent_metrics > 0) {
      expect_int("peak_concurrent_calls today", m->recent_metrics[0]->peak_concurrent_calls,
                 g_max_calls);
      expect_int("total_calls_initiated today", m->recent_metrics[0]->total_calls_initiated,
                 g_max_calls);
    }
    release(m);
  }
  /* At capacity: one more is refused; a duplicate is still a duplicate. */
  result_t r;
  initiate("+19005559999", campaign, TOKEN, NULL, &r);
  expect_error("one more call", &r, CCM_GRPC_RESOURCE_EXHAUSTED, MSG_LIMIT, "concurrency_limit",
               NULL);
  ccm_rpc_call_result_free(&r);
  if (first_ok >= 0) {
    char number[32];
    snprintf(number, sizeof number, "+1900555%04d", first_ok);
    initiate(number, campaign, TOKEN, NULL, &r);
    expect_error("a number called in the race", &r, CCM_GRPC_RESOURCE_EXHAUSTED, MSG_DUPLICATE,
                 "duplicate_call", NULL);
    ccm_rpc_call_result_free(&r);
  }
  expect_slots_agree("after the refusals", g_max_calls);
}

/* ---------------------------------------------------- phase 2: the api --- */

static void check_health(void) {
  static const char *services[] = {"callmanager.v1.CallManager", ""};
  for (size_t i = 0; i < 2; i++) {
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)services[i];
    size_t len;
    unsigned char *buf = pack(&req.base, &len);
    result_t r;
    call_raw(HEALTH_CHECK, buf, len, NULL, NULL, TIMEOUT_MS, &r); /* no token needed */
    free(buf);
    if (expect_ok("Health/Check", &r)) {
      Grpc__Health__V1__HealthCheckResponse *h =
          unpack(&grpc__health__v1__health_check_response__descriptor, &r);
      if (h != NULL) {
        bool want_serving = i == 0;
        if (want_serving) {
          expect_int("CallManager service status", h->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        } else {
          expect_true(
              h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ||
                  h->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING,
              "overall status is SERVING or NOT_SERVING");
        }
      }
      release(h);
    }
    ccm_rpc_call_result_free(&r);
  }
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = "no.such.Service";
  size_t len;
  unsigned char *buf = pack(&req.base, &len);
  result_t r;
  call_raw(HEALTH_CHECK, buf, len, NULL, NULL, TIMEOUT_MS, &r);
  free(buf);
  expect_error("Health/Check of an unknown service", &r, CCM_GRPC_NOT_FOUND, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_auth(void) {
  static const char *rpcs[] = {"CreateCampaign",  "ListCampaigns", "GetCampaign",
                               "AddPhoneNumbers", "InitiateCall",  "ProcessCallback",
                               "GetCall",         "GetMetrics"};
  struct {
    const char *token;
    const char *message;
  } cases[] = {{NULL, MSG_NO_TOKEN},
               {"", MSG_NO_TOKEN},
               {"wrong", MSG_BAD_TOKEN},
               {"dev-token-1234", MSG_BAD_TOKEN},
               {"dev-token-123456", MSG_BAD_TOKEN}};
  for (size_t i = 0; i < sizeof rpcs / sizeof rpcs[0]; i++) {
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
      char path[128];
      snprintf(path, sizeof path, CM "%s", rpcs[i]);
      result_t r;
      /* An empty message of any request type is a valid encoding. */
      call_raw(path, "", 0, cases[c].token, NULL, TIMEOUT_MS, &r);
      char what[160];
      snprintf(what, sizeof what, "%s with token \"%s\"", rpcs[i], or_null(cases[c].token));
      expect_error(what, &r, CCM_GRPC_UNAUTHENTICATED, cases[c].message, NULL, NULL);
      ccm_rpc_call_result_free(&r);
    }
  }
  /* The second token of VALID_TOKENS works too. */
  Callmanager__V1__GetMetricsRequest req = CALLMANAGER__V1__GET_METRICS_REQUEST__INIT;
  result_t r;
  call_rpc("GetMetrics", &req.base, OTHER_TOKEN, NULL, &r);
  expect_ok("GetMetrics with " OTHER_TOKEN, &r);
  ccm_rpc_call_result_free(&r);
}

static void check_campaigns(void) {
  Callmanager__V1__CreateCampaignRequest req = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
  req.name = "  Marketing Campaign Q1  ";
  req._description_case = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST___DESCRIPTION_DESCRIPTION;
  req.description = "Cold calling for Q1 leads";
  result_t r;
  call_rpc("CreateCampaign", &req.base, TOKEN, NULL, &r);
  if (expect_ok("CreateCampaign", &r)) {
    Callmanager__V1__CreateCampaignResponse *resp =
        unpack(&callmanager__v1__create_campaign_response__descriptor, &r);
    const Callmanager__V1__Campaign *c = resp != NULL ? resp->campaign : NULL;
    if (c != NULL) {
      g_campaign = c->id;
      expect_true(c->id > 0, "campaign id > 0");
      expect_str("name (trimmed)", c->name, "Marketing Campaign Q1");
      expect_true(c->_description_case == CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION,
                  "description present");
      if (c->_description_case == CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION) {
        expect_str("description", c->description, "Cold calling for Q1 leads");
      }
      expect_true(c->is_active, "is_active defaults to true");
      expect_true(is_timestamp(c->created_at), "created_at is ISO-8601 UTC");
      expect_true(is_timestamp(c->updated_at), "updated_at is ISO-8601 UTC");
      expect_int("phone_count", c->phone_count, 0);
    } else {
      failf("CreateCampaignResponse without a campaign");
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  /* No description: absent (null), not "". */
  Callmanager__V1__CreateCampaignRequest bare = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
  bare.name = "bare";
  call_rpc("CreateCampaign", &bare.base, TOKEN, NULL, &r);
  if (expect_ok("CreateCampaign without description", &r)) {
    Callmanager__V1__CreateCampaignResponse *resp =
        unpack(&callmanager__v1__create_campaign_response__descriptor, &r);
    if (resp != NULL && resp->campaign != NULL) {
      expect_true(
          resp->campaign->_description_case == CALLMANAGER__V1__CAMPAIGN___DESCRIPTION__NOT_SET,
          "description unset when not given");
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  /* Name validation: empty, blank, 201 code points; 200 multi-byte ones are fine. */
  char long_name[201 * 2 + 1];
  for (int i = 0; i < 201; i++) memcpy(long_name + 2 * i, "\xc3\xa9", 2); /* é */
  long_name[201 * 2] = '\0';
  const char *bad_names[] = {"", "   ", long_name};
  for (size_t i = 0; i < 3; i++) {
    Callmanager__V1__CreateCampaignRequest b = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
    b.name = (char *)bad_names[i];
    call_rpc("CreateCampaign", &b.base, TOKEN, NULL, &r);
    expect_error("CreateCampaign with a bad name", &r, CCM_GRPC_INVALID_ARGUMENT, NULL, NULL,
                 "name");
    ccm_rpc_call_result_free(&r);
  }
  long_name[200 * 2] = '\0';
  Callmanager__V1__CreateCampaignRequest fine = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
  fine.name = long_name;
  call_rpc("CreateCampaign", &fine.base, TOKEN, NULL, &r);
  if (expect_ok("CreateCampaign with 200 code points", &r)) {
    Callmanager__V1__CreateCampaignResponse *resp =
        unpack(&callmanager__v1__create_campaign_response__descriptor, &r);
    if (resp != NULL && resp->campaign != NULL) {
      expect_str("200 code point name", resp->campaign->name, long_name);
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  char description[2002];
  memset(description, 'd', 2001);
  description[2001] = '\0';
  Callmanager__V1__CreateCampaignRequest longd = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST__INIT;
  longd.name = "n";
  longd._description_case = CALLMANAGER__V1__CREATE_CAMPAIGN_REQUEST___DESCRIPTION_DESCRIPTION;
  longd.description = description;
  call_rpc("CreateCampaign", &longd.base, TOKEN, NULL, &r);
  expect_error("CreateCampaign with a 2001-character description", &r, CCM_GRPC_INVALID_ARGUMENT,
               NULL, NULL, "description");
  ccm_rpc_call_result_free(&r);

  /* GetCampaign: found, unknown, inactive. */
  Callmanager__V1__GetCampaignRequest get = CALLMANAGER__V1__GET_CAMPAIGN_REQUEST__INIT;
  get.id = g_campaign;
  call_rpc("GetCampaign", &get.base, TOKEN, NULL, &r);
  if (expect_ok("GetCampaign", &r)) {
    Callmanager__V1__GetCampaignResponse *resp =
        unpack(&callmanager__v1__get_campaign_response__descriptor, &r);
    if (resp != NULL && resp->campaign != NULL) {
      expect_int("GetCampaign id", resp->campaign->id, g_campaign);
      expect_str("GetCampaign name", resp->campaign->name, "Marketing Campaign Q1");
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);
  get.id = 999999999;
  call_rpc("GetCampaign", &get.base, TOKEN, NULL, &r);
  expect_error("GetCampaign 999999999", &r, CCM_GRPC_NOT_FOUND, MSG_NO_CAMPAIGN, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  int64_t inactive = create_campaign("off", false);
  get.id = inactive;
  call_rpc("GetCampaign", &get.base, TOKEN, NULL, &r);
  expect_error("GetCampaign of an inactive campaign", &r, CCM_GRPC_NOT_FOUND, MSG_NO_CAMPAIGN, NULL,
               NULL);
  ccm_rpc_call_result_free(&r);

  /* ListCampaigns: active ones ordered by id; limit/offset pages. */
  Callmanager__V1__ListCampaignsRequest list = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST__INIT;
  call_rpc("ListCampaigns", &list.base, TOKEN, NULL, &r);
  int64_t ids[64];
  size_t n_ids = 0;
  if (expect_ok("ListCampaigns", &r)) {
    Callmanager__V1__ListCampaignsResponse *resp =
        unpack(&callmanager__v1__list_campaigns_response__descriptor, &r);
    bool seen = false;
    for (size_t i = 0; resp != NULL && i < resp->n_campaigns; i++) {
      const Callmanager__V1__Campaign *c = resp->campaigns[i];
      if (i > 0) expect_true(c->id > resp->campaigns[i - 1]->id, "list ordered by id");
      expect_true(c->id != inactive, "inactive campaign not listed");
      expect_true(c->is_active, "listed campaigns are active");
      if (c->id == g_campaign) seen = true;
      if (n_ids < 64) ids[n_ids++] = c->id;
    }
    expect_true(seen, "the new campaign is listed");
    expect_true(n_ids >= 4, "at least 4 active campaigns listed");
    release(resp);
  }
  ccm_rpc_call_result_free(&r);
  if (n_ids >= 4) {
    list._limit_case = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST___LIMIT_LIMIT;
    list.limit = 2;
    list.offset = 1;
    call_rpc("ListCampaigns", &list.base, TOKEN, NULL, &r);
    if (expect_ok("ListCampaigns limit 2 offset 1", &r)) {
      Callmanager__V1__ListCampaignsResponse *resp =
          unpack(&callmanager__v1__list_campaigns_response__descriptor, &r);
      if (resp != NULL) {
        expect_int("page size", (long long)resp->n_campaigns, 2);
        if (resp->n_campaigns == 2) {
          expect_int("page[0]", resp->campaigns[0]->id, ids[1]);
          expect_int("page[1]", resp->campaigns[1]->id, ids[2]);
        }
      }
      release(resp);
    }
    ccm_rpc_call_result_free(&r);
  }
  Callmanager__V1__ListCampaignsRequest bad = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST__INIT;
  bad.offset = -1;
  call_rpc("ListCampaigns", &bad.base, TOKEN, NULL, &r);
  expect_error("ListCampaigns offset -1", &r, CCM_GRPC_INVALID_ARGUMENT, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  bad.offset = 0;
  bad._limit_case = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST___LIMIT_LIMIT;
  bad.limit = -1;
  call_rpc("ListCampaigns", &bad.base, TOKEN, NULL, &r);
  expect_error("ListCampaigns limit -1", &r, CCM_GRPC_INVALID_ARGUMENT, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_phone_numbers(void) {
  int64_t campaign = create_campaign("numbers", true);
  if (campaign == 0) return;
  char *numbers[] = {"+1234567890", "+1 (234) 567-8901", "+1234567890", "abc",
                     "+1234567892", "++1234567893",      "+0123456789"};
  Callmanager__V1__AddPhoneNumbersRequest req = CALLMANAGER__V1__ADD_PHONE_NUMBERS_REQUEST__INIT;
  req.campaign_id = campaign;
  req.n_phone_numbers = sizeof numbers / sizeof numbers[0];
  req.phone_numbers = numbers;
  result_t r;
  call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
  if (expect_ok("AddPhoneNumbers", &r)) {
    Callmanager__V1__AddPhoneNumbersResponse *resp =
        unpack(&callmanager__v1__add_phone_numbers_response__descriptor, &r);
    if (resp != NULL) {
      expect_true(resp->success, "success");
      expect_int("campaign_id", resp->campaign_id, campaign);
      expect_int("added_count", resp->added_count, 3);
      expect_int("duplicate_count", resp->duplicate_count, 1);
      expect_int("errors", (long long)resp->n_errors, 3);
      const char *want[] = {"+1234567890", "+12345678901", "+1234567892"};
      expect_int("phone_numbers", (long long)resp->n_phone_numbers, 3);
      for (size_t i = 0; i < resp->n_phone_numbers && i < 3; i++) {
        expect_str("added (normalised)", resp->phone_numbers[i], want[i]);
      }
      bool abc = false;
      for (size_t i = 0; i < resp->n_errors; i++) {
        if (strcmp(resp->errors[i], "Invalid phone number: abc") == 0) abc = true;
      }
      expect_true(abc, "errors has \"Invalid phone number: abc\"");
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  /* Again: all duplicates now. */
  req.n_phone_numbers = 1;
  call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
  if (expect_ok("AddPhoneNumbers again", &r)) {
    Callmanager__V1__AddPhoneNumbersResponse *resp =
        unpack(&callmanager__v1__add_phone_numbers_response__descriptor, &r);
    if (resp != NULL) {
      expect_int("added_count again", resp->added_count, 0);
      expect_int("duplicate_count again", resp->duplicate_count, 1);
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  Callmanager__V1__GetCampaignRequest get = CALLMANAGER__V1__GET_CAMPAIGN_REQUEST__INIT;
  get.id = campaign;
  call_rpc("GetCampaign", &get.base, TOKEN, NULL, &r);
  if (expect_ok("GetCampaign", &r)) {
    Callmanager__V1__GetCampaignResponse *resp =
        unpack(&callmanager__v1__get_campaign_response__descriptor, &r);
    if (resp != NULL && resp->campaign != NULL) {
      expect_int("phone_count", resp->campaign->phone_count, 3);
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  /* 0 and 10,001 entries. */
  req.n_phone_numbers = 0;
  req.phone_numbers = NULL;
  call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
  expect_error("AddPhoneNumbers with no numbers", &r, CCM_GRPC_INVALID_ARGUMENT, MSG_PHONE_COUNT,
               NULL, NULL);
  ccm_rpc_call_result_free(&r);
  char **many = calloc(10001, sizeof *many);
  char *storage = calloc(10001, 16);
  if (many == NULL || storage == NULL) {
    failf("out of memory");
  } else {
    for (int i = 0; i < 10001; i++) {
      many[i] = storage + 16 * i;
      snprintf(many[i], 16, "+1%09d", i);
    }
    req.n_phone_numbers = 10001;
    req.phone_numbers = many;
    call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
    expect_error("AddPhoneNumbers with 10001 numbers", &r, CCM_GRPC_INVALID_ARGUMENT,
                 MSG_PHONE_COUNT, NULL, NULL);
    ccm_rpc_call_result_free(&r);
  }
  free(many);
  free(storage);

  /* Unknown and inactive campaigns. */
  char *one[] = {"+1234567890"};
  req.n_phone_numbers = 1;
  req.phone_numbers = one;
  req.campaign_id = 987654321;
  call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
  expect_error("AddPhoneNumbers to an unknown campaign", &r, CCM_GRPC_NOT_FOUND, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  req.campaign_id = create_campaign("numbers off", false);
  call_rpc("AddPhoneNumbers", &req.base, TOKEN, NULL, &r);
  expect_error("AddPhoneNumbers to an inactive campaign", &r, CCM_GRPC_NOT_FOUND, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_initiate(void) {
  if (g_campaign == 0) {
    failf("no campaign (CreateCampaign failed)");
    return;
  }
  fresh_number("555", g_call_number, sizeof g_call_number);
  /* Given with spaces and dashes; answered in E.164 form. */
  char spaced[40];
  snprintf(spaced, sizeof spaced, "%.2s %.3s-%s", g_call_number, g_call_number + 2,
           g_call_number + 5);
  result_t r;
  initiate(spaced, g_campaign, TOKEN, NULL, &r);
  if (expect_ok("InitiateCall", &r)) {
    Callmanager__V1__InitiateCallResponse *resp =
        unpack(&callmanager__v1__initiate_call_response__descriptor, &r);
    if (resp != NULL) {
      expect_true(resp->success, "success");
      expect_int("status", resp->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED);
      expect_str("phone_number (E.164)", resp->phone_number, g_call_number);
      expect_int("campaign_id", resp->campaign_id, g_campaign);
      expect_str("campaign_name", resp->campaign_name, "Marketing Campaign Q1");
      expect_int("attempt_count", resp->attempt_count, 1);
      expect_int("max_attempts", resp->max_attempts, 3);
      expect_true(is_timestamp(resp->created_at), "created_at is ISO-8601 UTC");
      if (!is_call_id(resp->call_id, g_campaign, g_call_number)) {
        failf("call_id \"%s\" is not call_<campaign>_<e164>_<yyyymmddHHMMSS>_<8 hex>",
              resp->call_id);
      }
      snprintf(g_call_id, sizeof g_call_id, "%s", resp->call_id);
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);

  /* The documented errors, in the documented order. */
  char other[32];
  fresh_number("555", other, sizeof other);
  struct {
    const char *what;
    const char *number;
    int64_t campaign;
    int status;
    const char *message;
  } cases[] = {
      {"no phone_number", "", g_campaign, CCM_GRPC_INVALID_ARGUMENT, MSG_REQUIRED},
      {"no campaign_id", other, 0, CCM_GRPC_INVALID_ARGUMENT, MSG_REQUIRED},
      {"invalid phone number", "invalid", g_campaign, CCM_GRPC_INVALID_ARGUMENT, MSG_BAD_PHONE},
      {"invalid phone, unknown campaign", "invalid", 999999999, CCM_GRPC_INVALID_ARGUMENT,
       MSG_BAD_PHONE},
      {"letters in the number", "+1555abc1234", g_campaign, CCM_GRPC_INVALID_ARGUMENT,
       MSG_BAD_PHONE},
      {"too few digits", "+123456", g_campaign, CCM_GRPC_INVALID_ARGUMENT, MSG_BAD_PHONE},
      {"16 digits", "+1234567890123456", g_campaign, CCM_GRPC_INVALID_ARGUMENT, MSG_BAD_PHONE},
      {"unknown campaign", other, 999999999, CCM_GRPC_NOT_FOUND, MSG_NO_CAMPAIGN},
      {"duplicate call", g_call_number, g_campaign, CCM_GRPC_RESOURCE_EXHAUSTED, MSG_DUPLICATE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    initiate(cases[i].number, cases[i].campaign, TOKEN, NULL, &r);
    expect_error(cases[i].what, &r, cases[i].status, cases[i].message,
                 cases[i].status == CCM_GRPC_RESOURCE_EXHAUSTED ? "duplicate_call" : NULL, NULL);
    if (cases[i].status == CCM_GRPC_RESOURCE_EXHAUSTED && r.grpc_status == cases[i].status) {
      expect_true(r.retry_after_seconds > 0 && r.retry_after_seconds <= 300,
                  "duplicate_call carries retry-after in (0, 300] seconds");
    }
    ccm_rpc_call_result_free(&r);
  }
  int64_t inactive = create_campaign("calls off", false);
  initiate(other, inactive, TOKEN, NULL, &r);
  expect_error("inactive campaign", &r, CCM_GRPC_NOT_FOUND, MSG_NO_CAMPAIGN, NULL, NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_idempotency(void) {
  char number[32];
  char key[64];
  fresh_number("556", number, sizeof number);
  snprintf(key, sizeof key, "c-key-%s", number + 1);
  result_t first;
  result_t second;
  initiate(number, g_campaign, TOKEN, key, &first);
  initiate(number, g_campaign, TOKEN, key, &second);
  if (expect_ok("first InitiateCall with a key", &first) && expect_ok("same key again", &second)) {
    Callmanager__V1__InitiateCallResponse *a =
        unpack(&callmanager__v1__initiate_call_response__descriptor, &first);
    Callmanager__V1__InitiateCallResponse *b =
        unpack(&callmanager__v1__initiate_call_response__descriptor, &second);
    if (a != NULL && b != NULL) {
      expect_str("same key: same call_id", b->call_id, a->call_id);
      expect_str("same key: same created_at", b->created_at, a->created_at);
    }
    release(a);
    release(b);
  }
  ccm_rpc_call_result_free(&first);
  ccm_rpc_call_result_free(&second);
  char different[32];
  fresh_number("556", different, sizeof different);
  result_t r;
  initiate(different, g_campaign, TOKEN, key, &r);
  expect_error("same key, different request", &r, CCM_GRPC_INVALID_ARGUMENT, MSG_IDEMPOTENCY, NULL,
               NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_get_call(void) {
  if (g_call_id[0] == '\0') {
    failf("no call (InitiateCall failed)");
    return;
  }
  result_t r;
  Callmanager__V1__GetCallResponse *resp = get_call(g_call_id, &r);
  if (expect_ok("GetCall", &r) && resp != NULL && resp->call != NULL) {
    const Callmanager__V1__Call *c = resp->call;
    expect_str("call_id", c->call_id, g_call_id);
    expect_int("campaign_id", c->campaign_id, g_campaign);
    expect_str("phone_number", c->phone_number, g_call_number);
    expect_int("status", c->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED);
    expect_int("attempt_count", c->attempt_count, 1);
    expect_int("max_attempts", c->max_attempts, 3);
    expect_int("total_call_time", c->total_call_time, 0);
    expect_true(c->_next_retry_at_case == CALLMANAGER__V1__CALL___NEXT_RETRY_AT__NOT_SET,
                "next_retry_at unset");
    expect_true(c->_error_message_case == CALLMANAGER__V1__CALL___ERROR_MESSAGE__NOT_SET,
                "error_message unset");
    expect_true(is_timestamp(c->created_at), "created_at is ISO-8601 UTC");
    expect_true(is_timestamp(c->updated_at), "updated_at is ISO-8601 UTC");
    expect_int("attempts", (long long)c->n_attempts, 1);
    if (c->n_attempts == 1) expect_int("attempts[0].attempt", c->attempts[0]->attempt, 1);
  }
  release(resp);
  ccm_rpc_call_result_free(&r);
  char long_id[201];
  memset(long_id, 'x', 200);
  long_id[200] = '\0';
  const char *unknown[] = {"nope", "", long_id, "call_1_+19999999999_20250101000000_deadbeef"};
  for (size_t i = 0; i < 4; i++) {
    resp = get_call(unknown[i], &r);
    expect_error("GetCall of an unknown call", &r, CCM_GRPC_NOT_FOUND, MSG_NO_CALL, NULL, NULL);
    release(resp);
    ccm_rpc_call_result_free(&r);
  }
}

static void check_callbacks(void) {
  if (g_call_id[0] == '\0') {
    failf("no call (InitiateCall failed)");
    return;
  }
  Callmanager__V1__ProcessCallbackRequest req = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST__INIT;
  req.call_id = g_call_id;
  req.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_DISCONNECTED;
  req._call_duration_case = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST___CALL_DURATION_CALL_DURATION;
  req.call_duration = 5;
  req._timestamp_case = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST___TIMESTAMP_TIMESTAMP;
  req.timestamp = "not a time"; /* unparsable: ignored, never an error */
  result_t r;
  call_rpc("ProcessCallback", &req.base, TOKEN, NULL, &r);
  if (expect_ok("ProcessCallback DISCONNECTED", &r)) {
    Callmanager__V1__ProcessCallbackResponse *resp =
        unpack(&callmanager__v1__process_callback_response__descriptor, &r);
    if (resp != NULL) {
      expect_true(resp->success, "success");
      expect_str("call_id", resp->call_id, g_call_id);
      expect_int("status", resp->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_DISCONNECTED);
    }
    release(resp);
  }
  ccm_rpc_call_result_free(&r);
  /* A duplicate, and a zone-less timestamp: accepted too. */
  req.timestamp = "2025-01-24T10:35:00";
  call_rpc("ProcessCallback", &req.base, TOKEN, NULL, &r);
  expect_ok("duplicate ProcessCallback", &r);
  ccm_rpc_call_result_free(&r);
  /* Recorded, not applied: only the callback consumer applies it. */
  Callmanager__V1__GetCallResponse *call = get_call(g_call_id, &r);
  if (expect_ok("GetCall", &r) && call != NULL && call->call != NULL) {
    expect_int("status until a consumer applies the callback", call->call->status,
               CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED);
  }
  release(call);
  ccm_rpc_call_result_free(&r);

  /* Unknown call: 404 once the body is valid. */
  Callmanager__V1__ProcessCallbackRequest unknown = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST__INIT;
  unknown.call_id = "call_unknown";
  unknown.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED;
  call_rpc("ProcessCallback", &unknown.base, TOKEN, NULL, &r);
  expect_error("ProcessCallback of an unknown call", &r, CCM_GRPC_NOT_FOUND, MSG_NO_CALL, NULL,
               NULL);
  ccm_rpc_call_result_free(&r);
  /* Invalid statuses: 400 before the lookup, on known and unknown calls. */
  const int statuses[] = {CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_UNSPECIFIED,
                          CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED,
                          CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PROCESSING,
                          CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_RETRYING, 42};
  for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
    for (int known = 0; known < 2; known++) {
      Callmanager__V1__ProcessCallbackRequest bad = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST__INIT;
      bad.call_id = known ? g_call_id : "call_unknown";
      bad.status = (Callmanager__V1__CallStatus)statuses[i];
      call_rpc("ProcessCallback", &bad.base, TOKEN, NULL, &r);
      char what[96];
      snprintf(what, sizeof what, "ProcessCallback with status %d (%s call)", statuses[i],
               known ? "known" : "unknown");
      expect_error(what, &r, CCM_GRPC_INVALID_ARGUMENT, MSG_BAD_STATUS, NULL, NULL);
      ccm_rpc_call_result_free(&r);
    }
  }
  Callmanager__V1__ProcessCallbackRequest neg = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST__INIT;
  neg.call_id = g_call_id;
  neg.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED;
  neg._call_duration_case = CALLMANAGER__V1__PROCESS_CALLBACK_REQUEST___CALL_DURATION_CALL_DURATION;
  neg.call_duration = -1;
  call_rpc("ProcessCallback", &neg.base, TOKEN, NULL, &r);
  expect_error("ProcessCallback with call_duration -1", &r, CCM_GRPC_INVALID_ARGUMENT, NULL, NULL,
               NULL);
  ccm_rpc_call_result_free(&r);
}

static void check_metrics(void) {
  Callmanager__V1__GetMetricsResponse *m = get_metrics();
  if (m == NULL) return;
  expect_int("max_concurrent_calls", m->max_concurrent_calls, g_max_calls);
  expect_true(m->current_concurrent_calls > 0, "current_concurrent_calls > 0");
  expect_true(m->dependencies != NULL, "dependencies present");
  if (m->dependencies != NULL) {
    expect_str("dependencies.database", m->dependencies->database, "ok");
    expect_str("dependencies.redis", m->dependencies->redis, "ok");
    expect_str("dependencies.kafka", m->dependencies->kafka, "ok");
  }
  expect_str("system_status", m->system_status, "healthy");
  expect_int("recent_metrics days", (long long)m->n_recent_metrics, 7);
  time_t now = time(NULL);
  for (size_t i = 0; i < m->n_recent_metrics && i < 7; i++) {
    time_t day = now - (time_t)i * 86400;
    struct tm tm;
    gmtime_r(&day, &tm);
    char want[16];
    strftime(want, sizeof want, "%Y-%m-%d", &tm);
    expect_str("recent_metrics date (today first)", m->recent_metrics[i]->date, want);
  }
  if (m->n_recent_metrics > 0) {
    const Callmanager__V1__DailyMetrics *d = m->recent_metrics[0];
    expect_true(d->total_calls_initiated >= 2, "today's total_calls_initiated >= 2");
    expect_true(d->peak_concurrent_calls >= m->current_concurrent_calls,
                "today's peak_concurrent_calls >= current_concurrent_calls");
  }
  release(m);
}

static void check_protocol_errors(void) {
  result_t r;
  call_raw(CM "NoSuchRpc", "", 0, TOKEN, NULL, TIMEOUT_MS, &r);
  expect_error("unknown method", &r, CCM_GRPC_UNIMPLEMENTED, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  static const char garbage[] = "\xff\xff\xff\xff";
  call_raw(CM "GetCall", garbage, 4, TOKEN, NULL, TIMEOUT_MS, &r);
  expect_error("undecodable request", &r, CCM_GRPC_INVALID_ARGUMENT, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  /* GetCallRequest{call_id = "\xff\xfe"}: not UTF-8. */
  static const char bad_utf8[] = "\x0a\x02\xff\xfe";
  call_raw(CM "GetCall", bad_utf8, 4, TOKEN, NULL, TIMEOUT_MS, &r);
  expect_true(r.grpc_status == CCM_GRPC_INVALID_ARGUMENT || r.grpc_status == CCM_GRPC_NOT_FOUND,
              "call_id not UTF-8: INVALID_ARGUMENT or NOT_FOUND");
  ccm_rpc_call_result_free(&r);
  /* A request that takes far longer than 1 ms (10,000 numbers to validate
   * and insert), so the deadline expires whatever the machine's speed. */
  enum { SLOW_NUMBERS = 10000 };
  char **numbers = calloc(SLOW_NUMBERS, sizeof *numbers);
  for (int i = 0; numbers != NULL && i < SLOW_NUMBERS; i++) {
    numbers[i] = malloc(20);
    if (numbers[i] != NULL) snprintf(numbers[i], 20, "+4477%08d", i);
  }
  Callmanager__V1__AddPhoneNumbersRequest req = CALLMANAGER__V1__ADD_PHONE_NUMBERS_REQUEST__INIT;
  req.campaign_id = 1;
  req.n_phone_numbers = numbers != NULL ? SLOW_NUMBERS : 0;
  req.phone_numbers = numbers;
  size_t len;
  unsigned char *buf = pack(&req.base, &len);
  call_raw(CM "AddPhoneNumbers", buf, len, TOKEN, NULL, 1, &r);
  expect_error("1 ms deadline", &r, CCM_GRPC_DEADLINE_EXCEEDED, NULL, NULL, NULL);
  ccm_rpc_call_result_free(&r);
  free(buf);
  for (int i = 0; numbers != NULL && i < SLOW_NUMBERS; i++) free(numbers[i]);
  free(numbers);
}

struct same_number {
  pthread_barrier_t *start;
  const char *number;
  int status;
  char reason[64];
  char message[CCM_RPC_CLIENT_MAX_MESSAGE];
};

static void *same_number_thread(void *arg) {
  struct same_number *s = arg;
  pthread_barrier_wait(s->start);
  result_t r;
  Callmanager__V1__InitiateCallRequest req = CALLMANAGER__V1__INITIATE_CALL_REQUEST__INIT;
  req.phone_number = (char *)s->number;
  req.campaign_id = g_campaign;
  size_t len;
  unsigned char *buf = pack(&req.base, &len);
  struct ccm_rpc_metadata md[] = {{"x-auth-token", TOKEN}};
  int rc = ccm_rpc_client_call(g_client, CM "InitiateCall", buf, len, md, 1, TIMEOUT_MS, &r);
  free(buf);
  s->status = rc == CCM_OK ? r.grpc_status : -1;
  snprintf(s->reason, sizeof s->reason, "%s", or_null(r.error_reason));
  snprintf(s->message, sizeof s->message, "%s", or_null(r.message));
  ccm_rpc_call_result_free(&r);
  return NULL;
}

static void check_same_number_race(void) {
  char number[32];
  fresh_number("666", number, sizeof number);
  long long before = db_in_flight();
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, SAME_NUMBER_CALLS);
  pthread_t threads[SAME_NUMBER_CALLS];
  struct same_number s[SAME_NUMBER_CALLS];
  for (int i = 0; i < SAME_NUMBER_CALLS; i++) {
    s[i] = (struct same_number){.start = &start, .number = number};
    if (pthread_create(&threads[i], NULL, same_number_thread, &s[i]) != 0) {
      fprintf(stderr, "pthread_create failed\n");
      exit(2);
    }
  }
  for (int i = 0; i < SAME_NUMBER_CALLS; i++) pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&start);
  int ok = 0;
  int duplicate = 0;
  for (int i = 0; i < SAME_NUMBER_CALLS; i++) {
    if (s[i].status == CCM_GRPC_OK) {
      ok++;
    } else if (s[i].status == CCM_GRPC_RESOURCE_EXHAUSTED &&
               strcmp(s[i].reason, "duplicate_call") == 0 &&
               strcmp(s[i].message, MSG_DUPLICATE) == 0) {
      duplicate++;
    } else {
      failf("call #%d: %s \"%s\" (reason %s)", i, status_name(s[i].status), s[i].message,
            s[i].reason);
    }
  }
  printf("    %d parallel calls to %s: %d OK, %d duplicate_call\n", SAME_NUMBER_CALLS, number, ok,
         duplicate);
  expect_int("OK answers", ok, 1);
  expect_int("RESOURCE_EXHAUSTED duplicate_call answers", duplicate, SAME_NUMBER_CALLS - 1);
  expect_slots_agree("after the same-number race", before >= 0 ? before + 1 : -1);
}

static void check_slots_final(void) {
  expect_slots_agree("at the end", -1);
  Callmanager__V1__GetMetricsResponse *m = get_metrics();
  if (m == NULL) return;
  expect_int("current_concurrent_calls = database in-flight calls", m->current_concurrent_calls,
             db_in_flight());
  release(m);
}

/* ----------------------------------------------------------------- main --- */

int main(int argc, char **argv) {
  const char *phase = argc == 2 ? argv[1] : "";
  if (strcmp(phase, "limit") != 0 && strcmp(phase, "api") != 0) {
    fprintf(stderr, "usage: %s limit|api\n", argv[0]);
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_max_calls = strtol(env_or("MAX_CONCURRENT_CALLS", "100"), NULL, 10);
  char target[256];
  const char *t = getenv("GRPC_TARGET");
  if (t != NULL && t[0] != '\0') {
    snprintf(target, sizeof target, "%s", t);
  } else {
    snprintf(target, sizeof target, "127.0.0.1:%s", env_or("GRPC_PORT", "50051"));
  }
  /* The client's threads inherit this mask: no SIGPIPE there. */
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &block, NULL);
  if (ccm_rpc_client_create(target, &g_client) != CCM_OK) {
    fprintf(stderr, "cannot create a gRPC client for %s\n", target);
    return 2;
  }
  printf("e2e_grpc_client %s: server %s, MAX_CONCURRENT_CALLS=%ld\n", phase, target, g_max_calls);
  if (strcmp(phase, "limit") == 0) {
    run_check("fresh server: metrics and slots at zero", check_server_fresh);
    run_check("200 parallel InitiateCall: exactly MAX OK, the rest concurrency_limit",
              check_concurrency_limit_race);
  } else {
    run_check("health (no token needed)", check_health);
    run_check("auth: every RPC needs a valid x-auth-token", check_auth);
    run_check("CreateCampaign, GetCampaign, ListCampaigns", check_campaigns);
    run_check("AddPhoneNumbers", check_phone_numbers);
    run_check("InitiateCall: success and documented errors", check_initiate);
    run_check("InitiateCall: idempotency-key", check_idempotency);
    run_check("GetCall", check_get_call);
    run_check("ProcessCallback: success and documented errors", check_callbacks);
    run_check("GetMetrics", check_metrics);
    run_check("unknown method, bad bytes, deadline", check_protocol_errors);
    run_check("20 parallel InitiateCall to one number: exactly one OK", check_same_number_race);
    run_check("Redis slots agree with the database", check_slots_final);
  }
  ccm_rpc_client_destroy(g_client);
  printf("e2e_grpc_client %s: %d passed, %d failed\n", phase, g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
