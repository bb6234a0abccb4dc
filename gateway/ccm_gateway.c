/* `ccm gateway`: libmicrohttpd (epoll, internal thread pool, suspend/resume)
 * in front of the CallManager gRPC service.
 *
 * A request goes through: route (404), method (405), body size (413: from
 * Content-Length before the body is read; a chunked body past the limit is
 * discarded up to 16 MiB and answered at its end, beyond that the connection
 * is closed), token (401), callback signature (401), body (400), the RPC. For the
 * RPC the connection is suspended, the call started on the shared channel,
 * and the client's completion thread copies the reply into the request and
 * resumes the connection; MHD then re-enters the handler, which answers.
 * Stopping: a flag (under the same mutex as the count of suspended
 * connections) turns new requests into 503 + Connection: close; calls still
 * in flight get a grace period, then are cancelled; only when every
 * suspended connection has been resumed is the daemon stopped (MHD aborts
 * when stopped with suspended connections). */
#include "ccm_gateway.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>

#include "ccm_arena.h"
#include "ccm_buf.h"
#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_config.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_routes.h"
#include "ccm_rpc_client.h"
#include "ccm_sign.h"
#include "ccm_signals.h"
#include "ccm_time.h"
#include "grpc/health/v1/health.pb-c.h"

#define LOGGER "ccm.gateway"
#define REQUEST_ARENA_MAX (256u * 1024u * 1024u) /* per request: body, messages */
#define HEADER_BLOCK_MAX (16u * 1024u)           /* SPEC 4: header block limit */
/* MHD keeps the request line and headers in the connection's memory pool,
 * with its own bookkeeping and the response headers: 32 KiB lets every
 * block up to 16 KiB through, the handler refuses larger ones up to about
 * 32 KiB with a JSON 431, and MHD refuses still larger ones with its own
 * 431. In a band of about 250 bytes just below MHD's limit the block fits
 * but the answer does not, and MHD closes the connection without one. */
#define CONNECTION_MEMORY (HEADER_BLOCK_MAX + 16u * 1024u)
#define POOL_THREADS_MIN 2
#define POOL_THREADS_MAX 4
#define STOP_GRACE_MS 5000 /* in-flight calls may finish during a stop */
#define STOP_FLUSH_MS 150  /* resumed connections send their answers */
#define SIGNATURE_WINDOW_S 300
#define LOG_PATH_MAX 256
#define YAML_DEPTH_MAX 64
#define HEADER_VALUE_MAX 1024                  /* metadata values forwarded to gRPC */
#define DISCARD_MAX (16u * CCM_ROUTE_BODY_MAX) /* chunked bodies read before a 413 */

#define CORS_ORIGIN "*"
#define CORS_METHODS "GET, POST, PUT, OPTIONS"
#define CORS_HEADERS "Content-Type, X-Auth-Token, Idempotency-Key"

#define MSG_NO_TOKEN "Authentication credentials were not provided or are invalid."
#define MSG_BAD_TOKEN "Invalid authentication token."
#define MSG_BAD_SIGNATURE "Invalid callback signature."

#ifdef CCM_EMBEDDED_OPENAPI
extern const unsigned char ccm_openapi_yaml[];
extern const size_t ccm_openapi_yaml_len;
#endif

struct gateway {
  const struct ccm_config *cfg;
  struct ccm_rpc_client *rpc;
  struct MHD_Daemon *daemon;
  char *openapi; /* the OpenAPI document as JSON text; NULL when unavailable */
  size_t openapi_len;
  pthread_mutex_t mu;
  pthread_cond_t cond; /* broadcast when suspended drops */
  bool stopping;
  size_t suspended;            /* connections waiting for an RPC */
  int max_connections;         /* GATEWAY_MAX_CONNECTIONS, capped by the fd limit */
  atomic_int connections;      /* open client connections */
  atomic_llong refused_log_ms; /* last "connection refused" log line */
};

/* One HTTP request, from the URI log callback to the completion notice. */
struct gw_request {
  struct gateway *gw;
  struct MHD_Connection *conn;
  struct ccm_arena arena;
  struct ccm_buf body;
  double started_ms;
  char *uri;          /* raw request target (malloc) */
  const char *method; /* MHD's copy, valid for the request */
  struct ccm_route_match match;
  int match_rc;
  bool headers_seen;
  bool options; /* a CORS preflight */
  bool waiting; /* suspended for an RPC */
  bool replied;
  size_t received;
  /* An error decided before the body arrived, answered once it has. */
  int pending;             /* ccm status; CCM_OK: none */
  const char *pending_msg; /* static */
  /* The RPC's outcome, copied by the completion thread. */
  bool rpc_done;
  int grpc_status;
  char *rpc_message;
  char *rpc_reason;
  char *rpc_field;
  int retry_after;
  unsigned char *rpc_data;
  size_t rpc_len;
  int http_status; /* what was answered, for api.log */
};

struct header {
  const char *name;
  const char *value;
};

