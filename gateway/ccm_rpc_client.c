/* The gateway's gRPC client over the core API: one channel, registered calls,
 * one completion queue drained by one thread that runs the callbacks. Each
 * call is a single batch (send metadata + message + close, receive metadata +
 * message + status) whose per-call state is the tag. Calls in flight are kept
 * in a list so that they can be cancelled; destroy waits for all of them
 * before it shuts the queue down. */
#include "ccm_rpc_client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"

#define CLIENT_MAX_RECEIVE_BYTES (64 * 1024 * 1024)
/* After a failure the channel reconnects after 100 ms, backing off to 1 s,
 * so a restarted server is found again quickly; gRPC also uses the "min
 * reconnect backoff" as the connect timeout (TCP + HTTP/2 handshake), which
 * must stay generous. */
#define CLIENT_RECONNECT_FIRST_MS 100
#define CLIENT_RECONNECT_MAX_MS 1000
#define CLIENT_CONNECT_TIMEOUT_MS 3000
#define RETRY_AFTER_MAX_SECONDS 86400

struct method_reg {
  char *path;
  void *handle;
};

struct call_state {
  struct call_state *prev, *next;
  struct ccm_rpc_client *client;
  grpc_call *call;
  grpc_metadata md[CCM_RPC_CLIENT_MAX_METADATA];
  size_t md_count;
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  grpc_byte_buffer *send_buf;
  grpc_byte_buffer *recv_buf;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;
  ccm_rpc_client_done done;
  void *user;
};

struct ccm_rpc_client {
  grpc_channel *channel;
  grpc_completion_queue *cq;
  pthread_t thread;
  bool thread_started;
  pthread_mutex_t mu;
  pthread_cond_t idle; /* broadcast when in_flight drops to 0 */
  bool stopping;
  size_t in_flight;
  struct call_state *calls; /* list of calls in flight */
  struct method_reg methods[CCM_RPC_CLIENT_MAX_METHODS];
  size_t method_count;
};

/* ------------------------------------------------------------ helpers --- */

static void list_add(struct ccm_rpc_client *c, struct call_state *cs) {
  cs->prev = NULL;
  cs->next = c->calls;
  if (c->calls != NULL) c->calls->prev = cs;
  c->calls = cs;
}

static void list_remove(struct ccm_rpc_client *c, struct call_state *cs) {
  if (cs->prev != NULL) {
    cs->prev->next = cs->next;
  } else {
    c->calls = cs->next;
  }
  if (cs->next != NULL) cs->next->prev = cs->prev;
  cs->prev = NULL;
  cs->next = NULL;
}

static void call_state_free(struct call_state *cs) {
  if (cs == NULL) return;
  if (cs->call != NULL) grpc_call_unref(cs->call);
  for (size_t i = 0; i < cs->md_count; i++) {
    grpc_slice_unref(cs->md[i].key);
    grpc_slice_unref(cs->md[i].value);
  }
  grpc_metadata_array_destroy(&cs->initial_md);
  grpc_metadata_array_destroy(&cs->trailing_md);
  if (cs->send_buf != NULL) grpc_byte_buffer_destroy(cs->send_buf);
  if (cs->recv_buf != NULL) grpc_byte_buffer_destroy(cs->recv_buf);
  grpc_slice_unref(cs->details);
  if (cs->error_string != NULL) gpr_free((void *)cs->error_string);
  free(cs);
}

/* Returns the registered-call handle of path, registering it on first use;
 * NULL when the table is full. Called with c->mu held. */
static void *method_handle(struct ccm_rpc_client *c, const char *path) {
  for (size_t i = 0; i < c->method_count; i++) {
    if (strcmp(c->methods[i].path, path) == 0) return c->methods[i].handle;
  }
  if (c->method_count == CCM_RPC_CLIENT_MAX_METHODS) return NULL;
  char *copy = strdup(path);
  if (copy == NULL) return NULL;
  void *handle = grpc_channel_register_call(c->channel, copy, NULL, NULL);
  if (handle == NULL) {
    free(copy);
    return NULL;
  }
  c->methods[c->method_count].path = copy;
  c->methods[c->method_count].handle = handle;
  c->method_count++;
  return handle;
}

/* Copies a slice into buf (NUL-terminated, truncated to cap - 1 bytes). */
static void slice_copy(grpc_slice s, char *buf, size_t cap) {
  size_t n = GRPC_SLICE_LENGTH(s);
  if (n > cap - 1) n = cap - 1;
  memcpy(buf, GRPC_SLICE_START_PTR(s), n);
  buf[n] = '\0';
}

