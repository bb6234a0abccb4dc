/* `ccm mock-provider`: the simulated telephony provider (SPEC section 11).
 *
 * HTTP: libmicrohttpd with an epoll thread pool. An initiate request is
 * decided as soon as its body has arrived (500 by MOCK_FAIL_RATE, replay of
 * a known Idempotency-Key, or a new dial); with MOCK_RESPONSE_DELAY_MS the
 * prepared answer waits in a time-ordered queue while the connection is
 * suspended, and one delay thread resumes it when due, so slow answers
 * cost no HTTP thread.
 *
 * Dials: one record per Idempotency-Key in a bounded open-addressing table
 * (a second table finds the latest dial of a call_id). A new dial draws its
 * callback delay, outcome and duration from a PRNG seeded by MOCK_SEED,
 * under the state lock and in dial order, and queues a callback job.
 *
 * Callbacks: a min-heap of jobs ordered by due time, served by a few sender
 * threads with one libcurl handle each. A job is retried after 1 s doubling
 * to 60 s until the gateway answers 2xx or 4xx, for up to 1 h. Stopping:
 * delayed answers are sent at once, the daemon stops, senders abort their
 * transfer and pending jobs are dropped with one log line. */
#include "ccm_mock.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ccm_buf.h"
#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_sign.h"
#include "ccm_signals.h"
#include "ccm_time.h"

#define LOGGER "mock.provider"
#define API_LOGGER "mock.api"
#define CALLS_LOGGER "mock.callbacks"

#define STATUS_COUNT 4
#define OUTCOMES_TEXT_MAX 1024
#define BODY_MAX (64u * 1024u)
#define PATH_MAX_LEN 256
#define CALL_ID_MAX 128
#define PHONE_MAX 64
#define KEY_MAX 255
#define TOKEN_MAX 4096
#define EXT_ID_LEN 24 /* "ext_" + 16 hex + NUL, rounded up */
#define ACTIVE_LIST_MAX 10000
#define TABLE_INITIAL 1024u
#define HEAP_INITIAL 256u
#define PICKED_MIN_S 10
#define PICKED_MAX_S 300
#define OTHER_MAX_S 10
#define CALLBACK_TIMEOUT_MS 10000L
#define CALLBACK_CONNECT_TIMEOUT_MS 5000L
#define HTTP_CONNECTION_LIMIT 10000u
#define HTTP_IDLE_TIMEOUT_S 60u
#define STOP_FLUSH_MS 100
#define HEADER_LINE_MAX (TOKEN_MAX + 64)

#define DEFAULT_RETRY_INITIAL_MS 1000
#define DEFAULT_RETRY_MAX_MS 60000
#define DEFAULT_GIVE_UP_MS 3600000
#define DEFAULT_SENDERS 16
#define DEFAULT_HTTP_THREADS 4
#define MAX_THREADS 64

enum { ST_PICKED, ST_DISCONNECTED, ST_RNR, ST_FAILED };
static const char *const status_names[STATUS_COUNT] = {"PICKED", "DISCONNECTED", "RNR", "FAILED"};

/* ---- small helpers ---------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int status_index(const char *name) {
  for (int i = 0; i < STATUS_COUNT; i++) {
    if (strcmp(name, status_names[i]) == 0) return i;
  }
  return -1;
}

/* Returns CLOCK_MONOTONIC in ms: the clock of every due time and condvar. */
static int64_t mono_ms(void) { return ccm_time_mono_ms(); }

/* Waits on cond until signalled or the monotonic time due_ms. */
static void wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t due_ms) {
  struct timespec ts = {.tv_sec = (time_t)(due_ms / 1000),
                        .tv_nsec = (long)(due_ms % 1000) * 1000000L};
  pthread_cond_timedwait(cond, mu, &ts);
}

static int init_cond(pthread_cond_t *cond) {
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return CCM_EINTERNAL;
  int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  if (rc == 0) rc = pthread_cond_init(cond, &attr);
  pthread_condattr_destroy(&attr);
  return rc == 0 ? CCM_OK : CCM_EINTERNAL;
}

/* ---- PRNG (splitmix64) ------------------------------------------------ */

static uint64_t rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Returns a uniform double in [0, 1). */
static double rng_unit(uint64_t *state) { return (double)(rng_next(state) >> 11) * 0x1.0p-53; }

/* Returns a uniform integer in [lo, hi] (lo when hi <= lo). */
static int64_t rng_range(uint64_t *state, int64_t lo, int64_t hi) {
  if (hi <= lo) return lo;
  uint64_t span = (uint64_t)(hi - lo) + 1u;
  return lo + (int64_t)(rng_next(state) % span);
}

static uint64_t random_seed(void) {
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
    seed = (uint64_t)ccm_time_now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)mono_ms();
  }
  return seed;
}

/* ---- MOCK_OUTCOMES ------------------------------------------------------ */

struct outcomes {
  double weight[STATUS_COUNT];
  double total;
};

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
  return s;
}

static int parse_outcome_item(char *item, struct outcomes *out, bool *seen, const char *text,
                              char *err, size_t errlen) {
  char *colon = strchr(item, ':');
  if (colon == NULL) {
    set_err(err, errlen, "invalid configuration: MOCK_OUTCOMES='%s': '%s' must be STATUS:WEIGHT",
            text, trim(item));
    return CCM_EINVAL;
  }
  *colon = '\0';
  char *name = trim(item);
  char *num = trim(colon + 1);
  int idx = status_index(name);
  if (idx < 0) {
    set_err(err, errlen,
            "invalid configuration: MOCK_OUTCOMES='%s': unknown status '%s' (expected PICKED, "
            "DISCONNECTED, RNR or FAILED)",
            text, name);
    return CCM_EINVAL;
  }
  if (seen[idx]) {
    set_err(err, errlen, "invalid configuration: MOCK_OUTCOMES='%s': %s is listed twice", text,
            name);
    return CCM_EINVAL;
  }
  char *end = NULL;
  errno = 0;
  double w = strtod(num, &end);
  if (*num == '\0' || end == NULL || *end != '\0' || errno != 0 || !isfinite(w) || w < 0.0) {
    set_err(err, errlen,
            "invalid configuration: MOCK_OUTCOMES='%s': weight '%s' of %s must be a non-negative "
            "number",
            text, num, name);
    return CCM_EINVAL;
  }
  seen[idx] = true;
  out->weight[idx] = w;
  out->total += w;
  return CCM_OK;
}

static int parse_outcomes(const char *text, struct outcomes *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (text == NULL || strlen(text) >= OUTCOMES_TEXT_MAX) {
    set_err(err, errlen, "invalid configuration: MOCK_OUTCOMES is missing or too long");
    return CCM_EINVAL;
  }
  char copy[OUTCOMES_TEXT_MAX];
  snprintf(copy, sizeof copy, "%s", text);
  bool seen[STATUS_COUNT] = {false};
  char *save = NULL;
  for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
    int rc = parse_outcome_item(item, out, seen, text, err, errlen);
    if (rc != CCM_OK) return rc;
  }
  if (!(out->total > 0.0) || !isfinite(out->total)) {
    set_err(err, errlen,
            "invalid configuration: MOCK_OUTCOMES='%s': the weights must add up to more than 0",
            text);
    return CCM_EINVAL;
  }
  return CCM_OK;
}

