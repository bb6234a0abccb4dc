/* The gRPC transport of the server, as the rest of ccm sees it. This is the
 * only interface over the gRPC core API (grpc/grpc.h) on the server side:
 * ccm_rpc_server.c is the one file that includes it. Handlers receive an
 * unpacked protobuf-c request and fill a result; the transport packs the
 * response, sends status, message and error metadata, logs one api.log line
 * per RPC, and serves grpc.health.v1.Health and server reflection (v1 and
 * v1alpha) itself. */
#ifndef CCM_RPC_H
#define CCM_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ccm_arena.h"
#include "ccm_sign.h" /* CCM_SIGN_BODY_MAX: x-callback-body-bin */

#define CCM_RPC_METADATA_MAX 1024 /* longest metadata value copied, bytes */

/* What a handler sees of one unary call. Everything here lives until the
 * response has been sent; allocate response data in `arena`. */
struct ccm_rpc_ctx {
  struct ccm_arena *arena;
  const char *method;          /* full path, "/callmanager.v1.CallManager/GetCall" */
  const char *auth_token;      /* metadata x-auth-token, NULL when absent */
  const char *idempotency_key; /* metadata idempotency-key, NULL when absent */
  const char *signature;       /* metadata x-signature, NULL when absent */
  const char *signature_time;  /* metadata x-timestamp, NULL when absent */
  const char *body_sha256;     /* metadata x-body-sha256, NULL when absent */
  const char *callback_body;   /* metadata x-callback-body-bin (the signed raw body), or NULL */
  int64_t deadline_ms;         /* absolute Unix ms; INT64_MAX when none */
  int worker;                  /* index of the worker thread running the handler */
  void *worker_data;           /* that worker's state (ccm_rpc_server_options) */
  void *app;                   /* ccm_rpc_server_options.app */
};

/* A handler's answer. status CCM_OK sends `response`; any other status sends
 * the mapped gRPC status with `message` (ccm_error_message(status) when NULL)
 * and the optional trailing metadata. Strings must outlive the call (static
 * or in the arena). */
struct ccm_rpc_result {
  int status;
  const char *message;
  const char *reason;      /* ccm-error-reason, e.g. "duplicate_call" */
  const char *field;       /* ccm-error-field */
  int retry_after_seconds; /* > 0: retry-after */
  const ProtobufCMessage *response;
};

typedef void (*ccm_rpc_handler)(struct ccm_rpc_ctx *ctx, const ProtobufCMessage *request,
                                struct ccm_rpc_result *out);

struct ccm_rpc_method {
  const char *path; /* "/callmanager.v1.CallManager/InitiateCall" */
  const ProtobufCMessageDescriptor *request_descriptor;
  ccm_rpc_handler handler;
};

/* Health of a service name for grpc.health.v1.Health/Check. */
enum ccm_rpc_health { CCM_RPC_SERVING = 1, CCM_RPC_NOT_SERVING = 2, CCM_RPC_UNKNOWN_SERVICE = -1 };

struct ccm_rpc_server_options {
  const char *listen_address; /* "0.0.0.0:50051" */
  int workers;                /* threads running handlers (each may block on I/O) */
  const struct ccm_rpc_method *methods;
  size_t method_count;
  void *app;
  /* Per-worker state (e.g. a database connection): created on the worker's
   * thread before it serves anything; may be NULL. */
  void *(*worker_init)(void *app, int worker);
  void (*worker_free)(void *app, void *worker_data);
  /* Answers Health/Check for a service name ("" = the whole server). Must be
   * quick; called on a worker thread. */
  enum ccm_rpc_health (*health)(void *app, const char *service);
  /* Serialized FileDescriptorSet (protoc --include_imports) for reflection. */
  const unsigned char *descriptor_set;
  size_t descriptor_set_len;
};

struct ccm_rpc_server;

/* Creates the server and binds the port. Returns CCM_OK and the server in
 * *out (caller owns it: ccm_rpc_server_destroy), CCM_EINVAL for bad options,
 * CCM_EIO when the address cannot be bound. Block SIGINT/SIGTERM in the
 * calling thread first so gRPC's threads inherit the mask. */
int ccm_rpc_server_create(const struct ccm_rpc_server_options *options,
                          struct ccm_rpc_server **out);

/* Starts the worker threads and serves until ccm_rpc_server_shutdown.
 * Returns CCM_OK or CCM_EINTERNAL when the threads cannot start. */
int ccm_rpc_server_start(struct ccm_rpc_server *server);

/* Stops accepting calls, lets in-flight ones finish for up to grace_ms, then
 * cancels the rest and joins the workers. Safe to call once from any thread
 * that is not a worker. */
void ccm_rpc_server_shutdown(struct ccm_rpc_server *server, int grace_ms);

/* Releases the server (after shutdown); NULL is accepted. */
void ccm_rpc_server_destroy(struct ccm_rpc_server *server);

/* Returns the milliseconds left before the call's deadline (may be <= 0). */
int64_t ccm_rpc_time_left_ms(const struct ccm_rpc_ctx *ctx);

#endif