static bool slice_is(grpc_slice s, const char *text) {
  size_t n = strlen(text);
  return GRPC_SLICE_LENGTH(s) == n && memcmp(GRPC_SLICE_START_PTR(s), text, n) == 0;
}

/* Parses a non-negative decimal number of seconds; 0 when invalid. */
static int parse_retry_after(const char *text) {
  long v = 0;
  if (text[0] == '\0') return 0;
  for (const char *p = text; *p != '\0'; p++) {
    if (*p < '0' || *p > '9') return 0;
    v = v * 10 + (*p - '0');
    if (v > RETRY_AFTER_MAX_SECONDS) return RETRY_AFTER_MAX_SECONDS;
  }
  return (int)v;
}

/* ---------------------------------------------------- completion queue --- */

static void complete(struct call_state *cs, int success) {
  struct ccm_rpc_client *c = cs->client;
  char message[CCM_RPC_CLIENT_MAX_MESSAGE];
  char reason[CCM_RPC_CLIENT_MAX_VALUE];
  char field[CCM_RPC_CLIENT_MAX_VALUE];
  char retry[32];
  struct ccm_rpc_reply reply = {0};
  bool has_reason = false, has_field = false;

  reply.grpc_status = success ? (int)cs->status : CCM_GRPC_UNAVAILABLE;
  slice_copy(cs->details, message, sizeof message);
  reply.message = message;
  for (size_t i = 0; i < cs->trailing_md.count; i++) {
    const grpc_metadata *m = &cs->trailing_md.metadata[i];
    if (slice_is(m->key, "ccm-error-reason")) {
      slice_copy(m->value, reason, sizeof reason);
      has_reason = true;
    } else if (slice_is(m->key, "ccm-error-field")) {
      slice_copy(m->value, field, sizeof field);
      has_field = true;
    } else if (slice_is(m->key, "retry-after")) {
      slice_copy(m->value, retry, sizeof retry);
      reply.retry_after_seconds = parse_retry_after(retry);
    }
  }
  reply.error_reason = has_reason ? reason : NULL;
  reply.error_field = has_field ? field : NULL;

  grpc_slice body = grpc_empty_slice();
  bool have_body = false;
  if (reply.grpc_status == CCM_GRPC_OK && cs->recv_buf != NULL) {
    grpc_byte_buffer_reader reader;
    if (grpc_byte_buffer_reader_init(&reader, cs->recv_buf)) {
      body = grpc_byte_buffer_reader_readall(&reader);
      grpc_byte_buffer_reader_destroy(&reader);
      have_body = true;
    } else {
      reply.grpc_status = CCM_GRPC_INTERNAL;
    }
  }
  if (have_body) {
    reply.data = GRPC_SLICE_START_PTR(body);
    reply.len = GRPC_SLICE_LENGTH(body);
  }
  cs->done(cs->user, &reply);
  grpc_slice_unref(body);

  pthread_mutex_lock(&c->mu);
  list_remove(c, cs);
  c->in_flight--;
  if (c->in_flight == 0) pthread_cond_broadcast(&c->idle);
  pthread_mutex_unlock(&c->mu);
  call_state_free(cs);
}

static void *cq_thread(void *arg) {
  struct ccm_rpc_client *c = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE || ev.tag == NULL) continue;
    complete(ev.tag, ev.success);
  }
  return NULL;
}

/* ---------------------------------------------------------------- API --- */

int ccm_rpc_client_create(const char *target, struct ccm_rpc_client **out) {
  if (target == NULL || target[0] == '\0' || out == NULL) return CCM_EINVAL;
  *out = NULL;
  struct ccm_rpc_client *c = calloc(1, sizeof *c);
  if (c == NULL) return CCM_ENOMEM;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->idle, NULL);
  grpc_init();

  grpc_arg args[] = {
      {.type = GRPC_ARG_INTEGER,
       .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
       .value.integer = CLIENT_MAX_RECEIVE_BYTES},
      {.type = GRPC_ARG_INTEGER,
       .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
       .value.integer = CLIENT_RECONNECT_FIRST_MS},
      {.type = GRPC_ARG_INTEGER,
       .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
       .value.integer = CLIENT_CONNECT_TIMEOUT_MS},
      {.type = GRPC_ARG_INTEGER,
       .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
       .value.integer = CLIENT_RECONNECT_MAX_MS},
      /* The server is a peer of this deployment: never via http_proxy. */
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_HTTP_PROXY, .value.integer = 0},
  };
  grpc_channel_args channel_args = {.num_args = sizeof args / sizeof args[0], .args = args};
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  if (creds == NULL) {
    ccm_rpc_client_destroy(c);
    return CCM_EINTERNAL;
  }
  c->channel = grpc_channel_create(target, creds, &channel_args);
  grpc_channel_credentials_release(creds);
  c->cq = grpc_completion_queue_create_for_next(NULL);
  if (c->channel == NULL || c->cq == NULL) {
    ccm_rpc_client_destroy(c);
    return CCM_EINTERNAL;
  }
  if (pthread_create(&c->thread, NULL, cq_thread, c) != 0) {
    ccm_rpc_client_destroy(c);
    return CCM_EINTERNAL;
  }
  c->thread_started = true;
  *out = c;
  return CCM_OK;
}

