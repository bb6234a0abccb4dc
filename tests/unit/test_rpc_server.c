/* Unit tests for server/ccm_rpc_server.c: a ccm_rpc_server on 127.0.0.1 with
 * a small fake method table, driven by a gRPC core client written here
 * (unary calls on a per-call pluck queue, reflection as a bidi stream).
 * Covers OK replies, error status with trailing metadata, bad payloads,
 * unknown methods, metadata limits, deadlines, health, reflection (the real
 * descriptor set and a hand-made one with dependencies), 50 concurrent
 * calls, graceful shutdown with a slow call and with an open stream, and
 * the api.log lines.
 *
 * `test_rpc_server --serve [ADDR] [SECONDS]` only runs the fake server
 * (default 127.0.0.1:50051 for 30 s), for manual checks from other clients. */
#include <dirent.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_rpc.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"

extern const unsigned char ccm_descriptor_set[];
extern const size_t ccm_descriptor_set_len;

#define WORKERS 4
/* Short names for the oneof cases of the reflection messages. */
#define REFL_REQ(name) GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##name
#define REFL_RESP(name) \
  GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##name
#define CONCURRENT_CALLS 50
#define CALL_TIMEOUT_MS 5000
#define PATH_GET_CAMPAIGN "/callmanager.v1.CallManager/GetCampaign"
#define PATH_GET_CALL "/callmanager.v1.CallManager/GetCall"
#define PATH_SLOW "/callmanager.v1.CallManager/ListCampaigns"
#define PATH_HEALTH "/grpc.health.v1.Health/Check"
#define PATH_REFL_V1 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define PATH_REFL_V1ALPHA "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

/* ---- the fake application -------------------------------------------- */

static atomic_int worker_inits;
static atomic_int worker_frees;
static atomic_int worker_mismatch; /* handler saw another worker's data */
static atomic_int slow_entered;
static atomic_llong last_time_left = -1;

/* Checks that ctx carries this worker's own state. */
static void check_worker(const struct ccm_rpc_ctx *ctx) {
  const int *data = ctx->worker_data;
  if (data == NULL || *data != ctx->worker) atomic_fetch_add(&worker_mismatch, 1);
}

/* GetCampaign: echoes the id; name = x-auth-token, description =
 * idempotency-key; records the time left before the deadline. */
static void get_campaign(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *request,
                         struct ccm_rpc_result *out) {
  const Callmanager__V1__GetCampaignRequest *req =
      (const Callmanager__V1__GetCampaignRequest *)request;
  check_worker(ctx);
  atomic_store(&last_time_left, (long long)ccm_rpc_time_left_ms(ctx));
  Callmanager__V1__GetCampaignResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  Callmanager__V1__Campaign *c = ccm_arena_alloc(ctx->arena, sizeof *c);
  if (resp == NULL || c == NULL) {
    out->status = CCM_ENOMEM;
    return;
  }
  callmanager__v1__get_campaign_response__init(resp);
  callmanager__v1__campaign__init(c);
  c->id = req->id;
  c->name = (char *)(ctx->auth_token != NULL ? ctx->auth_token : "none");
  if (ctx->idempotency_key != NULL) {
    c->_description_case = CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION;
    c->description = (char *)ctx->idempotency_key;
  }
  resp->campaign = c;
  out->status = CCM_OK;
  out->response = &resp->base;
}

/* GetCall: always NOT_FOUND with reason, field and retry-after. */
static void get_call(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *request,
                     struct ccm_rpc_result *out) {
  (void)request;
  check_worker(ctx);
  out->status = CCM_ENOTFOUND;
  out->message = "Call not found.";
  out->reason = "invalid_field";
  out->field = "call_id";
  out->retry_after_seconds = 7;
}

/* ListCampaigns: sleeps `offset` ms, then answers an empty list. */
static void slow_call(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *request,
                      struct ccm_rpc_result *out) {
  const Callmanager__V1__ListCampaignsRequest *req =
      (const Callmanager__V1__ListCampaignsRequest *)request;
  check_worker(ctx);
  atomic_fetch_add(&slow_entered, 1);
  struct timespec ts = {req->offset / 1000, (req->offset % 1000) * 1000000};
  nanosleep(&ts, NULL);
  Callmanager__V1__ListCampaignsResponse *resp = ccm_arena_alloc(ctx->arena, sizeof *resp);
  if (resp == NULL) {
    out->status = CCM_ENOMEM;
    return;
  }
  callmanager__v1__list_campaigns_response__init(resp);
  out->status = CCM_OK;
  out->response = &resp->base;
}

static const struct ccm_rpc_method fake_methods[] = {
    {PATH_GET_CAMPAIGN, &callmanager__v1__get_campaign_request__descriptor, get_campaign},
    {PATH_GET_CALL, &callmanager__v1__get_call_request__descriptor, get_call},
    {PATH_SLOW, &callmanager__v1__list_campaigns_request__descriptor, slow_call},
};

/* Worker state: the worker's index, malloc'd (LSan checks worker_free). */
static void *fake_worker_init(void *app, int worker) {
  (void)app;
  int *data = malloc(sizeof *data);
  if (data != NULL) *data = worker;
  atomic_fetch_add(&worker_inits, 1);
  return data;
}

static void fake_worker_free(void *app, void *data) {
  (void)app;
  free(data);
  atomic_fetch_add(&worker_frees, 1);
}