/* Returns the status index that u (in [0, 1)) falls on. */
static int outcome_pick(const struct outcomes *o, double u) {
  double x = u * o->total;
  int last = ST_PICKED;
  for (int i = 0; i < STATUS_COUNT; i++) {
    if (o->weight[i] <= 0.0) continue;
    last = i;
    if (x < o->weight[i]) return i;
    x -= o->weight[i];
  }
  return last; /* rounding at the top end */
}

int ccm_mock_check_outcomes(const char *text, char *err, size_t errlen) {
  struct outcomes o;
  return parse_outcomes(text, &o, err, errlen);
}

/* ---- min-heap of timed items ------------------------------------------ */

struct heap_item {
  int64_t due; /* monotonic ms */
  uint64_t seq;
  void *ptr;
};

struct heap {
  struct heap_item *items;
  size_t len, cap, max;
};

static bool item_before(const struct heap_item *a, const struct heap_item *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static int heap_push(struct heap *h, int64_t due, uint64_t seq, void *ptr) {
  if (h->len >= h->max) return CCM_EEXHAUSTED;
  if (h->len == h->cap) {
    size_t cap = h->cap > 0 ? h->cap * 2 : HEAP_INITIAL;
    if (cap > h->max) cap = h->max;
    struct heap_item *items = realloc(h->items, cap * sizeof *items);
    if (items == NULL) return CCM_ENOMEM;
    h->items = items;
    h->cap = cap;
  }
  size_t i = h->len++;
  h->items[i] = (struct heap_item){due, seq, ptr};
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!item_before(&h->items[i], &h->items[parent])) break;
    struct heap_item t = h->items[i];
    h->items[i] = h->items[parent];
    h->items[parent] = t;
    i = parent;
  }
  return CCM_OK;
}

/* Removes and returns the earliest item; the heap must not be empty. */
static struct heap_item heap_pop(struct heap *h) {
  struct heap_item top = h->items[0];
  h->items[0] = h->items[--h->len];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, best = i;
    if (l < h->len && item_before(&h->items[l], &h->items[best])) best = l;
    if (r < h->len && item_before(&h->items[r], &h->items[best])) best = r;
    if (best == i) break;
    struct heap_item t = h->items[i];
    h->items[i] = h->items[best];
    h->items[best] = t;
    i = best;
  }
  return top;
}

/* ---- dial records and their tables ------------------------------------ */

struct mock_call {
  char *key; /* Idempotency-Key */
  char *call_id;
  char *phone;
  char ext_id[EXT_ID_LEN];
  int attempt;
  unsigned long requests, dials;
  bool dialled;
  bool active;     /* dialled, callback not yet delivered (or given up) */
  bool superseded; /* a simulated callback replaced the scheduled one */
  int outcome;
  int duration;
  int64_t dialled_at; /* wall ms */
  int64_t due_at;     /* wall ms of the scheduled callback */
  struct mock_call *next_all;
  struct mock_call *prev_active, *next_active;
};

/* Open addressing with linear probing; no deletions (records live until
 * the mock stops), so lookups stop at the first empty slot. */
struct table {
  struct mock_call **slots;
  size_t cap, count;
  bool by_call_id;
};

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    h ^= *p;
    h *= 1099511628211ULL;
  }
  return h ^ (h >> 29);
}

static const char *table_key(const struct table *t, const struct mock_call *c) {
  return t->by_call_id ? c->call_id : c->key;
}

static size_t table_slot(const struct table *t, const char *key) {
  size_t mask = t->cap - 1;
  size_t i = (size_t)hash_str(key) & mask;
  while (t->slots[i] != NULL && strcmp(table_key(t, t->slots[i]), key) != 0) i = (i + 1) & mask;
  return i;
}

static struct mock_call *table_get(const struct table *t, const char *key) {
  if (t->cap == 0) return NULL;
  return t->slots[table_slot(t, key)];
}

static int table_grow(struct table *t) {
  size_t cap = t->cap > 0 ? t->cap * 2 : TABLE_INITIAL;
  struct mock_call **slots = calloc(cap, sizeof *slots);
  if (slots == NULL) return CCM_ENOMEM;
  struct table bigger = {slots, cap, t->count, t->by_call_id};
  for (size_t i = 0; i < t->cap; i++) {
    if (t->slots[i] != NULL)
      bigger.slots[table_slot(&bigger, table_key(t, t->slots[i]))] = t->slots[i];
  }
  free(t->slots);
  *t = bigger;
  return CCM_OK;
}

/* Inserts c, or replaces the record with the same key. */
static int table_put(struct table *t, struct mock_call *c) {
  if ((t->count + 1) * 2 > t->cap) {
    int rc = table_grow(t);
    if (rc != CCM_OK) return rc;
  }
  size_t i = table_slot(t, table_key(t, c));
  if (t->slots[i] == NULL) t->count++;
  t->slots[i] = c;
  return CCM_OK;
}

static struct mock_call *call_new(const char *key, const char *call_id, const char *phone) {
  size_t klen = strlen(key) + 1, clen = strlen(call_id) + 1, plen = strlen(phone) + 1;
  struct mock_call *c = calloc(1, sizeof *c + klen + clen + plen);
  if (c == NULL) return NULL;
  char *p = (char *)(c + 1);
  c->key = memcpy(p, key, klen);
  c->call_id = memcpy(p + klen, call_id, clen);
  c->phone = memcpy(p + klen + clen, phone, plen);
  return c;
}

/* ---- the mock ---------------------------------------------------------- */

struct cb_job {
  struct mock_call *call; /* NULL: a simulated callback for an unknown call */
  bool simulated;
  int status;
  int duration;
  char ext_id[EXT_ID_LEN];
  char *call_id;
  char *body; /* built at the first attempt, the same for every retry */
  int64_t first_try;
  int tries;
  int backoff_ms;
};

struct sender {
  struct ccm_mock *m;
  CURL *curl;
  pthread_t thread;
  bool started;
};

struct ccm_mock {
  char *callback_url, *token, *secret;
  double fail_rate;
  int response_delay_ms, delay_min_ms, delay_max_ms;
  struct outcomes outcomes;
  struct ccm_mock_options opt;
  int port;
  struct MHD_Daemon *daemon;
  bool curl_ready;

  pthread_mutex_t mu; /* everything below up to the delay part */
  pthread_cond_t cond;
  uint64_t rng_dial; /* seeded by MOCK_SEED: delays, outcomes, durations */
  uint64_t rng_free; /* failures, external ids, simulated durations */
  struct table by_key, by_call;
  struct mock_call *all_head, *all_tail;
  struct mock_call *active_head, *active_tail;
  size_t active_count;
  unsigned long requests, dials, sent[STATUS_COUNT];
  struct heap jobs;
  uint64_t job_seq;
  size_t jobs_live; /* queued or being sent */
  size_t dropped;   /* in flight when the mock stopped */
  bool stopping;
  atomic_bool abort_transfers;
  struct sender *senders;
  int sender_count;

