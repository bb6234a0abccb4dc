/* bench_grpc: the gRPC load client of `make bench` (scripts/bench.sh).
 *
 * Keeps N unary calls in flight against `ccm server` through the gateway's
 * client module (ccm_rpc_client_start: one channel, asynchronous calls whose
 * completions run on one completion-queue thread) and measures throughput
 * and latency. A "stream" is one call slot: when its call completes, the
 * next one starts at once (closed loop), so N is the concurrency.
 *
 *   bench_grpc initiate    InitiateCall, every request to a distinct number
 *                          (+<base + i>), so duplicate prevention never
 *                          refuses one; run the server with a high
 *                          MAX_CONCURRENT_CALLS (or --retry-busy).
 *   bench_grpc health      grpc.health.v1.Health/Check with an empty request:
 *                          answered by the transport from in-memory flags,
 *                          no database, so it is the framework's ceiling.
 *   bench_grpc add-phones  AddPhoneNumbers: --count batches of --batch
 *                          distinct numbers each.
 *
 * Options:
 *   -c N             calls in flight (default 1)
 *   -d SECONDS       time mode: start calls for this long (default 10)
 *   -w SECONDS       warm-up excluded from the numbers (time mode, default 1)
 *   -n COUNT         count mode instead: COUNT requests (a busy one is retried,
 *                    see --retry-busy), then stop; the window is the whole run
 *   --target H:P     default GRPC_TARGET, else 127.0.0.1:$GRPC_PORT (50051)
 *   --token T        x-auth-token (default dev-token-12345)
 *   --campaign ID    campaign of initiate / add-phones (default 1)
 *   --base N         first phone number, digits without '+' (default
 *                    1200000000000); request i uses base + i
 *   --batch N        numbers per AddPhoneNumbers call (default 10000)
 *   --retry-busy MS  a RESOURCE_EXHAUSTED concurrency_limit answer is retried
 *                    with the same number after MS ms, doubling while the
 *                    stream stays refused (up to 200 ms; count mode: e2e)
 *   --timeout-ms MS  deadline of each call (default 30000)
 *
 * Prints one JSON object on stdout: ok, errors by gRPC status, throughput
 * (successful calls per second over the measured window; for add-phones
 * also numbers per second), latency percentiles in ms over the successful
 * calls completed in the window, and one sample error message. Exit 0 when
 * the run completed (even with errors: the caller decides), 2 on a usage or
 * set-up error. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_error.h"
#include "ccm_rpc_client.h"
#include "ccm_time.h"

#define CM "/callmanager.v1.CallManager/"
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define MAX_STREAMS 4096
#define STATUS_SLOTS 17
#define BUSY_BACKOFF_MAX_MS 200

enum mode { MODE_INITIATE, MODE_HEALTH, MODE_ADD_PHONES };

struct stream {
  int index;
  int64_t started_ns; /* of the call in flight */
  uint64_t number;    /* initiate: the number of the call in flight */
  uint64_t batch;     /* add-phones: the batch index in flight */
  int64_t due_ns;     /* retry queue: when to start again */
  int backoff_ms;     /* busy retries: the next delay (doubles to BUSY_BACKOFF_MAX_MS) */
  struct stream *next_retry;
};

static struct {
  enum mode mode;
  const char *target;
  const char *token;
  int concurrency;
  double duration_s;
  double warmup_s;
  long long count; /* > 0: count mode */
  long long campaign;
  uint64_t base;
  int batch;
  int retry_busy_ms; /* < 0: off */
  int timeout_ms;
} opt = {
    .token = "dev-token-12345",
    .concurrency = 1,
    .duration_s = 10,
    .warmup_s = 1,
    .campaign = 1,
    .base = 1200000000000ULL,
    .batch = 10000,
    .retry_busy_ms = -1,
    .timeout_ms = 30000,
};

static struct ccm_rpc_client *g_client;
static struct stream g_streams[MAX_STREAMS];

/* Counters and samples, changed under g_mu (completions arrive on the
 * client's completion-queue thread, retries on the retry thread). */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