/* "" serving, the API not serving (to see the value pass), others unknown. */
static enum ccm_rpc_health fake_health(void *app, const char *service) {
  (void)app;
  if (strcmp(service, "") == 0) return CCM_RPC_SERVING;
  if (strcmp(service, "callmanager.v1.CallManager") == 0) return CCM_RPC_NOT_SERVING;
  return CCM_RPC_UNKNOWN_SERVICE;
}

static struct ccm_rpc_server_options fake_options(const char *address) {
  struct ccm_rpc_server_options o;
  memset(&o, 0, sizeof o);
  o.listen_address = address;
  o.workers = WORKERS;
  o.methods = fake_methods;
  o.method_count = sizeof fake_methods / sizeof fake_methods[0];
  o.worker_init = fake_worker_init;
  o.worker_free = fake_worker_free;
  o.health = fake_health;
  o.descriptor_set = ccm_descriptor_set;
  o.descriptor_set_len = ccm_descriptor_set_len;
  return o;
}

/* Creates and starts a server on the first free port from 50600 + pid%1000;
 * fills address. Returns NULL when none could be bound. */
static struct ccm_rpc_server *start_server(struct ccm_rpc_server_options *o, char *address,
                                           size_t cap) {
  static int next_offset; /* each server of the run on another port */
  for (int k = 0; k < 50; k++) {
    int offset = next_offset++;
    snprintf(address, cap, "127.0.0.1:%d", 50600 + ((int)getpid() + offset * 7) % 1000);
    o->listen_address = address;
    struct ccm_rpc_server *srv = NULL;
    int rc = ccm_rpc_server_create(o, &srv);
    if (rc == CCM_EIO) continue;
    if (rc != CCM_OK) return NULL;
    if (ccm_rpc_server_start(srv) != CCM_OK) {
      ccm_rpc_server_destroy(srv);
      return NULL;
    }
    return srv;
  }
  return NULL;
}

/* ---- a small gRPC core client ------------------------------------------ */

struct reply {
  grpc_status_code status;
  char *details;
  grpc_metadata_array trailing;
  bool has_body;
  uint8_t *body;
  size_t body_len;
};

/* Returns a malloc'd copy of a byte buffer's bytes. */
static uint8_t *buffer_bytes(grpc_byte_buffer *bb, size_t *len) {
  grpc_byte_buffer_reader reader;
  assert_true(grpc_byte_buffer_reader_init(&reader, bb));
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  *len = GRPC_SLICE_LENGTH(all);
  uint8_t *out = malloc(*len + 1);
  assert_non_null(out);
  memcpy(out, GRPC_SLICE_START_PTR(all), *len);
  grpc_slice_unref(all);
  return out;
}

/* Returns a byte buffer holding a copy of data. */
static grpc_byte_buffer *bytes_buffer(const void *data, size_t len) {
  grpc_slice s = grpc_slice_from_copied_buffer(data, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

static gpr_timespec deadline_in(int ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* One unary call: a single batch on a per-call pluck queue. Safe from any
 * thread (no cmocka asserts): a start failure shows as status UNKNOWN. */
static void call_unary(grpc_channel *ch, const char *method, const void *req, size_t len,
                       grpc_metadata *md, size_t n_md, int timeout_ms, struct reply *out) {
  memset(out, 0, sizeof *out);
  grpc_metadata_array_init(&out->trailing);
  grpc_metadata_array initial;
  grpc_metadata_array_init(&initial);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                             grpc_slice_from_static_string(method), NULL,
                                             deadline_in(timeout_ms), NULL);
  grpc_byte_buffer *send = bytes_buffer(req, len);
  grpc_byte_buffer *recv = NULL;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = n_md;
  ops[0].data.send_initial_metadata.metadata = md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &out->trailing;
  ops[5].data.recv_status_on_client.status = &out->status;
  ops[5].data.recv_status_on_client.status_details = &details;
  ops[5].data.recv_status_on_client.error_string = &error_string;
  int tag;
  out->status = GRPC_STATUS_UNKNOWN;
  if (grpc_call_start_batch(call, ops, 6, &tag, NULL) == GRPC_CALL_OK) {
    grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  }
  out->details = grpc_slice_to_c_string(details);
  grpc_slice_unref(details);
  gpr_free((void *)error_string);
  if (recv != NULL) {
    grpc_byte_buffer_reader reader;
    grpc_byte_buffer_reader_init(&reader, recv);
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    out->has_body = true;
    out->body_len = GRPC_SLICE_LENGTH(all);
    out->body = malloc(out->body_len + 1);
    if (out->body != NULL) memcpy(out->body, GRPC_SLICE_START_PTR(all), out->body_len);
    grpc_slice_unref(all);
    grpc_byte_buffer_destroy(recv);
  }
  grpc_byte_buffer_destroy(send);
  grpc_metadata_array_destroy(&initial);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  grpc_completion_queue_destroy(cq);
}

static void reply_free(struct reply *r) {
  gpr_free(r->details);
  free(r->body);
  grpc_metadata_array_destroy(&r->trailing);
}

/* Returns a malloc'd copy of the first trailing value for key, or NULL. */
static char *trailing_value(const struct reply *r, const char *key) {
  for (size_t i = 0; i < r->trailing.count; i++) {
    if (grpc_slice_str_cmp(r->trailing.metadata[i].key, key) == 0) {
      return grpc_slice_to_c_string(r->trailing.metadata[i].value);
    }
  }
  return NULL;
}

/* Packs a message and calls method; see call_unary. */
static void call_message(grpc_channel *ch, const char *method, const ProtobufCMessage *msg,
                         grpc_metadata *md, size_t n_md, int timeout_ms, struct reply *out) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n + 1);
  assert_non_null(buf);
  protobuf_c_message_pack(msg, buf);
  call_unary(ch, method, buf, n, md, n_md, timeout_ms, out);
  free(buf);
}