  pthread_mutex_t delay_mu; /* delayed answers */
  pthread_cond_t delay_cond;
  struct heap delayed;
  uint64_t delay_seq;
  bool delay_stopping;
  pthread_t delay_thread;
  bool delay_started;
  bool locks_ready;
};

static void active_add(struct ccm_mock *m, struct mock_call *c) {
  if (c->active) return;
  c->active = true;
  c->prev_active = m->active_tail;
  c->next_active = NULL;
  if (m->active_tail != NULL) {
    m->active_tail->next_active = c;
  } else {
    m->active_head = c;
  }
  m->active_tail = c;
  m->active_count++;
}

static void active_remove(struct ccm_mock *m, struct mock_call *c) {
  if (!c->active) return;
  c->active = false;
  if (c->prev_active != NULL) {
    c->prev_active->next_active = c->next_active;
  } else {
    m->active_head = c->next_active;
  }
  if (c->next_active != NULL) {
    c->next_active->prev_active = c->prev_active;
  } else {
    m->active_tail = c->prev_active;
  }
  c->prev_active = c->next_active = NULL;
  m->active_count--;
}

static void new_ext_id(struct ccm_mock *m, char out[EXT_ID_LEN]) {
  snprintf(out, EXT_ID_LEN, "ext_%016llx", (unsigned long long)rng_next(&m->rng_free));
}

static void job_free(struct cb_job *job) {
  if (job == NULL) return;
  free(job->call_id);
  free(job->body);
  free(job);
}

static struct cb_job *job_new(struct ccm_mock *m, struct mock_call *call, const char *call_id,
                              const char *ext_id, int status, int duration) {
  struct cb_job *job = calloc(1, sizeof *job);
  if (job == NULL) return NULL;
  job->call_id = strdup(call_id);
  if (job->call_id == NULL) {
    free(job);
    return NULL;
  }
  job->call = call;
  job->status = status;
  job->duration = duration;
  snprintf(job->ext_id, sizeof job->ext_id, "%s", ext_id);
  job->backoff_ms = m->opt.retry_initial_ms;
  return job;
}

/* Queues job at monotonic time due; the caller holds m->mu. On error the
 * job is still the caller's. */
static int queue_job(struct ccm_mock *m, struct cb_job *job, int64_t due) {
  int rc = heap_push(&m->jobs, due, m->job_seq++, job);
  if (rc == CCM_OK) pthread_cond_signal(&m->cond);
  return rc;
}

/* ---- sending callbacks ------------------------------------------------- */

enum send_result { SEND_DONE, SEND_RETRY, SEND_GIVE_UP, SEND_ABORTED };

static size_t discard_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  (void)ptr;
  (void)userdata;
  return size * nmemb;
}

static int on_progress(void *p, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  (void)dltotal;
  (void)dlnow;
  (void)ultotal;
  (void)ulnow;
  struct ccm_mock *m = p;
  return atomic_load(&m->abort_transfers) ? 1 : 0;
}

static char *build_body(const struct cb_job *job) {
  char ts[CCM_TIME_ISO_BUF];
  ccm_time_format_iso(ccm_time_now_ms(), ts);
  json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:s}", "call_id", job->call_id, "status",
                        status_names[job->status], "call_duration", job->duration,
                        "external_call_id", job->ext_id, "timestamp", ts);
  if (o == NULL) return NULL;
  char *text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}

/* Performs one PUT of job's body; returns the HTTP status, or 0 with a
 * message in errbuf (CURL_ERROR_SIZE bytes) when no answer came. */
static long put_callback(struct ccm_mock *m, CURL *curl, const struct cb_job *job, char *errbuf) {
  char token_line[HEADER_LINE_MAX], ts_line[64], sig_line[128];
  struct curl_slist *headers = NULL, *next = NULL;
  next = curl_slist_append(headers, "Content-Type: application/json");
  if (next != NULL) headers = next;
  next = curl_slist_append(headers, "Expect:");
  if (next != NULL) headers = next;
  if (m->token[0] != '\0') {
    snprintf(token_line, sizeof token_line, "X-Auth-Token: %s", m->token);
    next = curl_slist_append(headers, token_line);
    if (next != NULL) headers = next;
  }
  if (m->secret != NULL) {
    char ts[32], sig[CCM_SIGN_HEADER_MAX];
    snprintf(ts, sizeof ts, "%lld", (long long)(ccm_time_now_ms() / 1000));
    if (ccm_sign_compute(m->secret, ts, job->body, strlen(job->body), sig) == CCM_OK) {
      snprintf(ts_line, sizeof ts_line, "X-Timestamp: %s", ts);
      snprintf(sig_line, sizeof sig_line, "X-Signature: %s", sig);
      next = curl_slist_append(headers, ts_line);
      if (next != NULL) headers = next;
      next = curl_slist_append(headers, sig_line);
      if (next != NULL) headers = next;
    }
  }
  curl_easy_reset(curl);
  errbuf[0] = '\0';
  curl_easy_setopt(curl, CURLOPT_URL, m->callback_url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, job->body);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(job->body));
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, CALLBACK_TIMEOUT_MS);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, CALLBACK_CONNECT_TIMEOUT_MS);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard_body);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, m);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode res = curl_easy_perform(curl);
  long code = 0;
  if (res == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  } else if (errbuf[0] == '\0') {
    snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(res));
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
  curl_slist_free_all(headers);
  return code;
}

/* Sends job once and logs the result; returns what to do with it next. */
static enum send_result deliver(struct ccm_mock *m, CURL *curl, struct cb_job *job) {
  if (job->body == NULL) {
    job->body = build_body(job);
    job->first_try = mono_ms();
    if (job->body == NULL) {
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_ERROR, CALLS_LOGGER,
                    "Callback for %s dropped: out of memory", job->call_id);
      return SEND_GIVE_UP;
    }
  }
  job->tries++;
  char errbuf[CURL_ERROR_SIZE];
  int64_t started = mono_ms();
  long code = put_callback(m, curl, job, errbuf);
  int64_t latency = mono_ms() - started;
  const char *status = status_names[job->status];
  if ((code >= 200 && code < 300) || (code >= 400 && code < 500)) {
    ccm_log_write(CCM_LOG_CALLS, code < 300 ? CCM_LOG_INFO : CCM_LOG_WARNING, CALLS_LOGGER,
                  "Callback sent: %s status=%s external_call_id=%s http=%ld attempt=%d "
                  "latency_ms=%lld%s",
                  job->call_id, status, job->ext_id, code, job->tries, (long long)latency,
                  job->simulated ? " (simulated)" : "");
    return SEND_DONE;
  }
  if (atomic_load(&m->abort_transfers)) return SEND_ABORTED;
  char why[CURL_ERROR_SIZE + 32];
  if (code != 0) {
    snprintf(why, sizeof why, "http=%ld", code);
  } else {
    snprintf(why, sizeof why, "error: %s", errbuf);
  }
  if (mono_ms() - job->first_try + job->backoff_ms > m->opt.give_up_ms) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_ERROR, CALLS_LOGGER,
                  "Callback for %s status=%s gave up after %d attempts (%s)", job->call_id, status,
                  job->tries, why);
    return SEND_GIVE_UP;
  }
  ccm_log_write(CCM_LOG_CALLS, CCM_LOG_WARNING, CALLS_LOGGER,
                "Callback for %s status=%s failed (%s), attempt %d; retrying in %d ms",
                job->call_id, status, why, job->tries, job->backoff_ms);
  return SEND_RETRY;
}