/* ------------------------------------------------------------- helpers --- */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static const char *header_of(struct MHD_Connection *conn, const char *name) {
  return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

/* True when every byte is printable ASCII (legal in a gRPC metadata value). */
static bool printable_ascii(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p < 0x20 || *p > 0x7e) return false;
  }
  return true;
}

/* ------------------------------------------------------------- answers --- */

/* Queues body (malloc'd, taken) with status and the common headers. */
static enum MHD_Result queue(struct gw_request *rq, int status, char *body, size_t len,
                             const struct header *extra) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      len, body != NULL ? body : (void *)"",
      body != NULL ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (resp == NULL) {
    free(body);
    return MHD_NO;
  }
  if (len > 0) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, CORS_ORIGIN);
  MHD_add_response_header(resp, "Access-Control-Allow-Methods", CORS_METHODS);
  MHD_add_response_header(resp, "Access-Control-Allow-Headers", CORS_HEADERS);
  for (const struct header *h = extra; h != NULL && h->name != NULL; h++) {
    MHD_add_response_header(resp, h->name, h->value);
  }
  enum MHD_Result ok = MHD_queue_response(rq->conn, (unsigned)status, resp);
  MHD_destroy_response(resp);
  if (ok == MHD_YES) {
    rq->replied = true;
    rq->http_status = status;
  }
  return ok;
}

/* Queues a JSON value (reference taken). */
static enum MHD_Result respond_json(struct gw_request *rq, int status, json_t *json,
                                    const struct header *extra) {
  char *text = json != NULL ? json_dumps(json, JSON_COMPACT) : NULL;
  json_decref(json);
  if (text == NULL) {
    static const char fallback[] =
        "{\"error\":{\"code\":\"internal_server_error\",\"message\":\"Internal server error.\","
        "\"details\":{}}}";
    text = strdup(fallback);
    status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    if (text == NULL) return MHD_NO;
  }
  return queue(rq, status, text, strlen(text), extra);
}

/* Queues the error shape of SPEC 4.1 for a ccm status. message NULL means
 * the status's default; reason/field go to details when not NULL. */
static enum MHD_Result respond_error(struct gw_request *rq, int status, const char *message,
                                     const char *field, const char *reason,
                                     const struct header *extra) {
  json_t *details = json_object();
  if (details != NULL && reason != NULL && reason[0] != '\0') {
    json_object_set_new(details, "reason", json_string(reason));
  }
  if (details != NULL && field != NULL && field[0] != '\0') {
    json_object_set_new(details, "field", json_string(field));
  }
  const char *text = message != NULL && message[0] != '\0' ? message : ccm_error_message(status);
  json_t *body = json_pack("{s:{s:s,s:s,s:o*}}", "error", "code", ccm_error_rest_code(status),
                           "message", text, "details", details);
  return respond_json(rq, ccm_error_http_status(status), body, extra);
}

static enum MHD_Result respond_unavailable(struct gw_request *rq, bool close) {
  const struct header headers[] = {{MHD_HTTP_HEADER_RETRY_AFTER, "1"},
                                   {close ? MHD_HTTP_HEADER_CONNECTION : NULL, "close"},
                                   {NULL, NULL}};
  return respond_error(rq, CCM_EUNAVAILABLE, NULL, NULL, NULL, headers);
}

static enum MHD_Result respond_pending(struct gw_request *rq) {
  const struct header allow[] = {{MHD_HTTP_HEADER_ALLOW, rq->match.allow}, {NULL, NULL}};
  bool with_allow = rq->pending == CCM_EMETHOD && rq->match.allow != NULL;
  return respond_error(rq, rq->pending, rq->pending_msg, NULL, NULL, with_allow ? allow : NULL);
}

/* ---------------------------------------------------------- RPC replies --- */

/* Copies a borrowed string into the request's arena ("" stays ""). */
static char *keep(struct gw_request *rq, const char *s) {
  return s == NULL ? NULL : ccm_arena_strdup(&rq->arena, s);
}

/* Runs on the RPC client's completion thread while the connection is
 * suspended (so nothing else touches rq), then resumes it. */
static void on_rpc_done(void *user, const struct ccm_rpc_reply *reply) {
  struct gw_request *rq = user;
  struct gateway *gw = rq->gw;
  rq->grpc_status = reply->grpc_status;
  rq->rpc_message = keep(rq, reply->message);
  rq->rpc_reason = keep(rq, reply->error_reason);
  rq->rpc_field = keep(rq, reply->error_field);
  rq->retry_after = reply->retry_after_seconds;
  if (reply->data != NULL && reply->len > 0) {
    rq->rpc_data = ccm_arena_alloc(&rq->arena, reply->len);
    if (rq->rpc_data != NULL) {
      memcpy(rq->rpc_data, reply->data, reply->len);
      rq->rpc_len = reply->len;
    } else {
      rq->grpc_status = CCM_GRPC_INTERNAL;
    }
  }
  pthread_mutex_lock(&gw->mu);
  rq->rpc_done = true;
  rq->waiting = false;
  gw->suspended--;
  MHD_resume_connection(rq->conn);
  pthread_cond_broadcast(&gw->cond);
  pthread_mutex_unlock(&gw->mu);
}