static grpc_channel *open_channel(const char *address) {
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(address, creds, NULL);
  grpc_channel_credentials_release(creds);
  return ch;
}

/* A reflection stream on its own pluck queue. */
struct stream {
  grpc_completion_queue *cq;
  grpc_call *call;
  grpc_metadata_array initial;
};

static void stream_open(struct stream *st, grpc_channel *ch, const char *path) {
  grpc_metadata_array_init(&st->initial);
  st->cq = grpc_completion_queue_create_for_pluck(NULL);
  st->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, st->cq,
                                      grpc_slice_from_static_string(path), NULL,
                                      deadline_in(CALL_TIMEOUT_MS), NULL);
  assert_non_null(st->call);
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[1].data.recv_initial_metadata.recv_initial_metadata = &st->initial;
  int tag;
  assert_int_equal(grpc_call_start_batch(st->call, ops, 2, &tag, NULL), GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(st->cq, &tag, deadline_in(CALL_TIMEOUT_MS), NULL);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  assert_true(ev.success);
}

/* Sends one request and returns the unpacked response (free with
 * protobuf_c_message_free_unpacked). */
static Grpc__Reflection__V1alpha__ServerReflectionResponse *stream_ask(
    struct stream *st, const Grpc__Reflection__V1alpha__ServerReflectionRequest *req) {
  size_t n = grpc__reflection__v1alpha__server_reflection_request__get_packed_size(req);
  uint8_t *buf = malloc(n + 1);
  assert_non_null(buf);
  grpc__reflection__v1alpha__server_reflection_request__pack(req, buf);
  grpc_byte_buffer *send = bytes_buffer(buf, n);
  free(buf);
  grpc_byte_buffer *recv = NULL;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_MESSAGE;
  ops[0].data.send_message.send_message = send;
  ops[1].op = GRPC_OP_RECV_MESSAGE;
  ops[1].data.recv_message.recv_message = &recv;
  int tag;
  assert_int_equal(grpc_call_start_batch(st->call, ops, 2, &tag, NULL), GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(st->cq, &tag, deadline_in(CALL_TIMEOUT_MS), NULL);
  grpc_byte_buffer_destroy(send);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  assert_true(ev.success);
  assert_non_null(recv);
  size_t len;
  uint8_t *bytes = buffer_bytes(recv, &len);
  grpc_byte_buffer_destroy(recv);
  Grpc__Reflection__V1alpha__ServerReflectionResponse *resp =
      grpc__reflection__v1alpha__server_reflection_response__unpack(NULL, len, bytes);
  free(bytes);
  assert_non_null(resp);
  return resp;
}

/* Half-closes (when half_close) and returns the final status. */
static grpc_status_code stream_finish(struct stream *st, bool half_close) {
  grpc_metadata_array trailing;
  grpc_metadata_array_init(&trailing);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_byte_buffer *recv = NULL;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (half_close) ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n++].data.recv_message.recv_message = &recv;
  ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[n].data.recv_status_on_client.trailing_metadata = &trailing;
  ops[n].data.recv_status_on_client.status = &status;
  ops[n++].data.recv_status_on_client.status_details = &details;
  int tag;
  assert_int_equal(grpc_call_start_batch(st->call, ops, n, &tag, NULL), GRPC_CALL_OK);
  grpc_event ev = grpc_completion_queue_pluck(st->cq, &tag, deadline_in(CALL_TIMEOUT_MS), NULL);
  assert_int_equal(ev.type, GRPC_OP_COMPLETE);
  if (recv != NULL) grpc_byte_buffer_destroy(recv);
  assert_null(recv);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&trailing);
  grpc_metadata_array_destroy(&st->initial);
  grpc_call_unref(st->call);
  grpc_completion_queue_shutdown(st->cq);
  grpc_completion_queue_destroy(st->cq);
  return status;
}

/* ---- fixture ------------------------------------------------------------ */

static struct ccm_rpc_server *server;
static grpc_channel *channel;
static char server_address[64];
static struct ccm_rpc_server_options options;
static char log_dir[64];

static int setup(void **state) {
  (void)state;
  snprintf(log_dir, sizeof log_dir, "/tmp/ccm-test-rpc-%d", (int)getpid());
  if (ccm_log_open(log_dir, CCM_LOG_INFO) != CCM_OK) return -1;
  grpc_init();
  options = fake_options(NULL);
  server = start_server(&options, server_address, sizeof server_address);
  if (server == NULL) return -1;
  channel = open_channel(server_address);
  return channel == NULL ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  if (channel != NULL) grpc_channel_destroy(channel);
  ccm_rpc_server_shutdown(server, 1000);
  ccm_rpc_server_destroy(server);
  grpc_shutdown();
  ccm_log_close();
  DIR *dir = opendir(log_dir); /* the six logs, rotation lock file, backups */
  struct dirent *e = dir != NULL ? readdir(dir) : NULL;
  char path[512];
  for (; e != NULL; e = readdir(dir)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", log_dir, e->d_name);
    unlink(path);
  }
  if (dir != NULL) closedir(dir);
  rmdir(log_dir);
  return 0;
}