/* Applies the result of a send: queues the job again or frees it; the
 * caller holds m->mu. */
static void settle(struct ccm_mock *m, struct cb_job *job, enum send_result result) {
  struct mock_call *c = job->call;
  bool current = c != NULL && (job->simulated || !c->superseded);
  if (result == SEND_RETRY && !m->stopping) {
    int64_t due = mono_ms() + job->backoff_ms;
    job->backoff_ms =
        job->backoff_ms > m->opt.retry_max_ms / 2 ? m->opt.retry_max_ms : job->backoff_ms * 2;
    if (queue_job(m, job, due) == CCM_OK) return;
    result = SEND_GIVE_UP;
  }
  if (result == SEND_DONE) m->sent[job->status]++;
  if (result == SEND_ABORTED || result == SEND_RETRY) m->dropped++; /* stopping */
  if (current && (result == SEND_DONE || result == SEND_GIVE_UP)) active_remove(m, c);
  m->jobs_live--;
  job_free(job);
}

static void *sender_main(void *arg) {
  struct sender *s = arg;
  struct ccm_mock *m = s->m;
  pthread_mutex_lock(&m->mu);
  while (!m->stopping) {
    if (m->jobs.len == 0) {
      pthread_cond_wait(&m->cond, &m->mu);
      continue;
    }
    int64_t due = m->jobs.items[0].due;
    if (due > mono_ms()) {
      wait_until(&m->cond, &m->mu, due);
      continue;
    }
    struct cb_job *job = heap_pop(&m->jobs).ptr;
    if (!job->simulated && job->call != NULL && job->call->superseded) {
      m->jobs_live--;
      job_free(job); /* a simulated callback already told this call's outcome */
      continue;
    }
    pthread_mutex_unlock(&m->mu);
    enum send_result result = deliver(m, s->curl, job);
    pthread_mutex_lock(&m->mu);
    settle(m, job, result);
  }
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

/* ---- HTTP -------------------------------------------------------------- */

enum route { R_NONE, R_HEALTH, R_ACTIVE, R_STATS, R_INITIATE, R_SIMULATE };

static const struct {
  const char *path;
  const char *method;
  enum route route;
} routes[] = {
    {"/health", "GET", R_HEALTH},           {"/api/active-calls", "GET", R_ACTIVE},
    {"/api/stats", "GET", R_STATS},         {"/api/initiate-call", "POST", R_INITIATE},
    {"/initiate-call", "POST", R_INITIATE}, {"/api/simulate-callback", "POST", R_SIMULATE},
};

struct mock_req {
  struct ccm_mock *m;
  struct MHD_Connection *conn;
  char method[16];
  char path[PATH_MAX_LEN];
  bool path_too_long;
  int64_t started;
  struct ccm_buf body;
  bool body_too_large;
  bool prepared; /* a delayed answer is waiting in resp */
  int status;
  char *resp;
};

/* An answer being built: status and JSON (owned). */
struct answer {
  int status;
  json_t *json;
};

static struct answer answer_error(int status, const char *message) {
  return (struct answer){status, json_pack("{s:b, s:s}", "success", 0, "error", message)};
}

static enum MHD_Result queue_text(struct mock_req *rq, int status, char *text, const char *allow) {
  size_t len = text != NULL ? strlen(text) : 0;
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      len, text != NULL ? (void *)text : (void *)"",
      text != NULL ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (resp == NULL) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (allow != NULL) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
  enum MHD_Result ok = MHD_queue_response(rq->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  if (ok == MHD_YES) rq->status = status;
  return ok;
}

/* Serialises a (consumes its JSON); returns NULL when out of memory. */
static char *answer_text(struct answer *a) {
  char *text = a->json != NULL ? json_dumps(a->json, JSON_COMPACT) : NULL;
  json_decref(a->json);
  a->json = NULL;
  if (text == NULL) a->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
  return text;
}

static enum MHD_Result respond(struct mock_req *rq, struct answer a, const char *allow) {
  char *text = answer_text(&a);
  return queue_text(rq, a.status, text, allow);
}

/* Parses rq's body as a JSON object; on failure fills *bad and returns NULL. */
static json_t *parse_object(const struct mock_req *rq, struct answer *bad) {
  json_error_t jerr;
  json_t *root = json_loadb(rq->body.data != NULL ? rq->body.data : "", rq->body.len, 0, &jerr);
  if (root == NULL) {
    *bad = answer_error(MHD_HTTP_BAD_REQUEST, "Malformed JSON body.");
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    *bad = answer_error(MHD_HTTP_BAD_REQUEST, "The body must be a JSON object.");
    return NULL;
  }
  return root;
}

/* Returns the non-empty string field name of o, at most max bytes, or NULL. */
static const char *string_field(json_t *o, const char *name, size_t max) {
  json_t *v = json_object_get(o, name);
  if (!json_is_string(v)) return NULL;
  size_t len = json_string_length(v);
  if (len == 0 || len > max) return NULL;
  const char *s = json_string_value(v);
  return strlen(s) == len ? s : NULL; /* no embedded NUL */
}

struct initiate {
  const char *call_id, *phone;
  int attempt;
  char key[KEY_MAX + 1];
};

static bool read_initiate(struct mock_req *rq, json_t *o, struct initiate *in, struct answer *bad) {
  in->call_id = string_field(o, "call_id", CALL_ID_MAX);
  in->phone = string_field(o, "phone_number", PHONE_MAX);
  json_t *campaign = json_object_get(o, "campaign_id");
  bool campaign_ok =
      json_is_integer(campaign) || (json_is_string(campaign) && json_string_length(campaign) > 0);
  if (in->call_id == NULL || in->phone == NULL || !campaign_ok) {
    *bad = answer_error(MHD_HTTP_BAD_REQUEST,
                        "call_id, phone_number and campaign_id are required (call_id at most 128 "
                        "characters, phone_number at most 64).");
    return false;
  }
  json_t *name = json_object_get(o, "campaign_name");
  if (name != NULL && !json_is_string(name) && !json_is_null(name)) {
    *bad = answer_error(MHD_HTTP_BAD_REQUEST, "campaign_name must be a string.");
    return false;
  }
  json_t *attempt = json_object_get(o, "attempt");
  in->attempt = 1;
  if (attempt != NULL && !json_is_null(attempt)) {
    json_int_t a = json_is_integer(attempt) ? json_integer_value(attempt) : 0;
    if (a < 1 || a > 1000000) {
      *bad = answer_error(MHD_HTTP_BAD_REQUEST, "attempt must be a positive integer.");
      return false;
    }
    in->attempt = (int)a;
  }
  const char *hdr = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Idempotency-Key");
  if (hdr != NULL && hdr[0] != '\0') {
    if (strlen(hdr) > KEY_MAX) {
      *bad = answer_error(MHD_HTTP_BAD_REQUEST, "Idempotency-Key is longer than 255 characters.");
      return false;
    }
    snprintf(in->key, sizeof in->key, "%s", hdr);
  } else {
    snprintf(in->key, sizeof in->key, "%s:%d", in->call_id, in->attempt);
  }
  return true;
}

static struct answer answer_initiated(const struct mock_call *c) {
  return (struct answer){
      MHD_HTTP_OK, json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "external_call_id", c->ext_id,
                             "call_id", c->call_id, "status", "initiated")};
}

/* Records a new dial of c and queues its callback; the caller holds m->mu.
 * Returns CCM_OK, or an error with nothing recorded. */
static int dial(struct ccm_mock *m, struct mock_call *c) {
  if (m->jobs_live >= CCM_MOCK_MAX_CALLBACKS) return CCM_EEXHAUSTED;
  char ext[EXT_ID_LEN];
  new_ext_id(m, ext);
  int64_t delay = rng_range(&m->rng_dial, m->delay_min_ms, m->delay_max_ms);
  int outcome = outcome_pick(&m->outcomes, rng_unit(&m->rng_dial));
  int duration = outcome == ST_PICKED ? (int)rng_range(&m->rng_dial, PICKED_MIN_S, PICKED_MAX_S)
                                      : (int)rng_range(&m->rng_dial, 0, OTHER_MAX_S);
  struct cb_job *job = job_new(m, c, c->call_id, ext, outcome, duration);
  if (job == NULL) return CCM_ENOMEM;
  int rc = table_put(&m->by_call, c);
  if (rc == CCM_OK) rc = queue_job(m, job, mono_ms() + delay);
  if (rc != CCM_OK) {
    job_free(job);
    return rc;
  }
  m->jobs_live++;
  memcpy(c->ext_id, ext, sizeof ext);
  c->dialled = true;
  c->dials++;
  c->outcome = outcome;
  c->duration = duration;
  c->dialled_at = ccm_time_now_ms();
  c->due_at = c->dialled_at + delay;
  m->dials++;
  active_add(m, c);
  return CCM_OK;
}

/* Finds or creates the record of key; the caller holds m->mu. */
static struct mock_call *record_for(struct ccm_mock *m, const struct initiate *in, int *rc) {
  struct mock_call *c = table_get(&m->by_key, in->key);
  if (c != NULL) return c;
  if (m->by_key.count >= CCM_MOCK_MAX_KEYS) {
    *rc = CCM_EEXHAUSTED;
    return NULL;
  }
  c = call_new(in->key, in->call_id, in->phone);
  if (c == NULL || table_put(&m->by_key, c) != CCM_OK) {
    free(c);
    *rc = CCM_ENOMEM;
    return NULL;
  }
  c->attempt = in->attempt;
  if (m->all_tail != NULL) {
    m->all_tail->next_all = c;
  } else {
    m->all_head = c;
  }
  m->all_tail = c;
  return c;
}

static struct answer handle_initiate(struct mock_req *rq) {
  struct ccm_mock *m = rq->m;
  struct answer a = {0, NULL};
  pthread_mutex_lock(&m->mu);
  m->requests++;
  pthread_mutex_unlock(&m->mu);
  json_t *o = parse_object(rq, &a);
  if (o == NULL) return a;
  struct initiate in;
  if (!read_initiate(rq, o, &in, &a)) {
    json_decref(o);
    return a;
  }
  enum { NEW_DIAL, REPLAY, FAILED, FULL, NOMEM } what = NOMEM;
  char ext[EXT_ID_LEN] = "";
  int delay_ms = 0;
  const char *outcome = "";
  pthread_mutex_lock(&m->mu);
  int rc = CCM_OK;
  struct mock_call *c = record_for(m, &in, &rc);
  if (c != NULL) c->requests++;
  if (c == NULL) {
    what = rc == CCM_EEXHAUSTED ? FULL : NOMEM;
  } else if (c->dialled) {
    what = REPLAY;
    a = answer_initiated(c);
  } else if (rng_unit(&m->rng_free) < m->fail_rate) {
    what = FAILED; /* decided before anything is recorded: a 500 is not a dial */
  } else {
    rc = dial(m, c);
    what = rc == CCM_OK ? NEW_DIAL : rc == CCM_EEXHAUSTED ? FULL : NOMEM;
  }
  if (what == NEW_DIAL) {
    a = answer_initiated(c);
    memcpy(ext, c->ext_id, sizeof ext);
    delay_ms = (int)(c->due_at - c->dialled_at);
    outcome = status_names[c->outcome];
  }
  pthread_mutex_unlock(&m->mu);
  switch (what) {
    case NEW_DIAL:
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, LOGGER,
                    "Dialled %s (key %s, attempt %d) external_call_id=%s: %s callback in %d ms",
                    in.call_id, in.key, in.attempt, ext, outcome, delay_ms);
      break;
    case REPLAY:
      ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, LOGGER,
                    "Repeated request for key %s: same external call, nothing dialled", in.key);
      break;
    case FAILED:
      a = answer_error(MHD_HTTP_INTERNAL_SERVER_ERROR, "Simulated provider failure.");
      break;
    case FULL:
      a = answer_error(MHD_HTTP_SERVICE_UNAVAILABLE, "The mock provider's state is full.");
      break;
    case NOMEM:
      a = answer_error(MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory.");
      break;
  }
  json_decref(o);
  return a;
}

