/* The route table and what it drives: URL matching, request building from
 * path, query and body, and response shaping. */
#include "ccm_routes.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_error.h"
#include "ccm_json_map.h"
#include "ccm_utf8.h"
#include "grpc/health/v1/health.pb-c.h"

#define MAX_SEGMENTS 16
#define CM "/callmanager.v1.CallManager/"
#define HEALTH_SERVICE "callmanager.v1.CallManager"

/* The health route asks about one service; this row field names it. */
#define HEALTH_SERVICE_FIELD "service"

const struct ccm_route ccm_routes[] = {
    {.method = "GET",
     .pattern = "/health/",
     .kind = CCM_ROUTE_HEALTH,
     .rpc = "/grpc.health.v1.Health/Check",
     .request = &grpc__health__v1__health_check_request__descriptor,
     .response = &grpc__health__v1__health_check_response__descriptor,
     .success_status = 200},
    {.method = "GET",
     .pattern = "/api/v1/openapi.json",
     .kind = CCM_ROUTE_OPENAPI,
     .success_status = 200},
    {.method = "POST",
     .pattern = "/api/v1/campaigns/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "CreateCampaign",
     .request = &callmanager__v1__create_campaign_request__descriptor,
     .response = &callmanager__v1__create_campaign_response__descriptor,
     .success_status = 201,
     .auth = true,
     .body = true,
     .unwrap = "campaign",
     .limits = {{"description", 2000, false,
                 "description must be at most 2000 characters of valid UTF-8."}}},
    {.method = "GET",
     .pattern = "/api/v1/campaigns/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "ListCampaigns",
     .request = &callmanager__v1__list_campaigns_request__descriptor,
     .response = &callmanager__v1__list_campaigns_response__descriptor,
     .success_status = 200,
     .auth = true,
     .unwrap = "campaigns",
     .query = {{"limit", "limit", true, "limit must be a non-negative integer."},
               {"offset", "offset", true, "offset must be a non-negative integer."}}},
    {.method = "GET",
     .pattern = "/api/v1/campaigns/{id}/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "GetCampaign",
     .request = &callmanager__v1__get_campaign_request__descriptor,
     .response = &callmanager__v1__get_campaign_response__descriptor,
     .success_status = 200,
     .auth = true,
     .unwrap = "campaign",
     .path_params = {{"id", "id", true, "Campaign id must be an integer."}}},
    {.method = "POST",
     .pattern = "/api/v1/phone-numbers/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "AddPhoneNumbers",
     .request = &callmanager__v1__add_phone_numbers_request__descriptor,
     .response = &callmanager__v1__add_phone_numbers_response__descriptor,
     .success_status = 201,
     .auth = true,
     .body = true,
     .aliases = {{"created_count", "added_count"}, {"created_numbers", "phone_numbers"}}},
    {.method = "POST",
     .pattern = "/api/v1/initiate-call/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "InitiateCall",
     .request = &callmanager__v1__initiate_call_request__descriptor,
     .response = &callmanager__v1__initiate_call_response__descriptor,
     .success_status = 201,
     .auth = true,
     .body = true,
     .limits = {{"phone_number", 64, true,
                 "Invalid phone number format. Must start with + and contain digits."}}},
    {.method = "PUT",
     .pattern = "/api/v1/callback/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "ProcessCallback",
     .request = &callmanager__v1__process_callback_request__descriptor,
     .response = &callmanager__v1__process_callback_response__descriptor,
     .success_status = 200,
     .auth = true,
     .body = true,
     .ignore_unknown = true,
     .signed_body = true,
     .limits = {{"call_id", 128, false, "call_id must be at most 128 characters."},
                {"external_call_id", 128, false,
                 "external_call_id must be at most 128 characters."}},
     .messages = {{"status", "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED"},
                  {"call_duration", "call_duration must be a non-negative integer."},
                  {"timestamp", "timestamp must be a string."}}},
    {.method = "GET",
     .pattern = "/api/v1/metrics/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "GetMetrics",
     .request = &callmanager__v1__get_metrics_request__descriptor,
     .response = &callmanager__v1__get_metrics_response__descriptor,
     .success_status = 200,
     .auth = true},
    {.method = "GET",
     .pattern = "/api/v1/calls/{call_id}/",
     .kind = CCM_ROUTE_RPC,
     .rpc = CM "GetCall",
     .request = &callmanager__v1__get_call_request__descriptor,
     .response = &callmanager__v1__get_call_response__descriptor,
     .success_status = 200,
     .auth = true,
     .unwrap = "call",
     .path_params = {{"call_id", "call_id", false, "Invalid call_id."}}},
};

const size_t ccm_routes_count = sizeof ccm_routes / sizeof ccm_routes[0];