static void get_campaign_call(grpc_channel *ch, int64_t id, grpc_metadata *md, size_t n_md,
                              struct reply *out) {
  Callmanager__V1__GetCampaignRequest req = CALLMANAGER__V1__GET_CAMPAIGN_REQUEST__INIT;
  req.id = id;
  call_message(ch, PATH_GET_CAMPAIGN, &req.base, md, n_md, CALL_TIMEOUT_MS, out);
}

/* ---- tests -------------------------------------------------------------- */

static void test_options_rejected(void **state) {
  (void)state;
  struct ccm_rpc_server *srv = (struct ccm_rpc_server *)1;
  assert_int_equal(ccm_rpc_server_create(NULL, &srv), CCM_EINVAL);
  assert_null(srv);
  struct ccm_rpc_server_options o = fake_options("127.0.0.1:0");
  o.workers = 0;
  assert_int_equal(ccm_rpc_server_create(&o, &srv), CCM_EINVAL);
  o = fake_options("127.0.0.1:0");
  static const unsigned char bad_set[] = {0x0a, 0x05, 0x01};
  o.descriptor_set = bad_set;
  o.descriptor_set_len = sizeof bad_set;
  assert_int_equal(ccm_rpc_server_create(&o, &srv), CCM_EINVAL);
  o = fake_options(server_address); /* already bound: no SO_REUSEPORT sharing */
  assert_int_equal(ccm_rpc_server_create(&o, &srv), CCM_EIO);
  assert_null(srv);
  ccm_rpc_server_destroy(NULL);
}

static void test_ok_response(void **state) {
  (void)state;
  grpc_metadata md[2];
  memset(md, 0, sizeof md);
  md[0].key = grpc_slice_from_static_string("x-auth-token");
  md[0].value = grpc_slice_from_static_string("tok-1");
  md[1].key = grpc_slice_from_static_string("idempotency-key");
  md[1].value = grpc_slice_from_static_string("idem-1");
  struct reply r;
  get_campaign_call(channel, 42, md, 2, &r);
  assert_int_equal(r.status, GRPC_STATUS_OK);
  assert_true(r.has_body);
  Callmanager__V1__GetCampaignResponse *resp =
      callmanager__v1__get_campaign_response__unpack(NULL, r.body_len, r.body);
  assert_non_null(resp);
  assert_non_null(resp->campaign);
  assert_int_equal(resp->campaign->id, 42);
  assert_string_equal(resp->campaign->name, "tok-1");
  assert_int_equal(resp->campaign->_description_case,
                   CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION);
  assert_string_equal(resp->campaign->description, "idem-1");
  callmanager__v1__get_campaign_response__free_unpacked(resp, NULL);
  reply_free(&r);
  /* no deadline from this client beyond CALL_TIMEOUT_MS: time left is sane */
  long long left = atomic_load(&last_time_left);
  assert_true(left > 0 && left <= CALL_TIMEOUT_MS);
  assert_int_equal(atomic_load(&worker_inits), WORKERS);
  assert_int_equal(atomic_load(&worker_mismatch), 0);
}

static void test_error_metadata(void **state) {
  (void)state;
  Callmanager__V1__GetCallRequest req = CALLMANAGER__V1__GET_CALL_REQUEST__INIT;
  req.call_id = "abc";
  struct reply r;
  call_message(channel, PATH_GET_CALL, &req.base, NULL, 0, CALL_TIMEOUT_MS, &r);
  assert_int_equal(r.status, GRPC_STATUS_NOT_FOUND);
  assert_string_equal(r.details, "Call not found.");
  assert_false(r.has_body);
  char *reason = trailing_value(&r, "ccm-error-reason");
  char *field = trailing_value(&r, "ccm-error-field");
  char *retry = trailing_value(&r, "retry-after");
  assert_non_null(reason);
  assert_non_null(field);
  assert_non_null(retry);
  assert_string_equal(reason, "invalid_field");
  assert_string_equal(field, "call_id");
  assert_string_equal(retry, "7");
  gpr_free(reason);
  gpr_free(field);
  gpr_free(retry);
  reply_free(&r);
}

static void test_garbage_request(void **state) {
  (void)state;
  static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x08};
  struct reply r;
  call_unary(channel, PATH_GET_CAMPAIGN, garbage, sizeof garbage, NULL, 0, CALL_TIMEOUT_MS, &r);
  assert_int_equal(r.status, GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(r.details, "Invalid request message.");
  reply_free(&r);
}

static void test_unknown_method(void **state) {
  (void)state;
  struct reply r;
  call_unary(channel, "/callmanager.v1.CallManager/Nope", "", 0, NULL, 0, CALL_TIMEOUT_MS, &r);
  assert_int_equal(r.status, GRPC_STATUS_UNIMPLEMENTED);
  reply_free(&r);
  call_unary(channel, "/grpc.health.v1.Health/Watch", "", 0, NULL, 0, CALL_TIMEOUT_MS, &r);
  assert_int_equal(r.status, GRPC_STATUS_UNIMPLEMENTED);
  reply_free(&r);
}