static bool read_simulate(struct mock_req *rq, json_t *o, const char **call_id, int *status,
                          int *duration, struct answer *bad) {
  (void)rq;
  *call_id = string_field(o, "call_id", CALL_ID_MAX);
  const char *st = string_field(o, "status", 32);
  *status = st != NULL ? status_index(st) : -1;
  if (*call_id == NULL) {
    *bad = answer_error(MHD_HTTP_BAD_REQUEST, "call_id is required (at most 128 characters).");
    return false;
  }
  if (*status < 0) {
    *bad = answer_error(MHD_HTTP_BAD_REQUEST,
                        "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED");
    return false;
  }
  json_t *d = json_object_get(o, "call_duration");
  *duration = -1;
  if (d != NULL && !json_is_null(d)) {
    json_int_t v = json_is_integer(d) ? json_integer_value(d) : -1;
    if (v < 0 || v > 86400) {
      *bad = answer_error(MHD_HTTP_BAD_REQUEST, "call_duration must be a non-negative integer.");
      return false;
    }
    *duration = (int)v;
  }
  return true;
}

static struct answer handle_simulate(struct mock_req *rq) {
  struct ccm_mock *m = rq->m;
  struct answer a = {0, NULL};
  json_t *o = parse_object(rq, &a);
  if (o == NULL) return a;
  const char *call_id = NULL;
  int status = -1, duration = -1;
  if (!read_simulate(rq, o, &call_id, &status, &duration, &a)) {
    json_decref(o);
    return a;
  }
  char ext[EXT_ID_LEN];
  int rc = CCM_EEXHAUSTED;
  pthread_mutex_lock(&m->mu);
  if (m->jobs_live < CCM_MOCK_MAX_CALLBACKS) {
    struct mock_call *c = table_get(&m->by_call, call_id);
    if (c != NULL && c->dialled) {
      memcpy(ext, c->ext_id, sizeof ext);
    } else {
      c = NULL;
      new_ext_id(m, ext);
    }
    if (duration < 0) {
      duration = status == ST_PICKED ? (int)rng_range(&m->rng_free, PICKED_MIN_S, PICKED_MAX_S) : 0;
    }
    struct cb_job *job = job_new(m, c, call_id, ext, status, duration);
    rc = job != NULL ? CCM_OK : CCM_ENOMEM;
    if (rc == CCM_OK) {
      job->simulated = true;
      rc = queue_job(m, job, mono_ms());
      if (rc != CCM_OK) job_free(job);
    }
    if (rc == CCM_OK) {
      m->jobs_live++;
      if (c != NULL) c->superseded = true;
    }
  }
  pthread_mutex_unlock(&m->mu);
  if (rc == CCM_OK) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_INFO, LOGGER,
                  "Simulated callback for %s: %s (external_call_id=%s)", call_id,
                  status_names[status], ext);
    a = (struct answer){MHD_HTTP_OK,
                        json_pack("{s:b, s:s, s:s, s:s}", "success", 1, "call_id", call_id,
                                  "external_call_id", ext, "status", status_names[status])};
  } else if (rc == CCM_EEXHAUSTED) {
    a = answer_error(MHD_HTTP_SERVICE_UNAVAILABLE, "The callback queue is full.");
  } else {
    a = answer_error(MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory.");
  }
  json_decref(o);
  return a;
}