static int64_t g_t0, g_measure_from, g_stop_at; /* monotonic ns */
static int64_t g_last_ok_ns;
static uint64_t g_next_seq; /* next number / batch index to use */
static long long g_started, g_ok, g_ok_window, g_busy_retries, g_numbers_added, g_numbers_duplicate;
static long long g_errors[STATUS_SLOTS + 1]; /* by gRPC status; last: others */
static int g_active;                         /* streams not finished */
static char g_error_sample[CCM_RPC_CLIENT_MAX_MESSAGE + 64];
static uint32_t *g_lat_us;
static size_t g_lat_n, g_lat_cap;
static struct stream *g_retry_head; /* ordered by due_ns */
static bool g_retry_stop;
static bool g_start_failed;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg) {
  fprintf(stderr, "bench_grpc: %s\n", msg);
  exit(2);
}

static void record_latency(int64_t ns) {
  if (g_lat_n == g_lat_cap) {
    size_t cap = g_lat_cap ? g_lat_cap * 2 : 65536;
    uint32_t *p = realloc(g_lat_us, cap * sizeof *p);
    if (p == NULL) return;
    g_lat_us = p;
    g_lat_cap = cap;
  }
  int64_t us = ns / 1000;
  g_lat_us[g_lat_n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* --------------------------------------------------------- requests --- */

static unsigned char *pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = malloc(*len + 1);
  if (buf != NULL) protobuf_c_message_pack(m, buf);
  return buf;
}

/* Packs the request of the stream's call; NULL (len 0) for health. */
static unsigned char *build_request(struct stream *s, size_t *len) {
  *len = 0;
  if (opt.mode == MODE_HEALTH) return NULL;
  if (opt.mode == MODE_INITIATE) {
    char number[32];
    snprintf(number, sizeof number, "+%" PRIu64, s->number);
    Callmanager__V1__InitiateCallRequest req = CALLMANAGER__V1__INITIATE_CALL_REQUEST__INIT;
    req.phone_number = number;
    req.campaign_id = opt.campaign;
    return pack(&req.base, len);
  }
  char **numbers = malloc((size_t)opt.batch * sizeof *numbers);
  char *text = malloc((size_t)opt.batch * 24);
  if (numbers == NULL || text == NULL) {
    free(numbers);
    free(text);
    return NULL;
  }
  uint64_t first = opt.base + s->batch * (uint64_t)opt.batch;
  for (int i = 0; i < opt.batch; i++) {
    numbers[i] = text + (size_t)i * 24;
    snprintf(numbers[i], 24, "+%" PRIu64, first + (uint64_t)i);
  }
  Callmanager__V1__AddPhoneNumbersRequest req = CALLMANAGER__V1__ADD_PHONE_NUMBERS_REQUEST__INIT;
  req.campaign_id = opt.campaign;
  req.n_phone_numbers = (size_t)opt.batch;
  req.phone_numbers = numbers;
  unsigned char *buf = pack(&req.base, len);
  free(numbers);
  free(text);
  return buf;
}

static void on_done(void *user, const struct ccm_rpc_reply *reply);

/* Starts the stream's current call; false when the client refused it. */
static bool start_call(struct stream *s) {
  static const char *const paths[] = {CM "InitiateCall", HEALTH_CHECK, CM "AddPhoneNumbers"};
  size_t len = 0;
  unsigned char *req = build_request(s, &len);
  if (req == NULL && opt.mode != MODE_HEALTH) return false;
  struct ccm_rpc_metadata md[] = {{"x-auth-token", opt.token}};
  s->started_ns = now_ns();
  int rc = ccm_rpc_client_start(g_client, paths[opt.mode], req, len, md,
                                opt.mode == MODE_HEALTH ? 0 : 1, opt.timeout_ms, on_done, s);
  free(req);
  return rc == CCM_OK;
}

/* Under g_mu: takes the stream's next request, or returns false (the
 * stream finishes) when the run is over. */
static bool next_request(struct stream *s, int64_t t) {
  if (opt.count > 0) {
    if ((long long)g_next_seq >= opt.count) return false;
  } else if (t >= g_stop_at) {
    return false;
  }
  uint64_t seq = g_next_seq++;
  s->number = opt.base + seq;
  s->batch = seq;
  g_started++;
  return true;
}

static void finish_stream_locked(void) {
  if (--g_active == 0) pthread_cond_broadcast(&g_cond);
}

/* Schedules the stream's current request again after the busy delay. */
static void retry_later_locked(struct stream *s, int64_t t) {
  if (s->backoff_ms <= 0) s->backoff_ms = opt.retry_busy_ms > 0 ? opt.retry_busy_ms : 1;
  s->due_ns = t + (int64_t)s->backoff_ms * 1000000LL;
  s->backoff_ms = s->backoff_ms * 2 > BUSY_BACKOFF_MAX_MS ? BUSY_BACKOFF_MAX_MS : s->backoff_ms * 2;
  struct stream **p = &g_retry_head;
  while (*p != NULL && (*p)->due_ns <= s->due_ns) p = &(*p)->next_retry;
  s->next_retry = *p;
  *p = s;
  pthread_cond_broadcast(&g_cond);
}

/* Counts an add-phones response's added and duplicate numbers. */
static void count_added(const struct ccm_rpc_reply *reply) {
  Callmanager__V1__AddPhoneNumbersResponse *r =
      callmanager__v1__add_phone_numbers_response__unpack(NULL, reply->len, reply->data);
  if (r == NULL) return;
  g_numbers_added += r->added_count;
  g_numbers_duplicate += r->duplicate_count;
  callmanager__v1__add_phone_numbers_response__free_unpacked(r, NULL);
}

static void on_done(void *user, const struct ccm_rpc_reply *reply) {
  struct stream *s = user;
  int64_t t = now_ns();
  bool again;
  pthread_mutex_lock(&g_mu);
  if (reply->grpc_status == CCM_GRPC_OK) {
    s->backoff_ms = 0;
    g_ok++;
    g_last_ok_ns = t;
    if (opt.mode == MODE_ADD_PHONES) count_added(reply);
    bool in_window = opt.count > 0 || (t >= g_measure_from && t <= g_stop_at);
    if (in_window) {
      g_ok_window++;
      record_latency(t - s->started_ns);
    }
  } else if (reply->grpc_status == CCM_GRPC_RESOURCE_EXHAUSTED && opt.retry_busy_ms >= 0 &&
             reply->error_reason != NULL && strcmp(reply->error_reason, "concurrency_limit") == 0) {
    g_busy_retries++;
    retry_later_locked(s, t);
    pthread_mutex_unlock(&g_mu);
    return;
  } else {
    int st = reply->grpc_status;
    g_errors[st >= 0 && st < STATUS_SLOTS ? st : STATUS_SLOTS]++;
    if (g_error_sample[0] == '\0') {
      snprintf(g_error_sample, sizeof g_error_sample, "status %d: %s%s%s", st, reply->message,
               reply->error_reason ? " reason " : "",
               reply->error_reason ? reply->error_reason : "");
    }
  }
  again = next_request(s, t);
  if (!again) finish_stream_locked();
  pthread_mutex_unlock(&g_mu);
  if (again && !start_call(s)) {
    pthread_mutex_lock(&g_mu);
    g_start_failed = true;
    finish_stream_locked();
    pthread_mutex_unlock(&g_mu);
  }
}

/* Starts the retried requests when they are due. */
static void *retry_thread(void *arg) {
  (void)arg;
  pthread_mutex_lock(&g_mu);
  while (!g_retry_stop) {
    if (g_retry_head == NULL) {
      pthread_cond_wait(&g_cond, &g_mu);
      continue;
    }
    int64_t t = now_ns();
    if (g_retry_head->due_ns > t) {
      int64_t wait = g_retry_head->due_ns - t;
      struct timespec until = ccm_time_deadline(CLOCK_REALTIME, (wait + 999999) / 1000000);
      pthread_cond_timedwait(&g_cond, &g_mu, &until);
      continue;
    }
    struct stream *s = g_retry_head;
    g_retry_head = s->next_retry;
    pthread_mutex_unlock(&g_mu);
    bool ok = start_call(s);
    pthread_mutex_lock(&g_mu);
    if (!ok) {
      g_start_failed = true;
      finish_stream_locked();
    }
  }
  pthread_mutex_unlock(&g_mu);
  return NULL;
}

/* --------------------------------------------------------------- output --- */

static double pct_ms(double p) {
  if (g_lat_n == 0) return 0;
  size_t i = (size_t)(p / 100.0 * (double)(g_lat_n - 1) + 0.5);
  if (i >= g_lat_n) i = g_lat_n - 1;
  return g_lat_us[i] / 1000.0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      printf("\\%c", c);
    } else if (c < 0x20) {
      printf("\\u%04x", c);
    } else {
      putchar(c);
    }
  }
  putchar('"');
}