static enum MHD_Result respond_health(struct gw_request *rq) {
  bool healthy = false;
  if (rq->grpc_status == CCM_GRPC_OK) {
    ProtobufCAllocator alloc;
    ccm_arena_protobuf_allocator(&rq->arena, &alloc);
    Grpc__Health__V1__HealthCheckResponse *resp =
        grpc__health__v1__health_check_response__unpack(&alloc, rq->rpc_len, rq->rpc_data);
    healthy = resp != NULL &&
              resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  }
  json_t *body = json_pack("{s:s}", "status", healthy ? "healthy" : "unhealthy");
  return respond_json(rq, healthy ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body, NULL);
}

static enum MHD_Result respond_rpc_error(struct gw_request *rq) {
  int code = rq->grpc_status;
  int status = code == CCM_GRPC_CANCELLED ? CCM_EUNAVAILABLE : ccm_error_from_grpc(code);
  const char *message = rq->rpc_message;
  if (status == CCM_EINTERNAL || status == CCM_EUNAVAILABLE || status == CCM_ETIMEOUT) {
    message = NULL; /* the standard text: never internals, never transport details */
  }
  if (status == CCM_EINTERNAL) {
    ccm_error(LOGGER, "%s %s: gRPC status %d: %s", rq->method, rq->match.path, code,
              rq->rpc_message != NULL ? rq->rpc_message : "");
  }
  char retry[16];
  struct header headers[2] = {{NULL, NULL}, {NULL, NULL}};
  if (rq->retry_after > 0) {
    snprintf(retry, sizeof retry, "%d", rq->retry_after);
    headers[0] = (struct header){MHD_HTTP_HEADER_RETRY_AFTER, retry};
  } else if (status == CCM_EUNAVAILABLE) {
    headers[0] = (struct header){MHD_HTTP_HEADER_RETRY_AFTER, "1"};
  }
  return respond_error(rq, status, message, rq->rpc_field, rq->rpc_reason, headers);
}

static enum MHD_Result respond_rpc(struct gw_request *rq) {
  const struct ccm_route *route = rq->match.route;
  if (route->kind == CCM_ROUTE_HEALTH) return respond_health(rq);
  if (rq->grpc_status != CCM_GRPC_OK) return respond_rpc_error(rq);
  ProtobufCAllocator alloc;
  ccm_arena_protobuf_allocator(&rq->arena, &alloc);
  ProtobufCMessage *resp =
      protobuf_c_message_unpack(route->response, &alloc, rq->rpc_len,
                                rq->rpc_data != NULL ? rq->rpc_data : (const uint8_t *)"");
  if (resp == NULL) {
    ccm_error(LOGGER, "%s %s: undecodable %s", rq->method, rq->match.path, route->rpc);
    return respond_error(rq, CCM_EINTERNAL, NULL, NULL, NULL, NULL);
  }
  json_t *json = ccm_routes_response_json(route, resp);
  if (json == NULL) return respond_error(rq, CCM_ENOMEM, NULL, NULL, NULL, NULL);
  return respond_json(rq, route->success_status, json, NULL);
}

/* ----------------------------------------------------- request checks --- */

/* Returns CCM_OK when the token is acceptable, else sets the 401 message. */
static int check_token(struct gw_request *rq, const char **message) {
  if (!rq->gw->cfg->auth_enabled) return CCM_OK;
  const char *token = header_of(rq->conn, "X-Auth-Token");
  if (token == NULL || token[0] == '\0') {
    *message = MSG_NO_TOKEN;
    return CCM_EUNAUTH;
  }
  if (!ccm_config_token_valid(rq->gw->cfg, token)) {
    *message = MSG_BAD_TOKEN;
    return CCM_EUNAUTH;
  }
  return CCM_OK;
}

/* Checks X-Timestamp / X-Signature against HMAC-SHA256(secret, ts "." body). */
static bool signature_ok(struct gw_request *rq) {
  return ccm_sign_verify(rq->gw->cfg->callback_signing_secret, header_of(rq->conn, "X-Timestamp"),
                         header_of(rq->conn, "X-Signature"), rq->body.data, rq->body.len,
                         (int64_t)time(NULL));
}

/* Adds one metadata entry when value is present; false when it cannot be
 * forwarded (not printable ASCII or too long). */
static bool add_metadata(struct ccm_rpc_metadata *md, size_t *n, const char *key,
                         const char *value) {
  if (value == NULL) return true;
  if (strlen(value) > HEADER_VALUE_MAX || !printable_ascii(value)) return false;
  md[*n].key = key;
  md[*n].value = value;
  (*n)++;
  return true;
}

/* ------------------------------------------------------- request phases --- */

