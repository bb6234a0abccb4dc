/* The gRPC client of the gateway: the only code on the client side over the
 * gRPC core API (grpc/grpc.h), which this header does not expose. One shared
 * insecure channel to a target, registered calls per method path, and
 * asynchronous unary calls whose completions run on one completion-queue
 * thread; a blocking variant is built on top of them. */
#ifndef CCM_RPC_CLIENT_H
#define CCM_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

/* Numeric gRPC status codes (the values of grpc_status_code). */
enum {
  CCM_GRPC_OK = 0,
  CCM_GRPC_CANCELLED = 1,
  CCM_GRPC_UNKNOWN = 2,
  CCM_GRPC_INVALID_ARGUMENT = 3,
  CCM_GRPC_DEADLINE_EXCEEDED = 4,
  CCM_GRPC_NOT_FOUND = 5,
  CCM_GRPC_RESOURCE_EXHAUSTED = 8,
  CCM_GRPC_UNIMPLEMENTED = 12,
  CCM_GRPC_INTERNAL = 13,
  CCM_GRPC_UNAVAILABLE = 14,
  CCM_GRPC_UNAUTHENTICATED = 16,
};

#define CCM_RPC_CLIENT_MAX_METHODS 32  /* registered method paths (more: unregistered calls) */
#define CCM_RPC_CLIENT_MAX_METADATA 8  /* key/value pairs sent per call */
#define CCM_RPC_CLIENT_MAX_VALUE 1024  /* longest trailing metadata value kept */
#define CCM_RPC_CLIENT_MAX_MESSAGE 256 /* longest status message kept, bytes */

/* One metadata entry sent with a call: key in lower case (e.g.
 * "x-auth-token"), value printable ASCII. */
struct ccm_rpc_metadata {
  const char *key;
  const char *value;
};

/* The outcome of one call, as the completion callback sees it. Everything is
 * borrowed and valid only during the callback: copy what must survive. */
struct ccm_rpc_reply {
  int grpc_status;           /* CCM_GRPC_OK on success */
  const char *message;       /* status message; "" when none */
  const char *error_reason;  /* trailing ccm-error-reason; NULL when absent */
  const char *error_field;   /* trailing ccm-error-field; NULL when absent */
  int retry_after_seconds;   /* trailing retry-after; 0 when absent or invalid */
  const unsigned char *data; /* serialized response message (OK only); may be NULL */
  size_t len;                /* bytes at data */
};

/* Called once per started call, on the client's completion-queue thread; must
 * not block for long and must not call ccm_rpc_client_destroy. */
typedef void (*ccm_rpc_client_done)(void *user, const struct ccm_rpc_reply *reply);

struct ccm_rpc_client;

/* Creates the channel to target (host:port) and its completion-queue thread.
 * Returns CCM_OK and the client in *out (the caller owns it and releases it
 * with ccm_rpc_client_destroy), CCM_EINVAL for a bad argument, CCM_ENOMEM or
 * CCM_EINTERNAL when the channel or thread cannot be created. Block signals
 * in the calling thread first: the client's threads inherit the mask. */
int ccm_rpc_client_create(const char *target, struct ccm_rpc_client **out);

/* Starts an asynchronous unary call of method ("/pkg.Service/Method") with
 * the packed request (copied), metadata (copied) and a deadline timeout_ms
 * from now; done(user, reply) is called exactly once when CCM_OK is returned,
 * never otherwise. Returns CCM_EINVAL for a bad argument or illegal metadata,
 * CCM_EUNAVAILABLE once the client is stopping, CCM_ENOMEM, or CCM_EINTERNAL
 * when gRPC refuses the call. */
int ccm_rpc_client_start(struct ccm_rpc_client *client, const char *method, const void *request,
                         size_t request_len, const struct ccm_rpc_metadata *metadata,
                         size_t metadata_count, int timeout_ms, ccm_rpc_client_done done,
                         void *user);

/* A reply copied out of the completion callback by ccm_rpc_client_call; the
 * caller releases it with ccm_rpc_call_result_free. */
struct ccm_rpc_call_result {
  int grpc_status;
  char *message;      /* never NULL after a successful ccm_rpc_client_call */
  char *error_reason; /* NULL when absent */
  char *error_field;  /* NULL when absent */
  int retry_after_seconds;
  unsigned char *data; /* NULL when no response message */
  size_t len;
};

/* Makes one blocking unary call (arguments as ccm_rpc_client_start). Returns
 * CCM_OK when the call completed (with any gRPC status, in *out, which the
 * caller frees with ccm_rpc_call_result_free even after an error), or the error of
 * ccm_rpc_client_start. Must not be called on the completion-queue thread. */
int ccm_rpc_client_call(struct ccm_rpc_client *client, const char *method, const void *request,
                        size_t request_len, const struct ccm_rpc_metadata *metadata,
                        size_t metadata_count, int timeout_ms, struct ccm_rpc_call_result *out);

/* Releases the strings and bytes of r and zeroes it; NULL is accepted. */
void ccm_rpc_call_result_free(struct ccm_rpc_call_result *r);

/* Cancels every call in flight (their callbacks report CANCELLED, or the
 * status they already had); new calls are still accepted. Never fails. */
void ccm_rpc_client_cancel_all(struct ccm_rpc_client *client);

/* Returns the number of calls started whose callback has not returned yet. */
size_t ccm_rpc_client_in_flight(struct ccm_rpc_client *client);

/* Refuses new calls, cancels those in flight, waits for their callbacks,
 * stops the completion-queue thread and releases everything; NULL is
 * accepted. Must not be called on the completion-queue thread. */
void ccm_rpc_client_destroy(struct ccm_rpc_client *client);

#endif