static json_t *active_entry(const struct mock_call *c) {
  char dialled[CCM_TIME_ISO_BUF], due[CCM_TIME_ISO_BUF];
  return json_pack("{s:s, s:s, s:s, s:s, s:i, s:s, s:s, s:s}", "call_id", c->call_id,
                   "external_call_id", c->ext_id, "idempotency_key", c->key, "phone_number",
                   c->phone, "attempt", c->attempt, "outcome", status_names[c->outcome],
                   "dialled_at", ccm_time_format_iso(c->dialled_at, dialled), "callback_due_at",
                   ccm_time_format_iso(c->due_at, due));
}

static struct answer handle_active(struct ccm_mock *m) {
  json_t *list = json_array();
  size_t count = 0;
  pthread_mutex_lock(&m->mu);
  count = m->active_count;
  size_t n = 0;
  for (const struct mock_call *c = m->active_head; c != NULL && list != NULL && n < ACTIVE_LIST_MAX;
       c = c->next_active, n++) {
    json_array_append_new(list, active_entry(c));
  }
  pthread_mutex_unlock(&m->mu);
  if (list == NULL) return answer_error(MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory.");
  return (struct answer){MHD_HTTP_OK, json_pack("{s:o, s:I, s:b}", "active_calls", list, "count",
                                                (json_int_t)count, "truncated", count > n)};
}

static struct answer handle_stats(struct ccm_mock *m) {
  json_t *by_key = json_object();
  json_t *sent = json_object();
  pthread_mutex_lock(&m->mu);
  for (int i = 0; i < STATUS_COUNT && sent != NULL; i++) {
    json_object_set_new(sent, status_names[i], json_integer((json_int_t)m->sent[i]));
  }
  for (const struct mock_call *c = m->all_head; c != NULL && by_key != NULL; c = c->next_all) {
    json_object_set_new(by_key, c->key,
                        json_pack("{s:I, s:I}", "requests", (json_int_t)c->requests, "dials",
                                  (json_int_t)c->dials));
  }
  json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:o?, s:o?}", "requests", (json_int_t)m->requests,
                        "dials", (json_int_t)m->dials, "active_calls", (json_int_t)m->active_count,
                        "pending_callbacks", (json_int_t)m->jobs_live, "callbacks_sent", sent,
                        "by_key", by_key);
  pthread_mutex_unlock(&m->mu);
  if (o == NULL) return answer_error(MHD_HTTP_INTERNAL_SERVER_ERROR, "Out of memory.");
  return (struct answer){MHD_HTTP_OK, o};
}

/* Parks rq's answer text until the response delay has passed. Returns true
 * when the connection was suspended (text then belongs to rq); false when
 * the mock is stopping or the queue is full (text is still the caller's). */
static bool delay_answer(struct mock_req *rq, int status, char *text) {
  struct ccm_mock *m = rq->m;
  bool parked = false;
  pthread_mutex_lock(&m->delay_mu);
  if (!m->delay_stopping &&
      heap_push(&m->delayed, mono_ms() + m->response_delay_ms, m->delay_seq++, rq) == CCM_OK) {
    rq->resp = text;
    rq->status = status;
    rq->prepared = true;
    MHD_suspend_connection(rq->conn);
    pthread_cond_signal(&m->delay_cond);
    parked = true;
  }
  pthread_mutex_unlock(&m->delay_mu);
  return parked;
}

static void *delay_main(void *arg) {
  struct ccm_mock *m = arg;
  pthread_mutex_lock(&m->delay_mu);
  for (;;) {
    if (m->delayed.len == 0) {
      if (m->delay_stopping) break;
      pthread_cond_wait(&m->delay_cond, &m->delay_mu);
      continue;
    }
    int64_t due = m->delayed.items[0].due;
    if (!m->delay_stopping && due > mono_ms()) {
      wait_until(&m->delay_cond, &m->delay_mu, due);
      continue;
    }
    struct mock_req *rq = heap_pop(&m->delayed).ptr;
    MHD_resume_connection(rq->conn);
  }
  pthread_mutex_unlock(&m->delay_mu);
  return NULL;
}

static enum route find_route(const struct mock_req *rq, const char **allow) {
  *allow = NULL;
  if (rq->path_too_long) return R_NONE;
  for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
    if (strcmp(rq->path, routes[i].path) != 0) continue;
    *allow = routes[i].method;
    if (strcmp(rq->method, routes[i].method) == 0) return routes[i].route;
  }
  return R_NONE;
}