static enum MHD_Result start_rpc(struct gw_request *rq) {
  struct gateway *gw = rq->gw;
  const struct ccm_route *route = rq->match.route;
  if (route->signed_body && gw->cfg->callback_signing_secret != NULL && !signature_ok(rq)) {
    return respond_error(rq, CCM_EUNAUTH, MSG_BAD_SIGNATURE, NULL, NULL, NULL);
  }
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  int rc =
      ccm_routes_build_request(&rq->match, rq->body.data, rq->body.len, &rq->arena, &msg, &err);
  if (rc != CCM_OK) return respond_error(rq, err.status, err.message, err.field, NULL, NULL);
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *packed = ccm_arena_alloc(&rq->arena, len + 1);
  if (packed == NULL) return respond_error(rq, CCM_ENOMEM, NULL, NULL, NULL, NULL);
  protobuf_c_message_pack(msg, packed);

  struct ccm_rpc_metadata md[CCM_RPC_CLIENT_MAX_METADATA];
  size_t n = 0;
  if (route->kind == CCM_ROUTE_RPC) {
    const char *token = header_of(rq->conn, "X-Auth-Token");
    if (token != NULL && token[0] != '\0' && !add_metadata(md, &n, "x-auth-token", token)) {
      return respond_error(rq, CCM_EUNAUTH, MSG_BAD_TOKEN, NULL, NULL, NULL);
    }
    const char *key = header_of(rq->conn, "Idempotency-Key");
    if (!add_metadata(md, &n, "idempotency-key", key)) {
      bool too_long = strlen(key) > HEADER_VALUE_MAX;
      return respond_error(rq, CCM_EINVAL,
                           too_long
                               ? "Idempotency-Key must be 1 to 255 characters."
                               : "Idempotency-Key must contain printable ASCII characters only.",
                           "Idempotency-Key", NULL, NULL);
    }
  }
  if (route->signed_body && gw->cfg->callback_signing_secret != NULL) {
    /* The server checks the signature again, over the raw body it receives
     * as binary metadata, and applies only what the body says. */
    if (rq->body.len > CCM_SIGN_BODY_MAX) {
      return respond_error(rq, CCM_ETOOLARGE, "Signed callback body too large.", NULL, NULL, NULL);
    }
    char *hex = ccm_arena_alloc(&rq->arena, 65);
    if (hex == NULL) return respond_error(rq, CCM_ENOMEM, NULL, NULL, NULL, NULL);
    ccm_sign_sha256_hex(rq->body.data, rq->body.len, hex);
    bool ok = add_metadata(md, &n, "x-signature", header_of(rq->conn, "X-Signature")) &&
              add_metadata(md, &n, "x-timestamp", header_of(rq->conn, "X-Timestamp")) &&
              add_metadata(md, &n, "x-body-sha256", hex);
    if (!ok) return respond_error(rq, CCM_EUNAUTH, MSG_BAD_SIGNATURE, NULL, NULL, NULL);
    md[n].key = "x-callback-body-bin";
    md[n].value = rq->body.data != NULL ? rq->body.data : "";
    n++;
  }

  pthread_mutex_lock(&gw->mu);
  if (gw->stopping) {
    pthread_mutex_unlock(&gw->mu);
    return respond_unavailable(rq, true);
  }
  gw->suspended++;
  rq->waiting = true;
  MHD_suspend_connection(rq->conn);
  pthread_mutex_unlock(&gw->mu);

  rc = ccm_rpc_client_start(gw->rpc, route->rpc, packed, len, md, n,
                            gw->cfg->gateway_rpc_timeout_ms, on_rpc_done, rq);
  if (rc != CCM_OK) {
    ccm_error(LOGGER, "%s %s: cannot start %s: %s", rq->method, rq->match.path, route->rpc,
              ccm_error_name(rc));
    pthread_mutex_lock(&gw->mu);
    rq->grpc_status = rc == CCM_EUNAVAILABLE ? CCM_GRPC_UNAVAILABLE : CCM_GRPC_INTERNAL;
    rq->rpc_done = true;
    rq->waiting = false;
    gw->suspended--;
    MHD_resume_connection(rq->conn);
    pthread_cond_broadcast(&gw->cond);
    pthread_mutex_unlock(&gw->mu);
  }
  return MHD_YES;
}

static enum MHD_Result add_header_size(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
  (void)kind;
  size_t *total = cls;
  *total += strlen(key) + 4 + (value != NULL ? strlen(value) : 0); /* "k: v\r\n" */
  return MHD_YES;
}

/* Answers 431 when the header block is larger than SPEC 4's 16 KiB (MHD
 * itself refuses blocks that do not fit its connection memory at all). */
static bool header_block_too_large(struct gw_request *rq) {
  size_t total = 0;
  MHD_get_connection_values(rq->conn, MHD_HEADER_KIND, add_header_size, &total);
  return total > HEADER_BLOCK_MAX;
}

static enum MHD_Result respond_headers_too_large(struct gw_request *rq) {
  json_t *body = json_pack("{s:{s:s,s:s,s:{}}}", "error", "code", "request_header_fields_too_large",
                           "message", "Request header fields too large (limit 16 KiB).", "details");
  const struct header close[] = {{MHD_HTTP_HEADER_CONNECTION, "close"}, {NULL, NULL}};
  return respond_json(rq, MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, body, close);
}

/* First call: headers only. Decides 404/405/413/401 in SPEC order; 413 (and
 * any error when the declared body is too large) is answered at once,
 * without reading the body. */