/* Returns the campaign name of a GetCampaign reply (static copy). */
static const char *campaign_name(const struct reply *r) {
  static char name[CCM_RPC_METADATA_MAX + 1];
  assert_true(r->has_body);
  Callmanager__V1__GetCampaignResponse *resp =
      callmanager__v1__get_campaign_response__unpack(NULL, r->body_len, r->body);
  assert_non_null(resp);
  assert_non_null(resp->campaign);
  snprintf(name, sizeof name, "%s", resp->campaign->name);
  callmanager__v1__get_campaign_response__free_unpacked(resp, NULL);
  return name;
}

static void test_metadata_limits(void **state) {
  (void)state;
  char *big = malloc(CCM_RPC_METADATA_MAX + 2);
  assert_non_null(big);
  memset(big, 'a', CCM_RPC_METADATA_MAX + 1);
  big[CCM_RPC_METADATA_MAX + 1] = '\0';
  grpc_metadata md[1];
  memset(md, 0, sizeof md);
  md[0].key = grpc_slice_from_static_string("x-auth-token");
  md[0].value = grpc_slice_from_static_string(big);
  struct reply r;
  get_campaign_call(channel, 1, md, 1, &r); /* an over-long token reaches the handler as absent */
  assert_int_equal(r.status, GRPC_STATUS_OK);
  assert_string_equal(campaign_name(&r), "none");
  reply_free(&r);
  md[0].key = grpc_slice_from_static_string("idempotency-key");
  get_campaign_call(channel, 1, md, 1, &r);
  assert_int_equal(r.status, GRPC_STATUS_INVALID_ARGUMENT);
  char *field = trailing_value(&r, "ccm-error-field");
  assert_non_null(field);
  assert_string_equal(field, "idempotency-key");
  gpr_free(field);
  reply_free(&r);
  /* exactly the limit is accepted */
  big[CCM_RPC_METADATA_MAX] = '\0';
  md[0].key = grpc_slice_from_static_string("x-auth-token");
  md[0].value = grpc_slice_from_static_string(big);
  get_campaign_call(channel, 2, md, 1, &r);
  assert_int_equal(r.status, GRPC_STATUS_OK);
  assert_string_equal(campaign_name(&r), big);
  reply_free(&r);
  free(big);
}

static void test_deadline(void **state) {
  (void)state;
  Callmanager__V1__ListCampaignsRequest req = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST__INIT;
  req.offset = 300;
  struct reply r;
  call_message(channel, PATH_SLOW, &req.base, NULL, 0, 100, &r);
  assert_int_equal(r.status, GRPC_STATUS_DEADLINE_EXCEEDED);
  reply_free(&r);
  get_campaign_call(channel, 3, NULL, 0, &r);
  assert_int_equal(r.status, GRPC_STATUS_OK);
  reply_free(&r);
}

/* Calls Health/Check for service; returns the status, *serving the reply. */
static grpc_status_code health_call(grpc_channel *ch, const char *service, int *serving) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  struct reply r;
  call_message(ch, PATH_HEALTH, &req.base, NULL, 0, CALL_TIMEOUT_MS, &r);
  *serving = -1;
  if (r.has_body) {
    Grpc__Health__V1__HealthCheckResponse *resp =
        grpc__health__v1__health_check_response__unpack(NULL, r.body_len, r.body);
    assert_non_null(resp);
    *serving = (int)resp->status;
    grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
  }
  grpc_status_code status = r.status;
  reply_free(&r);
  return status;
}