static enum MHD_Result on_complete(struct mock_req *rq) {
  if (rq->prepared) {
    char *text = rq->resp;
    rq->resp = NULL;
    rq->prepared = false;
    return queue_text(rq, rq->status, text, NULL);
  }
  const char *allow = NULL;
  enum route route = find_route(rq, &allow);
  if (route == R_NONE && allow != NULL) {
    return respond(rq, answer_error(MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed."), allow);
  }
  if (route == R_NONE) return respond(rq, answer_error(MHD_HTTP_NOT_FOUND, "Not found."), NULL);
  if (rq->body_too_large) {
    return respond(rq, answer_error(MHD_HTTP_CONTENT_TOO_LARGE, "Request body too large."), NULL);
  }
  struct answer a = {0, NULL};
  switch (route) {
    case R_HEALTH:
      a = (struct answer){MHD_HTTP_OK, json_pack("{s:s}", "status", "ok")};
      break;
    case R_ACTIVE:
      a = handle_active(rq->m);
      break;
    case R_STATS:
      a = handle_stats(rq->m);
      break;
    case R_INITIATE:
      a = handle_initiate(rq);
      if (rq->m->response_delay_ms > 0) {
        char *text = answer_text(&a);
        if (text != NULL && delay_answer(rq, a.status, text)) return MHD_YES;
        return queue_text(rq, a.status, text, NULL);
      }
      break;
    case R_SIMULATE:
      a = handle_simulate(rq);
      break;
    case R_NONE:
      break;
  }
  return respond(rq, a, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
  (void)version;
  struct mock_req *rq = *req_cls;
  if (rq == NULL) {
    rq = calloc(1, sizeof *rq);
    if (rq == NULL) return MHD_NO;
    rq->m = cls;
    rq->conn = conn;
    rq->started = mono_ms();
    snprintf(rq->method, sizeof rq->method, "%s", method);
    size_t len = strlen(url);
    if (len > 1 && url[len - 1] == '/') len--; /* "/health/" is "/health" */
    if (len >= sizeof rq->path) {
      rq->path_too_long = true; /* no route is that long: 404, logged truncated */
      len = sizeof rq->path - 1;
    }
    memcpy(rq->path, url, len);
    rq->path[len] = '\0';
    ccm_buf_init(&rq->body, BODY_MAX);
    *req_cls = rq;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (!rq->body_too_large &&
        ccm_buf_append(&rq->body, upload_data, *upload_data_size) != CCM_OK) {
      rq->body_too_large = true;
      ccm_buf_free(&rq->body);
    }
    *upload_data_size = 0;
    return MHD_YES;
  }
  return on_complete(rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  struct mock_req *rq = *req_cls;
  if (rq == NULL) return;
  *req_cls = NULL;
  char path[PATH_MAX_LEN];
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)rq->path; *p != '\0' && n + 1 < sizeof path;
       p++) {
    path[n++] = (*p < 0x21 || *p > 0x7e) ? '?' : (char)*p;
  }
  path[n] = '\0';
  long long latency = (long long)(mono_ms() - rq->started);
  if (rq->status != 0) {
    ccm_log_write(CCM_LOG_API, rq->status >= 500 ? CCM_LOG_WARNING : CCM_LOG_INFO, API_LOGGER,
                  "Incoming Request: %s %s status=%d latency_ms=%lld", rq->method, path, rq->status,
                  latency);
  } else {
    ccm_log_write(CCM_LOG_API, CCM_LOG_INFO, API_LOGGER,
                  "Incoming Request: %s %s status=0 latency_ms=%lld (closed: %d)", rq->method, path,
                  latency, (int)toe);
  }
  ccm_buf_free(&rq->body);
  free(rq->resp);
  free(rq);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  ccm_warn(LOGGER, "libmicrohttpd: %s", line);
}

/* ---- start and stop --------------------------------------------------- */

static int copy_settings(struct ccm_mock *m, const struct ccm_config *cfg,
                         const struct ccm_mock_options *opts, char *err, size_t errlen) {
  if (cfg->callback_url == NULL || cfg->callback_url[0] == '\0') {
    set_err(err, errlen, "invalid configuration: CALLBACK_URL is empty");
    return CCM_EINVAL;
  }
  const char *token = cfg->mock_callback_token != NULL ? cfg->mock_callback_token : "";
  if (strlen(token) > TOKEN_MAX || strpbrk(token, "\r\n") != NULL) {
    set_err(err, errlen, "invalid configuration: MOCK_CALLBACK_TOKEN is too long or multi-line");
    return CCM_EINVAL;
  }
  if (!(cfg->mock_fail_rate >= 0.0 && cfg->mock_fail_rate <= 1.0)) {
    set_err(err, errlen, "invalid configuration: MOCK_FAIL_RATE must be a number from 0 to 1");
    return CCM_EINVAL;
  }
  if (cfg->mock_delay_min_ms < 0 || cfg->mock_delay_max_ms < cfg->mock_delay_min_ms ||
      cfg->mock_response_delay_ms < 0) {
    set_err(err, errlen,
            "invalid configuration: MOCK_DELAY_MIN_MS/MOCK_DELAY_MAX_MS/MOCK_RESPONSE_DELAY_MS "
            "must be non-negative, min not above max");
    return CCM_EINVAL;
  }
  if (cfg->mock_port < 0 || cfg->mock_port > 65535) {
    set_err(err, errlen, "invalid configuration: MOCK_PORT=%d is not a port", cfg->mock_port);
    return CCM_EINVAL;
  }
  int rc = parse_outcomes(cfg->mock_outcomes, &m->outcomes, err, errlen);
  if (rc != CCM_OK) return rc;
  m->callback_url = strdup(cfg->callback_url);
  m->token = strdup(token);
  if (cfg->callback_signing_secret != NULL && cfg->callback_signing_secret[0] != '\0') {
    m->secret = strdup(cfg->callback_signing_secret);
    if (m->secret == NULL) return CCM_ENOMEM;
  }
  if (m->callback_url == NULL || m->token == NULL) return CCM_ENOMEM;
  m->fail_rate = cfg->mock_fail_rate;
  m->response_delay_ms = cfg->mock_response_delay_ms;
  m->delay_min_ms = cfg->mock_delay_min_ms;
  m->delay_max_ms = cfg->mock_delay_max_ms;
  m->port = cfg->mock_port;
  m->rng_dial = cfg->mock_seed_set ? (uint64_t)cfg->mock_seed : random_seed();
  m->rng_free = random_seed();
  struct ccm_mock_options o = {0};
  if (opts != NULL) o = *opts;
  m->opt.retry_initial_ms = o.retry_initial_ms > 0 ? o.retry_initial_ms : DEFAULT_RETRY_INITIAL_MS;
  m->opt.retry_max_ms = o.retry_max_ms > 0 ? o.retry_max_ms : DEFAULT_RETRY_MAX_MS;
  if (m->opt.retry_max_ms < m->opt.retry_initial_ms) m->opt.retry_max_ms = m->opt.retry_initial_ms;
  m->opt.give_up_ms = o.give_up_ms > 0 ? o.give_up_ms : DEFAULT_GIVE_UP_MS;
  m->opt.senders = o.senders > 0 && o.senders <= MAX_THREADS ? o.senders : DEFAULT_SENDERS;
  m->opt.http_threads =
      o.http_threads > 0 && o.http_threads <= MAX_THREADS ? o.http_threads : DEFAULT_HTTP_THREADS;
  return CCM_OK;
}

static int start_senders(struct ccm_mock *m) {
  m->senders = calloc((size_t)m->opt.senders, sizeof *m->senders);
  if (m->senders == NULL) return CCM_ENOMEM;
  m->sender_count = m->opt.senders;
  for (int i = 0; i < m->sender_count; i++) {
    m->senders[i].m = m;
    m->senders[i].curl = curl_easy_init();
    if (m->senders[i].curl == NULL) return CCM_EINTERNAL;
  }
  for (int i = 0; i < m->sender_count; i++) {
    if (pthread_create(&m->senders[i].thread, NULL, sender_main, &m->senders[i]) != 0) {
      return CCM_EINTERNAL;
    }
    m->senders[i].started = true;
  }
  return CCM_OK;
}

static int start_http(struct ccm_mock *m, char *err, size_t errlen) {
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  /* one thread is the daemon's own: a pool of 1 draws a warning */
  unsigned pool = m->opt.http_threads > 1 ? (unsigned)m->opt.http_threads : 0u;
  m->daemon = MHD_start_daemon(
      flags, (uint16_t)m->port, NULL, NULL, on_request, m, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
      m, MHD_OPTION_THREAD_POOL_SIZE, pool, MHD_OPTION_CONNECTION_LIMIT, HTTP_CONNECTION_LIMIT,
      MHD_OPTION_CONNECTION_TIMEOUT, HTTP_IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
      m, MHD_OPTION_END);
  if (m->daemon == NULL) {
    set_err(err, errlen, "cannot listen on 0.0.0.0:%d (MOCK_PORT)", m->port);
    return CCM_EIO;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
  if (info != NULL && info->port != 0) m->port = info->port;
  return CCM_OK;
}

int ccm_mock_start(const struct ccm_config *cfg, const struct ccm_mock_options *opts,
                   struct ccm_mock **out, char *err, size_t errlen) {
  if (out == NULL) return CCM_EINVAL;
  *out = NULL;
  if (cfg == NULL) {
    set_err(err, errlen, "no configuration");
    return CCM_EINVAL;
  }
  struct ccm_mock *m = calloc(1, sizeof *m);
  if (m == NULL) return CCM_ENOMEM;
  int rc = copy_settings(m, cfg, opts, err, errlen);
  if (rc == CCM_OK) {
    m->by_call.by_call_id = true;
    m->jobs.max = CCM_MOCK_MAX_CALLBACKS;
    m->delayed.max = HTTP_CONNECTION_LIMIT;
    atomic_init(&m->abort_transfers, false);
    bool ok = pthread_mutex_init(&m->mu, NULL) == 0 &&
              pthread_mutex_init(&m->delay_mu, NULL) == 0 && init_cond(&m->cond) == CCM_OK &&
              init_cond(&m->delay_cond) == CCM_OK;
    m->locks_ready = ok;
    rc = ok ? CCM_OK : CCM_EINTERNAL;
  }
  if (rc == CCM_OK) {
    m->curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    rc = m->curl_ready ? CCM_OK : CCM_EINTERNAL;
  }
  if (rc == CCM_OK) rc = start_senders(m);
  if (rc == CCM_OK) {
    m->delay_started = pthread_create(&m->delay_thread, NULL, delay_main, m) == 0;
    rc = m->delay_started ? CCM_OK : CCM_EINTERNAL;
  }
  if (rc == CCM_OK) rc = start_http(m, err, errlen);
  if (rc != CCM_OK) {
    if (rc == CCM_ENOMEM || rc == CCM_EINTERNAL) {
      set_err(err, errlen, "cannot start the mock provider: %s", ccm_error_name(rc));
    }
    ccm_mock_stop(m);
    return rc;
  }
  ccm_info(LOGGER,
           "Mock provider listening on 0.0.0.0:%d (callbacks to %s, delay %d..%d ms, outcomes %s, "
           "fail rate %.2f, response delay %d ms, signing %s)",
           m->port, m->callback_url, m->delay_min_ms, m->delay_max_ms, cfg->mock_outcomes,
           m->fail_rate, m->response_delay_ms, m->secret != NULL ? "on" : "off");
  *out = m;
  return CCM_OK;
}

int ccm_mock_port(const struct ccm_mock *m) { return m != NULL ? m->port : 0; }

static void stop_http(struct ccm_mock *m) {
  if (m->delay_started) {
    pthread_mutex_lock(&m->delay_mu);
    m->delay_stopping = true;
    bool waiting = m->delayed.len > 0;
    pthread_cond_broadcast(&m->delay_cond);
    pthread_mutex_unlock(&m->delay_mu);
    pthread_join(m->delay_thread, NULL);
    m->delay_started = false;
    /* resumed connections send their answers before the daemon stops */
    if (waiting && m->daemon != NULL) ccm_time_sleep_ms(STOP_FLUSH_MS);
  }
  if (m->daemon != NULL) MHD_stop_daemon(m->daemon);
  m->daemon = NULL;
}

static void stop_senders(struct ccm_mock *m) {
  if (m->senders == NULL) return;
  atomic_store(&m->abort_transfers, true);
  pthread_mutex_lock(&m->mu);
  m->stopping = true;
  pthread_cond_broadcast(&m->cond);
  pthread_mutex_unlock(&m->mu);
  for (int i = 0; i < m->sender_count; i++) {
    if (m->senders[i].started) pthread_join(m->senders[i].thread, NULL);
    if (m->senders[i].curl != NULL) curl_easy_cleanup(m->senders[i].curl);
  }
  free(m->senders);
  m->senders = NULL;
}

void ccm_mock_stop(struct ccm_mock *m) {
  if (m == NULL) return;
  stop_http(m);
  stop_senders(m);
  size_t dropped = m->jobs.len + m->dropped;
  while (m->jobs.len > 0) job_free(heap_pop(&m->jobs).ptr);
  if (dropped > 0) {
    ccm_log_write(CCM_LOG_CALLS, CCM_LOG_WARNING, LOGGER,
                  "Mock provider stopping: %zu pending callbacks dropped", dropped);
  }
  free(m->jobs.items);
  free(m->delayed.items);
  for (struct mock_call *c = m->all_head, *next = NULL; c != NULL; c = next) {
    next = c->next_all;
    free(c);
  }
  free(m->by_key.slots);
  free(m->by_call.slots);
  if (m->locks_ready) {
    pthread_mutex_destroy(&m->mu);
    pthread_mutex_destroy(&m->delay_mu);
    pthread_cond_destroy(&m->cond);
    pthread_cond_destroy(&m->delay_cond);
  }
  if (m->curl_ready) curl_global_cleanup();
  free(m->callback_url);
  free(m->token);
  free(m->secret);
  free(m);
}

/* ---- the subcommand ---------------------------------------------------- */

/* Runs `ccm mock-provider` until SIGINT/SIGTERM; returns CCM_EXIT_OK after a
 * clean stop, CCM_EXIT_USAGE for bad configuration (MOCK_OUTCOMES, ...) or
 * arguments, CCM_EXIT_FAILURE when the port cannot be bound. */
int ccm_cmd_mock_provider(int argc, char **argv) {
  if (argc > 1) {
    fprintf(stderr, "ccm mock-provider: unexpected argument '%s' (try --help)\n", argv[1]);
    return CCM_EXIT_USAGE;
  }
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct ccm_config cfg;
  memset(&cfg, 0, sizeof cfg);
  int exit_code = ccm_cli_setup(&cfg, "mock-provider");
  if (exit_code != CCM_EXIT_OK) {
    ccm_config_free(&cfg);
    return exit_code;
  }
  char err[512] = "";
  struct ccm_mock *m = NULL;
  int rc = ccm_mock_start(&cfg, NULL, &m, err, sizeof err);
  if (rc != CCM_OK) {
    fprintf(stderr, "ccm mock-provider: %s\n", err);
    ccm_error(LOGGER, "%s", err);
    ccm_config_free(&cfg);
    return rc == CCM_EINVAL ? CCM_EXIT_USAGE : CCM_EXIT_FAILURE;
  }
  for (;;) {
    int sig = ccm_signals_wait(1000);
    if (sig == SIGINT || sig == SIGTERM) {
      ccm_info(LOGGER, "signal %d: stopping the mock provider", sig);
      break;
    }
  }
  ccm_mock_stop(m);
  ccm_info(LOGGER, "Mock provider stopped");
  ccm_config_free(&cfg);
  return CCM_EXIT_OK;
}