static enum MHD_Result on_headers(struct gw_request *rq) {
  if (header_block_too_large(rq)) return respond_headers_too_large(rq);
  rq->options = strcmp(rq->method, MHD_HTTP_METHOD_OPTIONS) == 0;
  rq->match_rc = ccm_routes_match(rq->method, rq->uri, &rq->arena, &rq->match);
  if (rq->options && rq->match_rc == CCM_EMETHOD) return MHD_YES; /* preflight: no checks */
  if (rq->match_rc == CCM_ENOTFOUND) {
    rq->pending = CCM_ENOTFOUND;
  } else if (rq->match_rc == CCM_EMETHOD) {
    rq->pending = CCM_EMETHOD;
  } else if (rq->match_rc != CCM_OK) {
    rq->pending = CCM_EINTERNAL;
  }
  const char *length = header_of(rq->conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
  bool too_large = length != NULL && strtoull(length, NULL, 10) > CCM_ROUTE_BODY_MAX;
  if (too_large && rq->pending == CCM_OK) rq->pending = CCM_ETOOLARGE;
  if (rq->pending == CCM_OK && rq->match.route->auth) {
    rq->pending = check_token(rq, &rq->pending_msg);
  }
  if (too_large) return respond_pending(rq);
  return MHD_YES;
}

static enum MHD_Result on_body(struct gw_request *rq, const char *data, size_t size) {
  if (rq->replied) return MHD_YES;
  rq->received += size;
  if (rq->received > CCM_ROUTE_BODY_MAX) {
    /* MHD 0.9.75 cannot answer in the middle of a body: a chunked body over
     * the limit is discarded up to a hard cap and answered 413 at its end;
     * a longer one has its connection closed. */
    if (rq->pending == CCM_OK) rq->pending = CCM_ETOOLARGE;
    ccm_buf_free(&rq->body);
    return rq->received > DISCARD_MAX ? MHD_NO : MHD_YES;
  }
  if (rq->pending != CCM_OK || rq->match.route == NULL || !rq->match.route->body) return MHD_YES;
  int rc = ccm_buf_append(&rq->body, data, size);
  if (rc != CCM_OK && rq->pending == CCM_OK) rq->pending = rc;
  return MHD_YES;
}

static enum MHD_Result on_complete(struct gw_request *rq) {
  if (rq->replied || rq->waiting) return MHD_YES;
  if (rq->options && rq->pending == CCM_OK) {
    const struct header headers[] = {{MHD_HTTP_HEADER_ALLOW, rq->match.allow},
                                     {"Access-Control-Max-Age", "86400"},
                                     {NULL, NULL}};
    return queue(rq, MHD_HTTP_NO_CONTENT, NULL, 0, headers);
  }
  if (rq->pending != CCM_OK) return respond_pending(rq);
  if (rq->rpc_done) return respond_rpc(rq);
  const struct ccm_route *route = rq->match.route;
  if (route->kind == CCM_ROUTE_OPENAPI) {
    if (rq->gw->openapi == NULL) {
      return respond_error(rq, CCM_ENOTFOUND, "The OpenAPI document is not available.", NULL, NULL,
                           NULL);
    }
    char *copy = malloc(rq->gw->openapi_len);
    if (copy == NULL) return respond_error(rq, CCM_ENOMEM, NULL, NULL, NULL, NULL);
    memcpy(copy, rq->gw->openapi, rq->gw->openapi_len);
    return queue(rq, MHD_HTTP_OK, copy, rq->gw->openapi_len, NULL);
  }
  return start_rpc(rq);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls) {
  (void)cls;
  (void)url;
  (void)version;
  struct gw_request *rq = *req_cls;
  if (rq == NULL) return MHD_NO; /* the URI callback could not allocate */
  if (!rq->headers_seen) {
    rq->headers_seen = true;
    rq->conn = conn;
    rq->method = method;
    return on_headers(rq);
  }
  if (*upload_data_size > 0) {
    size_t size = *upload_data_size;
    *upload_data_size = 0;
    return on_body(rq, upload_data, size);
  }
  return on_complete(rq);
}

/* Returns the request object for a new request (MHD's URI log callback). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  (void)conn;
  struct gw_request *rq = calloc(1, sizeof *rq);
  if (rq == NULL) return NULL;
  rq->uri = strdup(uri != NULL ? uri : "/");
  if (rq->uri == NULL) {
    free(rq);
    return NULL;
  }
  rq->gw = cls;
  rq->started_ms = now_ms();
  ccm_arena_init(&rq->arena, REQUEST_ARENA_MAX);
  ccm_buf_init(&rq->body, CCM_ROUTE_BODY_MAX);
  return rq;
}

/* Writes path into out with control and non-ASCII bytes %-escaped. */
static void printable_path(const char *path, char *out, size_t cap) {
  static const char digits[] = "0123456789ABCDEF";
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)path; *p != '\0' && n + 4 < cap; p++) {
    if (*p < 0x21 || *p > 0x7e) {
      out[n++] = '%';
      out[n++] = digits[*p >> 4];
      out[n++] = digits[*p & 15];
    } else {
      out[n++] = (char)*p;
    }
  }
  out[n] = '\0';
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  struct gw_request *rq = *req_cls;
  if (rq == NULL) return;
  *req_cls = NULL;
  char path[LOG_PATH_MAX];
  const char *raw = rq->match.path;
  if (raw == NULL) {
    size_t n = strcspn(rq->uri, "?#");
    rq->uri[n] = '\0';
    raw = rq->uri;
  }
  printable_path(raw, path, sizeof path);
  double latency = now_ms() - rq->started_ms;
  const char *method = rq->method != NULL ? rq->method : "-";
  if (rq->http_status != 0) {
    ccm_log_write(CCM_LOG_API, rq->http_status >= 500 ? CCM_LOG_WARNING : CCM_LOG_INFO, LOGGER,
                  "Incoming Request: %s %s status=%d latency_ms=%.1f", method, path,
                  rq->http_status, latency);
  } else if (rq->method != NULL) {
    ccm_log_write(CCM_LOG_API, CCM_LOG_INFO, LOGGER,
                  "Incoming Request: %s %s status=0 latency_ms=%.1f (closed: %d)", method, path,
                  latency, (int)toe);
  } else {
    /* The client went away before its request was complete: not a request
     * ccm received, so not an api.log line. */
    ccm_debug(LOGGER, "connection closed before the request to %s was complete (%d)", path,
              (int)toe);
  }
  ccm_arena_free(&rq->arena);
  ccm_buf_free(&rq->body);
  free(rq->uri);
  free(rq);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  ccm_warn(LOGGER, "http: %s", line);
}