static void report(int64_t t_end) {
  static const char *const names[] = {"initiate", "health", "add_phones"};
  qsort(g_lat_us, g_lat_n, sizeof *g_lat_us, cmp_u32);
  double window_s;
  if (opt.count > 0) {
    window_s = (double)((g_last_ok_ns > g_t0 ? g_last_ok_ns : t_end) - g_t0) / 1e9;
  } else {
    window_s = (double)(g_stop_at - g_measure_from) / 1e9;
  }
  if (window_s <= 0) window_s = 1e-9;
  double sum = 0;
  for (size_t i = 0; i < g_lat_n; i++) sum += g_lat_us[i];
  long long errors = 0;
  for (int i = 0; i <= STATUS_SLOTS; i++) errors += g_errors[i];
  printf(
      "{\"mode\":\"%s\",\"concurrency\":%d,\"window_s\":%.3f,\"started\":%lld,\"ok\":%lld,"
      "\"ok_in_window\":%lld,\"errors\":%lld,\"busy_retries\":%lld,",
      names[opt.mode], opt.concurrency, window_s, g_started, g_ok, g_ok_window, errors,
      g_busy_retries);
  printf("\"errors_by_status\":{");
  bool first = true;
  for (int i = 0; i <= STATUS_SLOTS; i++) {
    if (g_errors[i] == 0) continue;
    if (i < STATUS_SLOTS) {
      printf("%s\"%d\":%lld", first ? "" : ",", i, g_errors[i]);
    } else {
      printf("%s\"other\":%lld", first ? "" : ",", g_errors[i]);
    }
    first = false;
  }
  printf("},");
  printf("\"throughput_per_s\":%.1f,", (double)g_ok_window / window_s);
  if (opt.mode == MODE_ADD_PHONES) {
    printf(
        "\"batch\":%d,\"numbers_added\":%lld,\"numbers_duplicate\":%lld,"
        "\"numbers_per_s\":%.1f,",
        opt.batch, g_numbers_added, g_numbers_duplicate,
        (double)g_ok_window * opt.batch / window_s);
  }
  printf("\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"mean_ms\":%.3f,",
         pct_ms(50), pct_ms(90), pct_ms(99), pct_ms(100),
         g_lat_n ? sum / (double)g_lat_n / 1000.0 : 0.0);
  printf("\"elapsed_s\":%.3f,\"error_sample\":", (double)(t_end - g_t0) / 1e9);
  json_string(g_error_sample);
  printf("}\n");
}

