/* One error vocabulary for the whole project.
 *
 * Every function that can fail returns an int status: CCM_OK (0) or one of
 * the codes below. The table defines each code once, with its gRPC status,
 * the HTTP status and REST `code` the gateway answers with, and a default
 * human message; names and mappings are generated from it. */
#ifndef CCM_ERROR_H
#define CCM_ERROR_H

#include <stddef.h>

/* X(symbol, name, grpc_status, http_status, rest_code, default_message) */
#define CCM_ERROR_TABLE(X)                                                                      \
  X(CCM_OK, "ok", 0, 200, "ok", "OK")                                                           \
  X(CCM_EINVAL, "invalid_argument", 3, 400, "bad_request", "Invalid request.")                  \
  X(CCM_EUNAUTH, "unauthenticated", 16, 401, "unauthorized",                                    \
    "Authentication credentials were not provided or are invalid.")                             \
  X(CCM_EFORBIDDEN, "permission_denied", 7, 403, "forbidden",                                   \
    "You do not have permission to perform this action.")                                       \
  X(CCM_ENOTFOUND, "not_found", 5, 404, "not_found", "Not found.")                              \
  X(CCM_EMETHOD, "method_not_allowed", 12, 405, "method_not_allowed", "Method not allowed.")    \
  X(CCM_ECONFLICT, "already_exists", 6, 409, "conflict",                                        \
    "The request conflicts with one still in progress.")                                        \
  X(CCM_ETOOLARGE, "payload_too_large", 8, 413, "payload_too_large", "Request body too large.") \
  X(CCM_EPRECOND, "failed_precondition", 9, 400, "failed_precondition",                         \
    "The request cannot be applied in the current state.")                                      \
  X(CCM_EEXHAUSTED, "resource_exhausted", 8, 429, "too_many_requests", "Too many requests.")    \
  X(CCM_EUNIMPL, "unimplemented", 12, 501, "not_implemented", "Not implemented.")               \
  X(CCM_EUNAVAILABLE, "unavailable", 14, 503, "service_unavailable",                            \
    "Service temporarily unavailable. Please retry.")                                           \
  X(CCM_ETIMEOUT, "deadline_exceeded", 4, 504, "gateway_timeout", "The request timed out.")     \
  X(CCM_ENOMEM, "out_of_memory", 13, 500, "internal_server_error", "Internal server error.")    \
  X(CCM_EIO, "io_error", 13, 500, "internal_server_error", "Internal server error.")            \
  X(CCM_EINTERNAL, "internal", 13, 500, "internal_server_error", "Internal server error.")

enum ccm_status {
#define CCM_X_ENUM(sym, name, grpc, http, code, msg) sym,
  CCM_ERROR_TABLE(CCM_X_ENUM)
#undef CCM_X_ENUM
      CCM_STATUS_COUNT
};

/* Reasons sent in trailing metadata `ccm-error-reason` and details.reason;
 * the same names as proto enum callmanager.v1.ErrorReason without prefix. */
#define CCM_REASON_TABLE(X)                                        \
  X(CCM_REASON_NONE, "")                                           \
  X(CCM_REASON_DUPLICATE_CALL, "duplicate_call")                   \
  X(CCM_REASON_CONCURRENCY_LIMIT, "concurrency_limit")             \
  X(CCM_REASON_IDEMPOTENCY_MISMATCH, "idempotency_mismatch")       \
  X(CCM_REASON_IDEMPOTENCY_IN_PROGRESS, "idempotency_in_progress") \
  X(CCM_REASON_INVALID_FIELD, "invalid_field")                     \
  X(CCM_REASON_DEPENDENCY_DOWN, "dependency_down")

enum ccm_reason {
#define CCM_X_ENUM(sym, name) sym,
  CCM_REASON_TABLE(CCM_X_ENUM)
#undef CCM_X_ENUM
      CCM_REASON_COUNT
};

/* Returns the symbolic name ("not_found"); "unknown" for an out-of-range value. */
const char *ccm_error_name(int status);
/* Returns the default human message; never NULL. */
const char *ccm_error_message(int status);
/* Returns the gRPC status code (numeric grpc_status_code) for a ccm status. */
int ccm_error_grpc_status(int status);
/* Returns the HTTP status the gateway answers with for a ccm status. */
int ccm_error_http_status(int status);
/* Returns the REST error `code` ("bad_request", ...); never NULL. */
const char *ccm_error_rest_code(int status);
/* Returns the ccm status for a gRPC status code (SPEC 4.1 table); unknown
 * codes map to CCM_EINTERNAL. */
int ccm_error_from_grpc(int grpc_status);
/* Parses a symbolic name back to its status; returns -1 when unknown. */
int ccm_error_parse(const char *name);

/* Returns the reason's wire name ("duplicate_call"), "" for none/unknown. */
const char *ccm_reason_name(int reason);
/* Parses a wire name; returns CCM_REASON_NONE when unknown. */
int ccm_reason_parse(const char *name);

#endif