/* ------------------------------------------------------------ OpenAPI --- */

static bool plain_is(const char *s, const char *const *words) {
  for (; *words != NULL; words++) {
    if (strcmp(s, *words) == 0) return true;
  }
  return false;
}

/* Resolves a plain scalar by the YAML 1.2 core schema. */
static json_t *plain_scalar(const char *s) {
  static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
  static const char *const trues[] = {"true", "True", "TRUE", NULL};
  static const char *const falses[] = {"false", "False", "FALSE", NULL};
  if (plain_is(s, nulls)) return json_null();
  if (plain_is(s, trues)) return json_true();
  if (plain_is(s, falses)) return json_false();
  const char *digits = s + (s[0] == '-' || s[0] == '+');
  if (digits[0] != '\0' && strspn(digits, "0123456789") == strlen(digits)) {
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == 0) return json_integer(v);
  }
  char *end = NULL;
  if (strpbrk(s, ".eE") != NULL && strspn(digits, "0123456789.eE+-") == strlen(digits)) {
    double d = strtod(s, &end);
    if (end != NULL && *end == '\0') return json_real(d);
  }
  return json_string(s);
}

static json_t *yaml_node_json(yaml_document_t *doc, yaml_node_t *node, int depth) {
  if (node == NULL || depth > YAML_DEPTH_MAX) return NULL;
  switch (node->type) {
    case YAML_SCALAR_NODE: {
      const char *text = (const char *)node->data.scalar.value;
      if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) return plain_scalar(text);
      return json_stringn(text, node->data.scalar.length);
    }
    case YAML_SEQUENCE_NODE: {
      json_t *arr = json_array();
      for (yaml_node_item_t *it = node->data.sequence.items.start;
           arr != NULL && it < node->data.sequence.items.top; it++) {
        json_t *v = yaml_node_json(doc, yaml_document_get_node(doc, *it), depth + 1);
        if (v == NULL || json_array_append_new(arr, v) != 0) {
          json_decref(arr);
          arr = NULL;
        }
      }
      return arr;
    }
    case YAML_MAPPING_NODE: {
      json_t *obj = json_object();
      for (yaml_node_pair_t *p = node->data.mapping.pairs.start;
           obj != NULL && p < node->data.mapping.pairs.top; p++) {
        yaml_node_t *key = yaml_document_get_node(doc, p->key);
        json_t *v = NULL;
        if (key != NULL && key->type == YAML_SCALAR_NODE) {
          v = yaml_node_json(doc, yaml_document_get_node(doc, p->value), depth + 1);
        }
        if (v == NULL || json_object_set_new(obj, (const char *)key->data.scalar.value, v) != 0) {
          json_decref(obj);
          obj = NULL;
        }
      }
      return obj;
    }
    case YAML_NO_NODE:
      break;
  }
  return NULL;
}

json_t *ccm_gateway_yaml_to_json(const char *text, size_t len, char *err, size_t errlen) {
  if (text == NULL || err == NULL || errlen == 0) return NULL;
  err[0] = '\0';
  yaml_parser_t parser;
  yaml_document_t doc;
  if (!yaml_parser_initialize(&parser)) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    snprintf(err, errlen, "YAML error at line %zu: %s", parser.problem_mark.line + 1,
             parser.problem != NULL ? parser.problem : "malformed");
    yaml_parser_delete(&parser);
    return NULL;
  }
  json_t *json = yaml_node_json(&doc, yaml_document_get_root_node(&doc), 0);
  if (json == NULL) snprintf(err, errlen, "empty, too deep or not representable as JSON");
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return json;
}