/* ----------------------------------------------------------------- main --- */

static void usage(void) {
  fprintf(stderr,
          "usage: bench_grpc initiate|health|add-phones [-c N] [-d SECONDS] [-w SECONDS] "
          "[-n COUNT]\n"
          "       [--target HOST:PORT] [--token T] [--campaign ID] [--base DIGITS] "
          "[--batch N]\n"
          "       [--retry-busy MS] [--timeout-ms MS]\n");
  exit(2);
}

static double num_arg(const char *s, double lo, double hi) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || *end != '\0' || v < lo || v > hi) usage();
  return v;
}

static void parse(int argc, char **argv) {
  if (argc < 2) usage();
  if (strcmp(argv[1], "initiate") == 0) {
    opt.mode = MODE_INITIATE;
  } else if (strcmp(argv[1], "health") == 0) {
    opt.mode = MODE_HEALTH;
  } else if (strcmp(argv[1], "add-phones") == 0) {
    opt.mode = MODE_ADD_PHONES;
  } else {
    usage();
  }
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (v == NULL) usage();
    i++;
    if (strcmp(a, "-c") == 0) {
      opt.concurrency = (int)num_arg(v, 1, MAX_STREAMS);
    } else if (strcmp(a, "-d") == 0) {
      opt.duration_s = num_arg(v, 0.1, 86400);
    } else if (strcmp(a, "-w") == 0) {
      opt.warmup_s = num_arg(v, 0, 3600);
    } else if (strcmp(a, "-n") == 0) {
      opt.count = (long long)num_arg(v, 1, 1e12);
    } else if (strcmp(a, "--target") == 0) {
      opt.target = v;
    } else if (strcmp(a, "--token") == 0) {
      opt.token = v;
    } else if (strcmp(a, "--campaign") == 0) {
      opt.campaign = (long long)num_arg(v, 1, 9e15);
    } else if (strcmp(a, "--base") == 0) {
      char *end = NULL;
      opt.base = strtoull(v, &end, 10);
      if (end == v || *end != '\0' || opt.base < 1000000ULL) usage();
    } else if (strcmp(a, "--batch") == 0) {
      opt.batch = (int)num_arg(v, 1, 100000);
    } else if (strcmp(a, "--retry-busy") == 0) {
      opt.retry_busy_ms = (int)num_arg(v, 0, 60000);
    } else if (strcmp(a, "--timeout-ms") == 0) {
      opt.timeout_ms = (int)num_arg(v, 1, 3600000);
    } else {
      usage();
    }
  }
  if (opt.target == NULL) {
    const char *t = getenv("GRPC_TARGET");
    if (t != NULL && t[0] != '\0') {
      opt.target = t;
    } else {
      static char buf[64];
      const char *port = getenv("GRPC_PORT");
      snprintf(buf, sizeof buf, "127.0.0.1:%s", port != NULL && port[0] ? port : "50051");
      opt.target = buf;
    }
  }
}

