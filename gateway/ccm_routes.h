/* The REST route table of the gateway (SPEC 4.2): one row per endpoint with
 * its method, path pattern, RPC, request/response messages, how path and
 * query parameters and the JSON body become the request, and how the
 * response is shaped. Also URL matching (trailing slash optional, segments
 * percent-decoded with '+' kept) and request building, with the 404/405/400
 * answers they imply. No HTTP library here: the gateway drives it. */
#ifndef CCM_ROUTES_H
#define CCM_ROUTES_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

#include "ccm_arena.h"

#define CCM_ROUTE_MAX_PARAMS 4             /* path parameters per pattern */
#define CCM_ROUTE_MAX_QUERY 4              /* query parameters per route */
#define CCM_ROUTE_MAX_LIMITS 4             /* string length limits per route */
#define CCM_ROUTE_MAX_ALIASES 4            /* response fields copied under a second name */
#define CCM_ROUTE_MAX_MESSAGES 4           /* per-field 400 messages */
#define CCM_ROUTE_BODY_MAX (1024u * 1024u) /* larger bodies are 413 */

enum ccm_route_kind {
  CCM_ROUTE_RPC,     /* one CallManager RPC */
  CCM_ROUTE_HEALTH,  /* grpc.health.v1.Health/Check */
  CCM_ROUTE_OPENAPI, /* the OpenAPI document, served by the gateway */
};

/* A path or query parameter mapped onto a request field. */
struct ccm_route_param {
  const char *name;    /* "{id}" in the pattern is "id"; query key "limit" */
  const char *field;   /* request field it sets */
  bool numeric;        /* must be a decimal integer (400 otherwise) */
  const char *message; /* the 400 message when it is not */
};

/* An upper bound on a string field of the body, in code points (or bytes). */
struct ccm_route_limit {
  const char *field;
  size_t max;
  bool bytes;          /* count bytes rather than code points */
  const char *message; /* the 400 message */
};

/* A response field repeated under another name (created_count = added_count). */
struct ccm_route_alias {
  const char *name;
  const char *source;
};

/* The 400 message used for any mapping error on a field. */
struct ccm_route_message {
  const char *field;
  const char *message;
};

struct ccm_route {
  const char *method;  /* "GET", "POST", "PUT" */
  const char *pattern; /* "/api/v1/campaigns/{id}/" */
  enum ccm_route_kind kind;
  const char *rpc; /* full method path; NULL for the OpenAPI document */
  const ProtobufCMessageDescriptor *request;
  const ProtobufCMessageDescriptor *response;
  int success_status; /* HTTP status of a success */
  bool auth;          /* X-Auth-Token required */
  bool body;          /* the JSON body is mapped into the request */
  bool ignore_unknown;
  bool signed_body;   /* subject to CALLBACK_SIGNING_SECRET */
  const char *unwrap; /* answer this response field alone; NULL: the whole message */
  struct ccm_route_param path_params[CCM_ROUTE_MAX_PARAMS];
  struct ccm_route_param query[CCM_ROUTE_MAX_QUERY];
  struct ccm_route_limit limits[CCM_ROUTE_MAX_LIMITS];
  struct ccm_route_alias aliases[CCM_ROUTE_MAX_ALIASES];
  struct ccm_route_message messages[CCM_ROUTE_MAX_MESSAGES];
};

extern const struct ccm_route ccm_routes[];
extern const size_t ccm_routes_count;

/* A URL matched against the table. Strings live in the arena given to
 * ccm_routes_match. */
struct ccm_route_match {
  const struct ccm_route *route;            /* NULL unless CCM_OK */
  const char *params[CCM_ROUTE_MAX_PARAMS]; /* decoded, in pattern order */
  size_t param_lens[CCM_ROUTE_MAX_PARAMS];  /* bytes (a decoded value may hold NUL) */
  const char *path;                         /* the raw path, without query */
  const char *query;                        /* raw query string; NULL when none */
  const char *allow;                        /* methods of the path, "GET, POST" */
};

/* A request that cannot be built: HTTP status (400), message, field. */
struct ccm_route_error {
  int status; /* ccm status: CCM_EINVAL, or CCM_ENOMEM */
  const char *message;
  const char *field; /* NULL when not about one field */
};

/* Matches method (HEAD counts as GET) and the raw request target uri (path
 * plus optional query, as sent) against the table. Returns CCM_OK with
 * out->route set; CCM_ENOTFOUND for an unknown path; CCM_EMETHOD when the
 * path exists but not for this method (out->allow lists its methods);
 * CCM_ENOMEM; CCM_EINVAL for NULL arguments. */
int ccm_routes_match(const char *method, const char *uri, struct ccm_arena *arena,
                     struct ccm_route_match *out);

/* Builds the request message of a matched RPC or health route from path
 * parameters, query and body (body may be NULL or empty: no fields). Returns
 * CCM_OK and the message (arena memory) in *out, or CCM_EINVAL / CCM_ENOMEM
 * with err filled (strings static or in the arena). */
int ccm_routes_build_request(const struct ccm_route_match *match, const char *body, size_t body_len,
                             struct ccm_arena *arena, ProtobufCMessage **out,
                             struct ccm_route_error *err);

/* Returns the JSON answer of a successful RPC (the caller owns the
 * reference): the message, or its unwrap field, plus aliases. NULL when out
 * of memory. */
json_t *ccm_routes_response_json(const struct ccm_route *route, const ProtobufCMessage *response);

/* Percent-decodes len bytes of s into the arena ('+' stays '+', a malformed
 * escape is kept as is). Returns the NUL-terminated copy and its length in
 * *out_len, or NULL when out of memory. */
char *ccm_routes_decode(struct ccm_arena *arena, const char *s, size_t len, size_t *out_len);

#endif