/* Reads a whole file (at most 4 MiB) into a malloc'd buffer. */
static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  struct ccm_buf b;
  ccm_buf_init(&b, 4u * 1024u * 1024u);
  char chunk[8192];
  bool ok = true;
  for (;;) {
    size_t n = fread(chunk, 1, sizeof chunk, f);
    if (n == 0) break;
    ok = ccm_buf_append(&b, chunk, n) == CCM_OK;
    if (!ok) break;
  }
  ok = ok && !ferror(f);
  fclose(f);
  if (!ok) {
    ccm_buf_free(&b);
    return NULL;
  }
  char *data = ccm_buf_take(&b, len);
  return data != NULL ? data : strdup("");
}

json_t *ccm_gateway_openapi_load(char *err, size_t errlen) {
  if (err == NULL || errlen == 0) return NULL;
  const char *env = getenv("CCM_OPENAPI_PATH");
#ifdef CCM_EMBEDDED_OPENAPI
  if (env == NULL || env[0] == '\0') {
    return ccm_gateway_yaml_to_json((const char *)ccm_openapi_yaml, ccm_openapi_yaml_len, err,
                                    errlen);
  }
#endif
  char path[4096];
  const char *source = getenv("CCM_SOURCE_DIR");
  size_t len = 0;
  char *text = NULL;
  if (env != NULL && env[0] != '\0') {
    snprintf(path, sizeof path, "%s", env);
    text = read_file(path, &len);
  } else {
    snprintf(path, sizeof path, "docs/openapi.yaml");
    text = read_file(path, &len);
    if (text == NULL && source != NULL && source[0] != '\0') {
      snprintf(path, sizeof path, "%s/docs/openapi.yaml", source);
      text = read_file(path, &len);
    }
  }
  if (text == NULL) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno != 0 ? errno : ENOENT));
    return NULL;
  }
  char why[256];
  json_t *json = ccm_gateway_yaml_to_json(text, len, why, sizeof why);
  free(text);
  if (json == NULL) snprintf(err, errlen, "%s: %s", path, why);
  return json;
}

/* ---------------------------------------------------------------- main --- */

/* File descriptors kept free for everything but client connections: the
 * gRPC channel, log files, epoll and eventfds of the pool threads. */
#define FD_RESERVE 256
/* MHD's own limit sits this far above ccm's (refused sockets are closed at
 * once, so the extra descriptors are only briefly in use). */
#define CONNECTIONS_MARGIN 64

/* Raises the open-file limit towards what GATEWAY_MAX_CONNECTIONS needs.
 * Returns the number of connections the gateway can really hold: at the
 * open-file limit MHD would stop accepting and new clients would hang until
 * idle ones time out, so past it they are refused at once instead. */
static int usable_connections(int connections) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return connections;
  rlim_t want = (rlim_t)connections + FD_RESERVE;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur >= want) return connections;
  int usable =
      rl.rlim_cur > 2 * FD_RESERVE ? (int)(rl.rlim_cur - FD_RESERVE) : (int)rl.rlim_cur / 2;
  if (usable < 1) usable = 1;
  ccm_warn(LOGGER,
           "open-file limit %llu is below GATEWAY_MAX_CONNECTIONS=%d: holding at most %d "
           "connections",
           (unsigned long long)rl.rlim_cur, connections, usable);
  return usable;
}

/* One epoll thread per CPU, 2 to 4, never more than connections allowed. */
static unsigned pool_threads(int max_connections) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < POOL_THREADS_MIN) n = POOL_THREADS_MIN;
  if (n > POOL_THREADS_MAX) n = POOL_THREADS_MAX;
  if (n > max_connections) n = max_connections > 0 ? max_connections : 1;
  return (unsigned)n;
}

static void load_openapi(struct gateway *gw) {
  char err[512];
  json_t *doc = ccm_gateway_openapi_load(err, sizeof err);
  if (doc == NULL) {
    ccm_warn(LOGGER, "OpenAPI document not loaded (GET /api/v1/openapi.json answers 404): %s", err);
    return;
  }
  gw->openapi = json_dumps(doc, JSON_COMPACT);
  gw->openapi_len = gw->openapi != NULL ? strlen(gw->openapi) : 0;
  json_decref(doc);
}

/* Waits until no connection is suspended or deadline (monotonic ms) passes. */
static void wait_resumed(struct gateway *gw, double deadline) {
  pthread_mutex_lock(&gw->mu);
  while (gw->suspended > 0 && now_ms() < deadline) {
    struct timespec until = ccm_time_deadline(CLOCK_REALTIME, 50);
    pthread_cond_timedwait(&gw->cond, &gw->mu, &until);
  }
  pthread_mutex_unlock(&gw->mu);
}

static size_t suspended_count(struct gateway *gw) {
  pthread_mutex_lock(&gw->mu);
  size_t n = gw->suspended;
  pthread_mutex_unlock(&gw->mu);
  return n;
}