/* One health call before the run, so connection set-up is not measured. */
static void connect_first(void) {
  for (int i = 0; i < 50; i++) {
    struct ccm_rpc_call_result r;
    memset(&r, 0, sizeof r);
    int rc = ccm_rpc_client_call(g_client, HEALTH_CHECK, NULL, 0, NULL, 0, 2000, &r);
    bool ok = rc == CCM_OK && r.grpc_status == CCM_GRPC_OK;
    ccm_rpc_call_result_free(&r);
    if (ok) return;
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
  }
  die("the server does not answer Health/Check");
}

int main(int argc, char **argv) {
  parse(argc, argv);
  if (ccm_rpc_client_create(opt.target, &g_client) != CCM_OK) die("cannot create the channel");
  connect_first();
  pthread_t retry;
  if (pthread_create(&retry, NULL, retry_thread, NULL) != 0) die("cannot start a thread");

  pthread_mutex_lock(&g_mu);
  g_t0 = now_ns();
  g_measure_from = g_t0 + (int64_t)(opt.warmup_s * 1e9);
  g_stop_at = g_measure_from + (int64_t)(opt.duration_s * 1e9);
  if (opt.count > 0) g_measure_from = g_t0;
  int n = opt.concurrency;
  if (opt.count > 0 && n > opt.count) n = (int)opt.count;
  g_active = n;
  for (int i = 0; i < n; i++) {
    g_streams[i].index = i;
    if (!next_request(&g_streams[i], g_t0)) g_active--;
  }
  int to_start = g_active;
  pthread_mutex_unlock(&g_mu);
  for (int i = 0; i < to_start; i++) {
    if (!start_call(&g_streams[i])) {
      pthread_mutex_lock(&g_mu);
      g_start_failed = true;
      finish_stream_locked();
      pthread_mutex_unlock(&g_mu);
    }
  }

  pthread_mutex_lock(&g_mu);
  while (g_active > 0) pthread_cond_wait(&g_cond, &g_mu);
  g_retry_stop = true;
  pthread_cond_broadcast(&g_cond);
  pthread_mutex_unlock(&g_mu);
  int64_t t_end = now_ns();
  pthread_join(retry, NULL);
  ccm_rpc_client_destroy(g_client);
  report(t_end);
  if (g_start_failed) fprintf(stderr, "bench_grpc: some calls could not be started\n");
  free(g_lat_us);
  return 0;
}