static void test_health(void **state) {
  (void)state;
  int serving;
  assert_int_equal(health_call(channel, "", &serving), GRPC_STATUS_OK);
  assert_int_equal(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  assert_int_equal(health_call(channel, "callmanager.v1.CallManager", &serving), GRPC_STATUS_OK);
  assert_int_equal(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
  assert_int_equal(health_call(channel, "no.such.Service", &serving), GRPC_STATUS_NOT_FOUND);
  assert_int_equal(serving, -1);
}

/* Returns the name (field 1) of serialized FileDescriptorProto bytes. */
static void check_file_name(const ProtobufCBinaryData *file, const char *name) {
  size_t len = strlen(name);
  assert_true(file->len > len + 2);
  assert_int_equal(file->data[0], 0x0a);
  assert_int_equal(file->data[1], len);
  assert_memory_equal(file->data + 2, name, len);
}

/* Asks for a symbol (or a file when by_file) and checks the files sent. */
static void expect_files(struct stream *st, bool by_file, const char *name,
                         const char *const *files, size_t n_files) {
  Grpc__Reflection__V1alpha__ServerReflectionRequest req =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  req.host = "localhost";
  if (by_file) {
    req.message_request_case = REFL_REQ(FILE_BY_FILENAME);
    req.file_by_filename = (char *)name;
  } else {
    req.message_request_case = REFL_REQ(FILE_CONTAINING_SYMBOL);
    req.file_containing_symbol = (char *)name;
  }
  Grpc__Reflection__V1alpha__ServerReflectionResponse *resp = stream_ask(st, &req);
  assert_string_equal(resp->valid_host, "localhost");
  assert_non_null(resp->original_request);
  assert_int_equal(resp->message_response_case, REFL_RESP(FILE_DESCRIPTOR_RESPONSE));
  assert_int_equal(resp->file_descriptor_response->n_file_descriptor_proto, n_files);
  for (size_t i = 0; i < n_files; i++) {
    check_file_name(&resp->file_descriptor_response->file_descriptor_proto[i], files[i]);
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* Sends a request that must get error_response code. */
static void expect_error(struct stream *st, Grpc__Reflection__V1alpha__ServerReflectionRequest *req,
                         int code) {
  Grpc__Reflection__V1alpha__ServerReflectionResponse *resp = stream_ask(st, req);
  assert_int_equal(resp->message_response_case, REFL_RESP(ERROR_RESPONSE));
  assert_int_equal(resp->error_response->error_code, code);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* list_services, lookups and errors on one stream of the given version. */
static void reflection_round(const char *path) {
  struct stream st;
  stream_open(&st, channel, path);
  Grpc__Reflection__V1alpha__ServerReflectionRequest req =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  req.message_request_case = REFL_REQ(LIST_SERVICES);
  req.list_services = "";
  Grpc__Reflection__V1alpha__ServerReflectionResponse *resp = stream_ask(&st, &req);
  assert_int_equal(resp->message_response_case, REFL_RESP(LIST_SERVICES_RESPONSE));
  static const char *const want[] = {"callmanager.v1.CallManager", "grpc.health.v1.Health",
                                     "grpc.reflection.v1.ServerReflection",
                                     "grpc.reflection.v1alpha.ServerReflection"};
  assert_int_equal(resp->list_services_response->n_service, 4);
  for (size_t i = 0; i < 4; i++) {
    assert_string_equal(resp->list_services_response->service[i]->name, want[i]);
  }
  protobuf_c_message_free_unpacked(&resp->base, NULL);

  static const char *const cm[] = {"callmanager/v1/call_manager.proto"};
  static const char *const health[] = {"grpc/health/v1/health.proto"};
  expect_files(&st, false, "callmanager.v1.CallManager", cm, 1);
  expect_files(&st, false, "callmanager.v1.CallManager.GetCall", cm, 1);
  expect_files(&st, false, "callmanager.v1.Campaign", cm, 1);
  expect_files(&st, false, "callmanager.v1.CallStatus", cm, 1);
  expect_files(&st, false, "grpc.health.v1.HealthCheckResponse.ServingStatus", health, 1);
  expect_files(&st, true, "grpc/health/v1/health.proto", health, 1);

  req.message_request_case = REFL_REQ(FILE_CONTAINING_SYMBOL);
  req.file_containing_symbol = "no.such.Symbol";
  expect_error(&st, &req, 5);
  req.message_request_case = REFL_REQ(FILE_BY_FILENAME);
  req.file_by_filename = "nope.proto";
  expect_error(&st, &req, 5);
  req.message_request_case = REFL_REQ(ALL_EXTENSION_NUMBERS_OF_TYPE);
  req.all_extension_numbers_of_type = "callmanager.v1.Campaign";
  expect_error(&st, &req, 12);
  Grpc__Reflection__V1alpha__ExtensionRequest ext =
      GRPC__REFLECTION__V1ALPHA__EXTENSION_REQUEST__INIT;
  ext.containing_type = "callmanager.v1.Campaign";
  ext.extension_number = 100;
  req.message_request_case = REFL_REQ(FILE_CONTAINING_EXTENSION);
  req.file_containing_extension = &ext;
  expect_error(&st, &req, 12);
  assert_int_equal(stream_finish(&st, true), GRPC_STATUS_OK);
}

static void test_reflection(void **state) {
  (void)state;
  reflection_round(PATH_REFL_V1ALPHA);
  reflection_round(PATH_REFL_V1);
}

/* A tiny protobuf writer for the hand-made descriptor set (lengths < 128). */
struct pbw {
  uint8_t buf[256];
  size_t len;
};

static void pbw_bytes(struct pbw *w, unsigned field, const void *data, size_t len) {
  assert_true(len < 128 && w->len + len + 2 <= sizeof w->buf);
  w->buf[w->len++] = (uint8_t)(field << 3 | 2);
  w->buf[w->len++] = (uint8_t)len;
  memcpy(w->buf + w->len, data, len);
  w->len += len;
}

static void pbw_str(struct pbw *w, unsigned field, const char *s) {
  pbw_bytes(w, field, s, strlen(s));
}

static void pbw_msg(struct pbw *w, unsigned field, const struct pbw *m) {
  pbw_bytes(w, field, m->buf, m->len);
}

/* Transitive dependencies, file first, with a hand-made descriptor set:
 * a.proto (package pa; M { N; enum E }) imports b.proto (service S { Do })
 * which imports c.proto (enum Top). */
static void test_reflection_dependencies(void **state) {
  (void)state;
  struct pbw n = {0}, e = {0}, m = {0}, a = {0}, meth = {0}, svc = {0}, b = {0}, top = {0}, c = {0},
             set = {0};
  pbw_str(&n, 1, "N");
  pbw_str(&e, 1, "E");
  pbw_str(&m, 1, "M");
  pbw_msg(&m, 3, &n);
  pbw_msg(&m, 4, &e);
  pbw_str(&a, 1, "a.proto");
  pbw_str(&a, 2, "pa");
  pbw_str(&a, 3, "b.proto");
  pbw_msg(&a, 4, &m);
  pbw_str(&meth, 1, "Do");
  pbw_str(&svc, 1, "S");
  pbw_msg(&svc, 2, &meth);
  pbw_str(&b, 1, "b.proto");
  pbw_str(&b, 3, "c.proto");
  pbw_msg(&b, 6, &svc);
  pbw_str(&top, 1, "Top");
  pbw_str(&c, 1, "c.proto");
  pbw_msg(&c, 5, &top);
  pbw_msg(&set, 1, &c);
  pbw_msg(&set, 1, &b);
  pbw_msg(&set, 1, &a);

  struct ccm_rpc_server_options o = fake_options(NULL);
  o.workers = 1;
  o.descriptor_set = set.buf;
  o.descriptor_set_len = set.len;
  char address[64];
  struct ccm_rpc_server *srv = start_server(&o, address, sizeof address);
  assert_non_null(srv);
  memset(set.buf, 0, sizeof set.buf); /* the server keeps its own copy */
  grpc_channel *ch = open_channel(address);
  struct stream st;
  stream_open(&st, ch, PATH_REFL_V1);
  static const char *const abc[] = {"a.proto", "b.proto", "c.proto"};
  expect_files(&st, false, "pa.M.N", abc, 3);
  expect_files(&st, false, ".pa.M.E", abc, 3);
  expect_files(&st, false, "pa.M", abc, 3);
  expect_files(&st, false, "S.Do", abc + 1, 2);
  expect_files(&st, true, "b.proto", abc + 1, 2);
  expect_files(&st, false, "Top", abc + 2, 1);
  Grpc__Reflection__V1alpha__ServerReflectionRequest req =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  req.message_request_case = REFL_REQ(FILE_CONTAINING_SYMBOL);
  req.file_containing_symbol = "pa";
  expect_error(&st, &req, 5);
  assert_int_equal(stream_finish(&st, true), GRPC_STATUS_OK);
  grpc_channel_destroy(ch);
  ccm_rpc_server_shutdown(srv, 1000);
  ccm_rpc_server_destroy(srv);
}

struct concurrent_arg {
  int64_t id;
  grpc_status_code status;
  int64_t echoed;
};

static void *concurrent_main(void *p) {
  struct concurrent_arg *arg = p;
  Callmanager__V1__GetCampaignRequest req = CALLMANAGER__V1__GET_CAMPAIGN_REQUEST__INIT;
  req.id = arg->id;
  uint8_t buf[32];
  size_t n = callmanager__v1__get_campaign_request__pack(&req, buf);
  struct reply r;
  call_unary(channel, PATH_GET_CAMPAIGN, buf, n, NULL, 0, CALL_TIMEOUT_MS, &r);
  arg->status = r.status;
  arg->echoed = -1;
  if (r.has_body) {
    Callmanager__V1__GetCampaignResponse *resp =
        callmanager__v1__get_campaign_response__unpack(NULL, r.body_len, r.body);
    if (resp != NULL && resp->campaign != NULL) arg->echoed = resp->campaign->id;
    if (resp != NULL) callmanager__v1__get_campaign_response__free_unpacked(resp, NULL);
  }
  reply_free(&r);
  return NULL;
}

static void test_concurrent_calls(void **state) {
  (void)state;
  pthread_t threads[CONCURRENT_CALLS];
  struct concurrent_arg args[CONCURRENT_CALLS];
  for (int i = 0; i < CONCURRENT_CALLS; i++) {
    args[i].id = 1000 + i;
    assert_int_equal(pthread_create(&threads[i], NULL, concurrent_main, &args[i]), 0);
  }
  for (int i = 0; i < CONCURRENT_CALLS; i++) pthread_join(threads[i], NULL);
  for (int i = 0; i < CONCURRENT_CALLS; i++) {
    assert_int_equal(args[i].status, GRPC_STATUS_OK);
    assert_int_equal(args[i].echoed, 1000 + i);
  }
  assert_int_equal(atomic_load(&worker_mismatch), 0);
}

struct slow_arg {
  grpc_channel *ch;
  int sleep_ms;
  grpc_status_code status;
};

static void *slow_main(void *p) {
  struct slow_arg *arg = p;
  Callmanager__V1__ListCampaignsRequest req = CALLMANAGER__V1__LIST_CAMPAIGNS_REQUEST__INIT;
  req.offset = arg->sleep_ms;
  uint8_t buf[32];
  size_t n = callmanager__v1__list_campaigns_request__pack(&req, buf);
  struct reply r;
  call_unary(arg->ch, PATH_SLOW, buf, n, NULL, 0, CALL_TIMEOUT_MS, &r);
  arg->status = r.status;
  reply_free(&r);
  return NULL;
}

static double since_ms(const struct timespec *t0) {
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Shutdown waits for a 300 ms call in progress, which still gets OK; the
 * workers' state is released. */
static void test_graceful_shutdown(void **state) {
  (void)state;
  int frees_before = atomic_load(&worker_frees);
  struct ccm_rpc_server_options o = fake_options(NULL);
  char address[64];
  struct ccm_rpc_server *srv = start_server(&o, address, sizeof address);
  assert_non_null(srv);
  grpc_channel *ch = open_channel(address);
  int entered = atomic_load(&slow_entered);
  struct slow_arg arg = {ch, 300, GRPC_STATUS_UNKNOWN};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, slow_main, &arg), 0);
  for (int i = 0; i < 500 && atomic_load(&slow_entered) == entered; i++) usleep(2000);
  assert_int_not_equal(atomic_load(&slow_entered), entered);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ccm_rpc_server_shutdown(srv, 3000);
  double took = since_ms(&t0);
  pthread_join(t, NULL);
  assert_int_equal(arg.status, GRPC_STATUS_OK);
  assert_true(took >= 200.0);
  assert_true(took < 2500.0);
  assert_int_equal(atomic_load(&worker_frees) - frees_before, WORKERS);
  /* no longer accepting */
  struct reply r;
  call_unary(ch, PATH_GET_CAMPAIGN, "", 0, NULL, 0, 500, &r);
  assert_int_not_equal(r.status, GRPC_STATUS_OK);
  reply_free(&r);
  grpc_channel_destroy(ch);
  ccm_rpc_server_destroy(srv);
}

/* An open reflection stream does not hold shutdown beyond the grace period:
 * the call is cancelled and the client sees a non-OK status. */
static void test_shutdown_cancels_open_stream(void **state) {
  (void)state;
  struct ccm_rpc_server_options o = fake_options(NULL);
  o.workers = 2;
  char address[64];
  struct ccm_rpc_server *srv = start_server(&o, address, sizeof address);
  assert_non_null(srv);
  grpc_channel *ch = open_channel(address);
  struct stream st;
  stream_open(&st, ch, PATH_REFL_V1ALPHA);
  Grpc__Reflection__V1alpha__ServerReflectionRequest req =
      GRPC__REFLECTION__V1ALPHA__SERVER_REFLECTION_REQUEST__INIT;
  req.message_request_case = REFL_REQ(LIST_SERVICES);
  req.list_services = "";
  Grpc__Reflection__V1alpha__ServerReflectionResponse *resp = stream_ask(&st, &req);
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ccm_rpc_server_shutdown(srv, 200);
  double took = since_ms(&t0);
  assert_true(took >= 150.0);
  assert_true(took < 2000.0);
  assert_int_not_equal(stream_finish(&st, false), GRPC_STATUS_OK);
  grpc_channel_destroy(ch);
  ccm_rpc_server_destroy(srv);
}

/* Returns api.log's contents (malloc'd). */
static char *read_api_log(void) {
  char path[128];
  snprintf(path, sizeof path, "%s/api.log", log_dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return NULL;
  size_t cap = 1 << 20;
  char *buf = malloc(cap + 1);
  size_t n = buf != NULL ? fread(buf, 1, cap, f) : 0;
  fclose(f);
  if (buf != NULL) buf[n] = '\0';
  return buf;
}

/* One api.log line per RPC: method, status name, latency. The line is
 * written after the answer is sent, so poll a little. */
static void test_api_log(void **state) {
  (void)state;
  static const char *const want[] = {
      "Incoming RPC: " PATH_GET_CAMPAIGN " status=OK latency_ms=",
      "Incoming RPC: " PATH_GET_CALL " status=NOT_FOUND latency_ms=",
      "Incoming RPC: " PATH_GET_CAMPAIGN " status=INVALID_ARGUMENT latency_ms=",
      "Incoming RPC: /callmanager.v1.CallManager/Nope status=UNIMPLEMENTED latency_ms=",
      "Incoming RPC: " PATH_SLOW " status=DEADLINE_EXCEEDED latency_ms=",
      "Incoming RPC: " PATH_HEALTH " status=OK latency_ms=",
      "Incoming RPC: " PATH_HEALTH " status=NOT_FOUND latency_ms=",
      "Incoming RPC: " PATH_REFL_V1 " status=OK latency_ms=",
      "Incoming RPC: " PATH_REFL_V1ALPHA " status=OK latency_ms=",
  };
  char *log = NULL;
  size_t missing = 0;
  for (int attempt = 0; attempt < 100; attempt++) {
    free(log);
    log = read_api_log();
    assert_non_null(log);
    missing = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
      if (strstr(log, want[i]) == NULL) missing = i + 1;
    }
    if (missing == 0) break;
    usleep(20000);
  }
  if (missing != 0) fprintf(stderr, "missing in api.log: %s\n", want[missing - 1]);
  assert_int_equal(missing, 0);
  free(log);
}

/* --serve [ADDR] [SECONDS]: runs the fake server for manual checks. */
static int serve(int argc, char **argv) {
  const char *address = argc > 2 ? argv[2] : "127.0.0.1:50051";
  int seconds = argc > 3 ? atoi(argv[3]) : 30;
  struct ccm_rpc_server_options o = fake_options(address);
  struct ccm_rpc_server *srv = NULL;
  if (ccm_rpc_server_create(&o, &srv) != CCM_OK || ccm_rpc_server_start(srv) != CCM_OK) {
    fprintf(stderr, "cannot serve on %s\n", address);
    ccm_rpc_server_destroy(srv);
    return 1;
  }
  fprintf(stderr, "serving on %s for %d s\n", address, seconds);
  sleep((unsigned)seconds);
  ccm_rpc_server_shutdown(srv, 1000);
  ccm_rpc_server_destroy(srv);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--serve") == 0) return serve(argc, argv);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_options_rejected),
      cmocka_unit_test(test_ok_response),
      cmocka_unit_test(test_error_metadata),
      cmocka_unit_test(test_garbage_request),
      cmocka_unit_test(test_unknown_method),
      cmocka_unit_test(test_metadata_limits),
      cmocka_unit_test(test_deadline),
      cmocka_unit_test(test_health),
      cmocka_unit_test(test_reflection),
      cmocka_unit_test(test_reflection_dependencies),
      cmocka_unit_test(test_concurrent_calls),
      cmocka_unit_test(test_graceful_shutdown),
      cmocka_unit_test(test_shutdown_cancels_open_stream),
      cmocka_unit_test(test_api_log),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