static void stop_gracefully(struct gateway *gw) {
  pthread_mutex_lock(&gw->mu);
  gw->stopping = true;
  pthread_mutex_unlock(&gw->mu);
  int grace = gw->cfg->gateway_rpc_timeout_ms < STOP_GRACE_MS ? gw->cfg->gateway_rpc_timeout_ms
                                                              : STOP_GRACE_MS;
  wait_resumed(gw, now_ms() + grace);
  while (suspended_count(gw) > 0) {
    ccm_rpc_client_cancel_all(gw->rpc);
    wait_resumed(gw, now_ms() + 100);
  }
  struct timespec flush = {0, STOP_FLUSH_MS * 1000000L};
  nanosleep(&flush, NULL);
  MHD_stop_daemon(gw->daemon);
  gw->daemon = NULL;
}

/* Counts open connections (MHD_OPTION_NOTIFY_CONNECTION). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code) {
  (void)conn;
  (void)socket_ctx;
  struct gateway *gw = cls;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&gw->connections, 1);
  if (code == MHD_CONNECTION_NOTIFY_CLOSED) atomic_fetch_sub(&gw->connections, 1);
}

/* Refuses a new connection at the limit by closing it at once. MHD's own
 * limit (set a little higher) would stop accepting instead, and clients
 * would wait in the listen backlog until idle connections time out. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen) {
  (void)addr;
  (void)addrlen;
  struct gateway *gw = cls;
  if (atomic_load(&gw->connections) < gw->max_connections) return MHD_YES;
  long long now = (long long)ccm_time_now_ms();
  long long last = atomic_load(&gw->refused_log_ms);
  if (now - last >= 1000 && atomic_compare_exchange_strong(&gw->refused_log_ms, &last, now)) {
    ccm_warn(LOGGER, "connection refused: %d connections open (limit %d)",
             atomic_load(&gw->connections), gw->max_connections);
  }
  return MHD_NO;
}

static int serve(struct gateway *gw) {
  const struct ccm_config *cfg = gw->cfg;
  gw->max_connections = usable_connections(cfg->gateway_max_connections);
  load_openapi(gw);
  int rc = ccm_rpc_client_create(cfg->grpc_target, &gw->rpc);
  if (rc != CCM_OK) {
    fprintf(stderr, "ccm gateway: cannot create the gRPC channel to %s (GRPC_TARGET)\n",
            cfg->grpc_target);
    ccm_error(LOGGER, "cannot create the gRPC channel to %s: %s", cfg->grpc_target,
              ccm_error_name(rc));
    return CCM_EXIT_FAILURE;
  }
  unsigned threads = pool_threads(gw->max_connections);
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  gw->daemon = MHD_start_daemon(
      flags, (uint16_t)cfg->http_port, on_accept, gw, on_request, gw, MHD_OPTION_EXTERNAL_LOGGER,
      on_mhd_log, gw, MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
      (unsigned)(gw->max_connections + CONNECTIONS_MARGIN), MHD_OPTION_CONNECTION_TIMEOUT,
      (unsigned)cfg->gateway_idle_timeout_seconds, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      (size_t)CONNECTION_MEMORY, MHD_OPTION_URI_LOG_CALLBACK, on_uri, gw,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
      gw, MHD_OPTION_END);
  if (gw->daemon == NULL) {
    fprintf(stderr, "ccm gateway: cannot listen on 0.0.0.0:%d (HTTP_PORT)\n", cfg->http_port);
    ccm_error(LOGGER, "cannot listen on 0.0.0.0:%d", cfg->http_port);
    return CCM_EXIT_FAILURE;
  }
  ccm_info(LOGGER, "REST gateway listening on 0.0.0.0:%d, gRPC target %s (%u threads)",
           cfg->http_port, cfg->grpc_target, threads);
  for (;;) {
    int sig = ccm_signals_wait(1000);
    if (sig == SIGINT || sig == SIGTERM) {
      ccm_info(LOGGER, "signal %d: stopping the gateway", sig);
      break;
    }
  }
  stop_gracefully(gw);
  ccm_info(LOGGER, "REST gateway stopped");
  return CCM_EXIT_OK;
}

int ccm_cmd_gateway(int argc, char **argv) {
  (void)argc;
  (void)argv;
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "gateway");
  if (exit_code != CCM_EXIT_OK) {
    ccm_config_free(&cfg);
    return exit_code;
  }
  if (!cfg.auth_enabled) {
    ccm_warn(LOGGER, "AUTH_ENABLED=false: X-Auth-Token is not checked on any request");
  }
  struct gateway gw = {.cfg = &cfg};
  pthread_mutex_init(&gw.mu, NULL);
  pthread_cond_init(&gw.cond, NULL);
  exit_code = serve(&gw);
  if (gw.daemon != NULL) MHD_stop_daemon(gw.daemon);
  ccm_rpc_client_destroy(gw.rpc);
  free(gw.openapi);
  pthread_cond_destroy(&gw.cond);
  pthread_mutex_destroy(&gw.mu);
  ccm_config_free(&cfg);
  return exit_code;
}