/* Fills cs->md from the caller's metadata; CCM_EINVAL when a key or value is
 * not legal for gRPC (checked here, since an illegal entry poisons a call). */
static int copy_metadata(struct call_state *cs, const struct ccm_rpc_metadata *metadata,
                         size_t count) {
  for (size_t i = 0; i < count; i++) {
    const struct ccm_rpc_metadata *m = &metadata[i];
    if (m->key == NULL || m->value == NULL) return CCM_EINVAL;
    grpc_slice key = grpc_slice_from_copied_string(m->key);
    grpc_slice value = grpc_slice_from_copied_string(m->value);
    cs->md[cs->md_count].key = key;
    cs->md[cs->md_count].value = value;
    cs->md_count++;
    if (!grpc_header_key_is_legal(key) ||
        (!grpc_is_binary_header(key) && !grpc_header_nonbin_value_is_legal(value))) {
      return CCM_EINVAL;
    }
  }
  return CCM_OK;
}

int ccm_rpc_client_start(struct ccm_rpc_client *client, const char *method, const void *request,
                         size_t request_len, const struct ccm_rpc_metadata *metadata,
                         size_t metadata_count, int timeout_ms, ccm_rpc_client_done done,
                         void *user) {
  if (client == NULL || method == NULL || method[0] != '/' || done == NULL || timeout_ms <= 0 ||
      (request == NULL && request_len > 0) || (metadata == NULL && metadata_count > 0) ||
      metadata_count > CCM_RPC_CLIENT_MAX_METADATA) {
    return CCM_EINVAL;
  }
  struct call_state *cs = calloc(1, sizeof *cs);
  if (cs == NULL) return CCM_ENOMEM;
  cs->client = client;
  cs->done = done;
  cs->user = user;
  cs->details = grpc_empty_slice();
  grpc_metadata_array_init(&cs->initial_md);
  grpc_metadata_array_init(&cs->trailing_md);
  int rc = copy_metadata(cs, metadata, metadata_count);
  if (rc != CCM_OK) {
    call_state_free(cs);
    return rc;
  }
  grpc_slice payload =
      request_len > 0 ? grpc_slice_from_copied_buffer(request, request_len) : grpc_empty_slice();
  cs->send_buf = grpc_raw_byte_buffer_create(&payload, 1);
  grpc_slice_unref(payload);
  if (cs->send_buf == NULL) {
    call_state_free(cs);
    return CCM_ENOMEM;
  }

  gpr_timespec deadline =
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  pthread_mutex_lock(&client->mu);
  if (client->stopping) {
    pthread_mutex_unlock(&client->mu);
    call_state_free(cs);
    return CCM_EUNAVAILABLE;
  }
  void *handle = method_handle(client, method);
  if (handle != NULL) {
    cs->call = grpc_channel_create_registered_call(client->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                   client->cq, handle, deadline, NULL);
  } else {
    /* More distinct methods than the table holds: an unregistered call. */
    grpc_slice path = grpc_slice_from_copied_string(method);
    cs->call = grpc_channel_create_call(client->channel, NULL, GRPC_PROPAGATE_DEFAULTS, client->cq,
                                        path, NULL, deadline, NULL);
    grpc_slice_unref(path);
  }
  if (cs->call == NULL) {
    pthread_mutex_unlock(&client->mu);
    call_state_free(cs);
    return CCM_EINTERNAL;
  }
  list_add(client, cs);
  client->in_flight++;
  pthread_mutex_unlock(&client->mu);

  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = cs->md_count;
  ops[0].data.send_initial_metadata.metadata = cs->md_count > 0 ? cs->md : NULL;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = cs->send_buf;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &cs->initial_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &cs->recv_buf;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &cs->trailing_md;
  ops[5].data.recv_status_on_client.status = &cs->status;
  ops[5].data.recv_status_on_client.status_details = &cs->details;
  ops[5].data.recv_status_on_client.error_string = &cs->error_string;
  grpc_call_error err = grpc_call_start_batch(cs->call, ops, 6, cs, NULL);
  if (err != GRPC_CALL_OK) {
    pthread_mutex_lock(&client->mu);
    list_remove(client, cs);
    client->in_flight--;
    if (client->in_flight == 0) pthread_cond_broadcast(&client->idle);
    pthread_mutex_unlock(&client->mu);
    call_state_free(cs);
    return CCM_EINTERNAL;
  }
  return CCM_OK;
}