/* ------------------------------------------------------------- helpers --- */

struct segments {
  const char *s[MAX_SEGMENTS];
  size_t len[MAX_SEGMENTS];
  size_t n;
};

/* Splits an absolute path into its segments; one trailing '/' is ignored.
 * Returns false when the path is not absolute or has too many segments. */
static bool split_path(const char *path, size_t len, struct segments *out) {
  out->n = 0;
  if (len == 0 || path[0] != '/') return false;
  if (len > 1 && path[len - 1] == '/') len--;
  size_t i = 1;
  if (len == 1) return true; /* "/" */
  while (i <= len) {
    size_t start = i;
    while (i < len && path[i] != '/') i++;
    if (out->n == MAX_SEGMENTS) return false;
    out->s[out->n] = path + start;
    out->len[out->n] = i - start;
    out->n++;
    i++;
  }
  return true;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char *ccm_routes_decode(struct ccm_arena *arena, const char *s, size_t len, size_t *out_len) {
  if (arena == NULL || (s == NULL && len > 0)) return NULL;
  char *out = ccm_arena_alloc(arena, len + 1);
  if (out == NULL) return NULL;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '%' && i + 2 < len) {
      int hi = hex_value(s[i + 1]);
      int lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out[n++] = (char)(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out[n++] = s[i];
  }
  out[n] = '\0';
  if (out_len != NULL) *out_len = n;
  return out;
}

/* True when the pattern segment is "{name}". */
static bool is_param(const char *seg, size_t len) {
  return len >= 2 && seg[0] == '{' && seg[len - 1] == '}';
}

/* Parses an optionally negative decimal integer that fits in int64. */
static bool parse_int64(const char *s, size_t len, int64_t *out) {
  size_t i = 0;
  bool negative = false;
  if (len > 0 && s[0] == '-') {
    negative = true;
    i = 1;
  }
  if (i == len) return false;
  uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  uint64_t v = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    uint64_t digit = (uint64_t)(s[i] - '0');
    if (v > (limit - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = negative ? (int64_t)(0 - v) : (int64_t)v;
  return true;
}

/* Skips "scheme://authority" of an absolute-form request target. */
static const char *skip_authority(const char *uri) {
  const char *scheme_end = strstr(uri, "://");
  if (uri[0] == '/' || scheme_end == NULL) return uri;
  const char *slash = strchr(scheme_end + 3, '/');
  return slash != NULL ? slash : "/";
}

static bool method_is(const char *route_method, const char *method) {
  if (strcmp(route_method, method) == 0) return true;
  return strcmp(route_method, "GET") == 0 && strcmp(method, "HEAD") == 0;
}

/* ------------------------------------------------------------ matching --- */

/* Compares the decoded request segments with a pattern; on a match fills
 * the parameter values of out. */
static bool match_pattern(const struct ccm_route *r, const struct segments *req,
                          char *const *decoded, const size_t *decoded_len,
                          struct ccm_route_match *out) {
  struct segments pat;
  if (!split_path(r->pattern, strlen(r->pattern), &pat) || pat.n != req->n) return false;
  size_t param = 0;
  for (size_t i = 0; i < pat.n; i++) {
    if (is_param(pat.s[i], pat.len[i])) {
      if (decoded_len[i] == 0 || param == CCM_ROUTE_MAX_PARAMS) return false;
      if (out != NULL) {
        out->params[param] = decoded[i];
        out->param_lens[param] = decoded_len[i];
      }
      param++;
      continue;
    }
    if (pat.len[i] != decoded_len[i] || memcmp(pat.s[i], decoded[i], pat.len[i]) != 0) {
      return false;
    }
  }
  return true;
}

int ccm_routes_match(const char *method, const char *uri, struct ccm_arena *arena,
                     struct ccm_route_match *out) {
  if (method == NULL || uri == NULL || arena == NULL || out == NULL) return CCM_EINVAL;
  memset(out, 0, sizeof *out);
  uri = skip_authority(uri);
  size_t path_len = strcspn(uri, "?#");
  out->path = ccm_arena_strndup(arena, uri, path_len);
  if (out->path == NULL) return CCM_ENOMEM;
  if (uri[path_len] == '?') {
    const char *q = uri + path_len + 1;
    out->query = ccm_arena_strndup(arena, q, strcspn(q, "#"));
    if (out->query == NULL) return CCM_ENOMEM;
  }
  struct segments req;
  if (!split_path(out->path, path_len, &req)) return CCM_ENOTFOUND;
  char *decoded[MAX_SEGMENTS];
  size_t decoded_len[MAX_SEGMENTS];
  for (size_t i = 0; i < req.n; i++) {
    decoded[i] = ccm_routes_decode(arena, req.s[i], req.len[i], &decoded_len[i]);
    if (decoded[i] == NULL) return CCM_ENOMEM;
  }
  char allow[64] = "";
  bool path_known = false;
  for (size_t r = 0; r < ccm_routes_count; r++) {
    const struct ccm_route *route = &ccm_routes[r];
    if (!match_pattern(route, &req, decoded, decoded_len, NULL)) continue;
    path_known = true;
    if (strstr(allow, route->method) == NULL) {
      size_t used = strlen(allow);
      snprintf(allow + used, sizeof allow - used, "%s%s", used > 0 ? ", " : "", route->method);
    }
    if (out->route == NULL && method_is(route->method, method)) {
      match_pattern(route, &req, decoded, decoded_len, out);
      out->route = route;
    }
  }
  if (!path_known) return CCM_ENOTFOUND;
  size_t used = strlen(allow);
  snprintf(allow + used, sizeof allow - used, ", OPTIONS");
  out->allow = ccm_arena_strdup(arena, allow);
  if (out->allow == NULL) return CCM_ENOMEM;
  return out->route != NULL ? CCM_OK : CCM_EMETHOD;
}

/* ------------------------------------------------------- request build --- */

static int route_fail(struct ccm_route_error *err, int status, const char *message,
                      const char *field) {
  err->status = status;
  err->message = message;
  err->field = field;
  return status;
}

/* The message the route gives for any error on field, or NULL. */
static const char *field_message(const struct ccm_route *r, const char *field) {
  if (field == NULL) return NULL;
  for (size_t i = 0; i < CCM_ROUTE_MAX_MESSAGES && r->messages[i].field != NULL; i++) {
    if (strcmp(r->messages[i].field, field) == 0) return r->messages[i].message;
  }
  return NULL;
}

/* Sets a request field from a path or query parameter's text. */
static int set_param(const struct ccm_route_param *p, const char *value, size_t len,
                     ProtobufCMessage *msg, struct ccm_arena *arena, struct ccm_route_error *err) {
  json_t *j;
  if (p->numeric) {
    int64_t v;
    if (!parse_int64(value, len, &v)) return route_fail(err, CCM_EINVAL, p->message, p->name);
    j = json_integer((json_int_t)v);
  } else {
    if (!ccm_utf8_valid(value, len, NULL)) return route_fail(err, CCM_EINVAL, p->message, p->name);
    j = json_stringn(value, len);
  }
  if (j == NULL) return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
  struct ccm_json_error jerr;
  int rc = ccm_json_set_field(msg, p->field, j, arena, &jerr);
  json_decref(j);
  if (rc == CCM_EINVAL) return route_fail(err, CCM_EINVAL, p->message, p->name);
  if (rc == CCM_ENOMEM) return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
  if (rc != CCM_OK) return route_fail(err, CCM_EINTERNAL, ccm_error_message(CCM_EINTERNAL), NULL);
  return CCM_OK;
}

/* Applies the route's query parameters found in query (unknown keys are
 * ignored; a repeated key keeps its last value). */
static int apply_query(const struct ccm_route *r, const char *query, ProtobufCMessage *msg,
                       struct ccm_arena *arena, struct ccm_route_error *err) {
  const char *p = query;
  while (p != NULL && *p != '\0') {
    size_t pair_len = strcspn(p, "&");
    const char *eq = memchr(p, '=', pair_len);
    size_t key_len = eq != NULL ? (size_t)(eq - p) : pair_len;
    size_t klen, vlen;
    char *key = ccm_routes_decode(arena, p, key_len, &klen);
    char *value = eq != NULL ? ccm_routes_decode(arena, eq + 1, pair_len - key_len - 1, &vlen)
                             : ccm_routes_decode(arena, "", 0, &vlen);
    if (key == NULL || value == NULL) {
      return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
    }
    for (size_t i = 0; i < CCM_ROUTE_MAX_QUERY && r->query[i].name != NULL; i++) {
      if (strlen(r->query[i].name) != klen || memcmp(r->query[i].name, key, klen) != 0) continue;
      int rc = set_param(&r->query[i], value, vlen, msg, arena, err);
      if (rc != CCM_OK) return rc;
    }
    p += pair_len;
    if (*p == '&') p++;
  }
  return CCM_OK;
}

/* Checks the route's string limits on the (already mapped) JSON body. */
static int check_limits(const struct ccm_route *r, const json_t *body,
                        struct ccm_route_error *err) {
  for (size_t i = 0; i < CCM_ROUTE_MAX_LIMITS && r->limits[i].field != NULL; i++) {
    const struct ccm_route_limit *l = &r->limits[i];
    const json_t *v = json_object_get(body, l->field);
    if (!json_is_string(v)) continue;
    size_t len = json_string_length(v);
    size_t count = len;
    if (!l->bytes && !ccm_utf8_valid(json_string_value(v), len, &count)) count = len;
    if (count > l->max) return route_fail(err, CCM_EINVAL, l->message, l->field);
  }
  return CCM_OK;
}

/* Parses and maps the JSON body onto a new request message. */
static int map_body(const struct ccm_route *r, const char *body, size_t len,
                    struct ccm_arena *arena, ProtobufCMessage **msg, struct ccm_route_error *err) {
  size_t start = 0;
  while (start < len && (body[start] == ' ' || body[start] == '\t' || body[start] == '\r' ||
                         body[start] == '\n')) {
    start++;
  }
  json_t *json;
  if (start == len) {
    json = json_object(); /* no body: no fields */
  } else {
    json_error_t jerr;
    json = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (json == NULL) {
      const char *m = ccm_arena_printf(
          arena, "Malformed JSON in request body (line %d, column %d).", jerr.line, jerr.column);
      return route_fail(err, CCM_EINVAL, m != NULL ? m : "Malformed JSON in request body.", NULL);
    }
  }
  if (json == NULL) return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
  struct ccm_json_map_options opts = {.ignore_unknown = r->ignore_unknown};
  struct ccm_json_error jerr;
  int rc = ccm_json_to_message(json, r->request, &opts, arena, msg, &jerr);
  if (rc == CCM_OK) rc = check_limits(r, json, err);
  json_decref(json);
  if (rc == CCM_EINVAL && err->message == NULL) {
    const char *override = field_message(r, jerr.field);
    return route_fail(err, CCM_EINVAL, override != NULL ? override : jerr.message, jerr.field);
  }
  if (rc == CCM_ENOMEM) return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
  return rc;
}

int ccm_routes_build_request(const struct ccm_route_match *match, const char *body, size_t body_len,
                             struct ccm_arena *arena, ProtobufCMessage **out,
                             struct ccm_route_error *err) {
  if (match == NULL || match->route == NULL || arena == NULL || out == NULL || err == NULL ||
      (body == NULL && body_len > 0)) {
    return CCM_EINVAL;
  }
  memset(err, 0, sizeof *err);
  *out = NULL;
  const struct ccm_route *r = match->route;
  if (r->request == NULL) return CCM_OK;
  ProtobufCMessage *msg = NULL;
  int rc;
  if (r->body) {
    rc = map_body(r, body != NULL ? body : "", body_len, arena, &msg, err);
    if (rc != CCM_OK) return rc;
  } else {
    msg = ccm_arena_alloc(arena, r->request->sizeof_message);
    if (msg == NULL) return route_fail(err, CCM_ENOMEM, ccm_error_message(CCM_ENOMEM), NULL);
    r->request->message_init(msg);
  }
  for (size_t i = 0; i < CCM_ROUTE_MAX_PARAMS && r->path_params[i].name != NULL; i++) {
    rc = set_param(&r->path_params[i], match->params[i], match->param_lens[i], msg, arena, err);
    if (rc != CCM_OK) return rc;
  }
  rc = apply_query(r, match->query, msg, arena, err);
  if (rc != CCM_OK) return rc;
  if (r->kind == CCM_ROUTE_HEALTH) {
    const struct ccm_route_param service = {HEALTH_SERVICE_FIELD, HEALTH_SERVICE_FIELD, false,
                                            "Invalid service."};
    rc = set_param(&service, HEALTH_SERVICE, strlen(HEALTH_SERVICE), msg, arena, err);
    if (rc != CCM_OK) return rc;
  }
  *out = msg;
  return CCM_OK;
}

/* ------------------------------------------------------------ response --- */

json_t *ccm_routes_response_json(const struct ccm_route *route, const ProtobufCMessage *response) {
  if (route == NULL || response == NULL) return NULL;
  json_t *obj = ccm_json_from_message(response);
  if (obj == NULL) return NULL;
  for (size_t i = 0; i < CCM_ROUTE_MAX_ALIASES && route->aliases[i].name != NULL; i++) {
    json_t *source = json_object_get(obj, route->aliases[i].source);
    json_t *copy = source != NULL ? json_deep_copy(source) : json_null();
    if (copy == NULL || json_object_set_new(obj, route->aliases[i].name, copy) != 0) {
      json_decref(obj);
      return NULL;
    }
  }
  if (route->unwrap == NULL) return obj;
  json_t *inner = json_object_get(obj, route->unwrap);
  json_t *result = inner != NULL ? json_incref(inner) : json_null();
  json_decref(obj);
  return result;
}