/* ----------------------------------------------------- blocking calls --- */

struct sync_call {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  bool done;
  struct ccm_rpc_call_result *out;
};

static char *dup_or_null(const char *s) { return s == NULL ? NULL : strdup(s); }

static void sync_done(void *user, const struct ccm_rpc_reply *reply) {
  struct sync_call *s = user;
  struct ccm_rpc_call_result *r = s->out;
  r->grpc_status = reply->grpc_status;
  r->message = strdup(reply->message);
  r->error_reason = dup_or_null(reply->error_reason);
  r->error_field = dup_or_null(reply->error_field);
  r->retry_after_seconds = reply->retry_after_seconds;
  if (reply->data != NULL && reply->len > 0) {
    r->data = malloc(reply->len);
    if (r->data != NULL) {
      memcpy(r->data, reply->data, reply->len);
      r->len = reply->len;
    }
  }
  bool lost = r->message == NULL || (reply->error_reason != NULL && r->error_reason == NULL) ||
              (reply->error_field != NULL && r->error_field == NULL) ||
              (reply->len > 0 && r->data == NULL);
  if (lost) r->grpc_status = CCM_GRPC_INTERNAL; /* out of memory while copying */
  pthread_mutex_lock(&s->mu);
  s->done = true;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->mu);
}

int ccm_rpc_client_call(struct ccm_rpc_client *client, const char *method, const void *request,
                        size_t request_len, const struct ccm_rpc_metadata *metadata,
                        size_t metadata_count, int timeout_ms, struct ccm_rpc_call_result *out) {
  if (out == NULL) return CCM_EINVAL;
  memset(out, 0, sizeof *out);
  struct sync_call s = {.done = false, .out = out};
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cond, NULL);
  int rc = ccm_rpc_client_start(client, method, request, request_len, metadata, metadata_count,
                                timeout_ms, sync_done, &s);
  if (rc == CCM_OK) {
    pthread_mutex_lock(&s.mu);
    while (!s.done) pthread_cond_wait(&s.cond, &s.mu);
    pthread_mutex_unlock(&s.mu);
  }
  pthread_cond_destroy(&s.cond);
  pthread_mutex_destroy(&s.mu);
  return rc;
}

void ccm_rpc_call_result_free(struct ccm_rpc_call_result *r) {
  if (r == NULL) return;
  free(r->message);
  free(r->error_reason);
  free(r->error_field);
  free(r->data);
  memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------- shutdown --- */

void ccm_rpc_client_cancel_all(struct ccm_rpc_client *client) {
  if (client == NULL) return;
  pthread_mutex_lock(&client->mu);
  for (struct call_state *cs = client->calls; cs != NULL; cs = cs->next) {
    grpc_call_cancel(cs->call, NULL);
  }
  pthread_mutex_unlock(&client->mu);
}

size_t ccm_rpc_client_in_flight(struct ccm_rpc_client *client) {
  if (client == NULL) return 0;
  pthread_mutex_lock(&client->mu);
  size_t n = client->in_flight;
  pthread_mutex_unlock(&client->mu);
  return n;
}

void ccm_rpc_client_destroy(struct ccm_rpc_client *client) {
  if (client == NULL) return;
  pthread_mutex_lock(&client->mu);
  client->stopping = true;
  for (struct call_state *cs = client->calls; cs != NULL; cs = cs->next) {
    grpc_call_cancel(cs->call, NULL);
  }
  while (client->in_flight > 0) pthread_cond_wait(&client->idle, &client->mu);
  pthread_mutex_unlock(&client->mu);
  if (client->cq != NULL) {
    grpc_completion_queue_shutdown(client->cq);
    if (client->thread_started) pthread_join(client->thread, NULL);
    grpc_completion_queue_destroy(client->cq);
  }
  if (client->channel != NULL) grpc_channel_destroy(client->channel);
  for (size_t i = 0; i < client->method_count; i++) free(client->methods[i].path);
  pthread_cond_destroy(&client->idle);
  pthread_mutex_destroy(&client->mu);
  free(client);
  grpc_shutdown_blocking();
}
