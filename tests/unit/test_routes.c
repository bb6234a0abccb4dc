/* Unit tests for gateway/ccm_routes: URL matching (trailing slash,
 * percent-decoding, 404/405 and Allow), request building from path, query
 * and body (numeric parameters, malformed JSON, limits, per-route messages),
 * response shaping, and the agreement between the route table and
 * docs/openapi.yaml (read from CCM_SOURCE_DIR, which CTest sets). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_arena.h"
#include "ccm_error.h"
#include "ccm_gateway.h"
#include "ccm_routes.h"
#include "grpc/health/v1/health.pb-c.h"

#define ARENA_MAX (8u * 1024u * 1024u)
#define CM "/callmanager.v1.CallManager/"

static int setup(void **state) {
  struct ccm_arena *a = calloc(1, sizeof *a);
  if (a == NULL) return -1;
  ccm_arena_init(a, ARENA_MAX);
  *state = a;
  return 0;
}

static int teardown(void **state) {
  ccm_arena_free(*state);
  free(*state);
  return 0;
}

/* Matches and returns the route's RPC (or "" for routes without one). */
static const char *rpc_of(struct ccm_arena *a, const char *method, const char *uri) {
  struct ccm_route_match m;
  int rc = ccm_routes_match(method, uri, a, &m);
  if (rc != CCM_OK) {
    print_error("%s %s: %s\n", method, uri, ccm_error_name(rc));
    fail();
  }
  return m.route->rpc != NULL ? m.route->rpc : "";
}

static int match_rc(struct ccm_arena *a, const char *method, const char *uri) {
  struct ccm_route_match m;
  return ccm_routes_match(method, uri, a, &m);
}

/* ------------------------------------------------------------ matching --- */

static void test_match_every_endpoint(void **state) {
  struct ccm_arena *a = *state;
  assert_string_equal(rpc_of(a, "POST", "/api/v1/campaigns/"), CM "CreateCampaign");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/campaigns/"), CM "ListCampaigns");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/campaigns/7/"), CM "GetCampaign");
  assert_string_equal(rpc_of(a, "POST", "/api/v1/phone-numbers/"), CM "AddPhoneNumbers");
  assert_string_equal(rpc_of(a, "POST", "/api/v1/initiate-call/"), CM "InitiateCall");
  assert_string_equal(rpc_of(a, "PUT", "/api/v1/callback/"), CM "ProcessCallback");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/metrics/"), CM "GetMetrics");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/calls/call_1/"), CM "GetCall");
  assert_string_equal(rpc_of(a, "GET", "/health/"), "/grpc.health.v1.Health/Check");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/openapi.json"), "");
  /* HEAD is served as GET. */
  assert_string_equal(rpc_of(a, "HEAD", "/health/"), "/grpc.health.v1.Health/Check");
}

static void test_trailing_slash_optional(void **state) {
  struct ccm_arena *a = *state;
  assert_string_equal(rpc_of(a, "POST", "/api/v1/campaigns"), CM "CreateCampaign");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/campaigns/7"), CM "GetCampaign");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/metrics"), CM "GetMetrics");
  assert_string_equal(rpc_of(a, "GET", "/health"), "/grpc.health.v1.Health/Check");
  assert_string_equal(rpc_of(a, "GET", "/api/v1/openapi.json/"), "");
  /* Only one trailing slash; empty segments never match. */
  assert_int_equal(match_rc(a, "GET", "/api/v1/metrics//"), CCM_ENOTFOUND);
  assert_int_equal(match_rc(a, "GET", "/api//v1/metrics/"), CCM_ENOTFOUND);
  assert_int_equal(match_rc(a, "GET", "/api/v1/campaigns//"), CCM_ENOTFOUND);
}

static void test_unknown_paths(void **state) {
  struct ccm_arena *a = *state;
  const char *paths[] = {"/",
                         "",
                         "api/v1/metrics/",
                         "/api/v1/",
                         "/api/v1/metric/",
                         "/API/V1/METRICS/",
                         "/api/v2/metrics/",
                         "/api/v1/campaigns/1/2/",
                         "/api/v1/calls/",
                         "/health/x/",
                         "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    if (match_rc(a, "GET", paths[i]) != CCM_ENOTFOUND) {
      print_error("%s should be 404\n", paths[i]);
      fail();
    }
  }
}

static void test_wrong_method(void **state) {
  struct ccm_arena *a = *state;
  struct ccm_route_match m;
  assert_int_equal(ccm_routes_match("DELETE", "/api/v1/campaigns/", a, &m), CCM_EMETHOD);
  assert_null(m.route);
  assert_string_equal(m.allow, "POST, GET, OPTIONS");
  assert_int_equal(ccm_routes_match("POST", "/api/v1/metrics", a, &m), CCM_EMETHOD);
  assert_string_equal(m.allow, "GET, OPTIONS");
  assert_int_equal(ccm_routes_match("GET", "/api/v1/callback/", a, &m), CCM_EMETHOD);
  assert_string_equal(m.allow, "PUT, OPTIONS");
  assert_int_equal(ccm_routes_match("POST", "/api/v1/campaigns/5/", a, &m), CCM_EMETHOD);
  assert_int_equal(ccm_routes_match("PUT", "/health", a, &m), CCM_EMETHOD);
  /* Route comes before method: an unknown path with any method is 404. */
  assert_int_equal(ccm_routes_match("DELETE", "/nope/", a, &m), CCM_ENOTFOUND);
}

static void test_query_and_absolute_form(void **state) {
  struct ccm_arena *a = *state;
  struct ccm_route_match m;
  assert_int_equal(ccm_routes_match("GET", "/api/v1/campaigns/?limit=5&offset=2", a, &m), CCM_OK);
  assert_string_equal(m.path, "/api/v1/campaigns/");
  assert_string_equal(m.query, "limit=5&offset=2");
  assert_int_equal(ccm_routes_match("GET", "/api/v1/campaigns?", a, &m), CCM_OK);
  assert_string_equal(m.query, "");
  assert_int_equal(ccm_routes_match("GET", "/api/v1/metrics/#frag", a, &m), CCM_OK);
  assert_null(m.query);
  assert_int_equal(ccm_routes_match("GET", "http://localhost:8000/api/v1/metrics/", a, &m), CCM_OK);
  assert_string_equal(m.path, "/api/v1/metrics/");
}

static void test_percent_decoding(void **state) {
  struct ccm_arena *a = *state;
  struct ccm_route_match m;
  assert_int_equal(
      ccm_routes_match("GET", "/api/v1/calls/call_1_%2B1234567890_20250124103000_ab/", a, &m),
      CCM_OK);
  assert_string_equal(m.params[0], "call_1_+1234567890_20250124103000_ab");
  /* '+' stays '+', never a space. */
  assert_int_equal(ccm_routes_match("GET", "/api/v1/calls/call_1_+1234567890/", a, &m), CCM_OK);
  assert_string_equal(m.params[0], "call_1_+1234567890");
  /* An encoded '/' stays inside its segment. */
  assert_int_equal(ccm_routes_match("GET", "/api/v1/calls/a%2Fb/", a, &m), CCM_OK);
  assert_string_equal(m.params[0], "a/b");
  /* Malformed escapes are kept as they are. */
  assert_int_equal(ccm_routes_match("GET", "/api/v1/calls/a%zz%4/", a, &m), CCM_OK);
  assert_string_equal(m.params[0], "a%zz%4");
  /* Literal segments are compared decoded. */
  assert_int_equal(ccm_routes_match("GET", "/%61pi/v1/metrics/", a, &m), CCM_OK);
  /* A decoded NUL is kept (with its length) and refused when building. */
  assert_int_equal(ccm_routes_match("GET", "/api/v1/calls/a%00b/", a, &m), CCM_OK);
  assert_int_equal(m.param_lens[0], 3);
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  assert_int_equal(ccm_routes_build_request(&m, NULL, 0, a, &msg, &err), CCM_EINVAL);
  assert_string_equal(err.message, "Invalid call_id.");
  assert_string_equal(err.field, "call_id");
  size_t len = 0;
  char *d = ccm_routes_decode(a, "%e6%97%a5+%20x%", 15, &len);
  assert_non_null(d);
  assert_string_equal(d, "\xe6\x97\xa5+ x%");
  assert_int_equal(len, 7);
}

/* ----------------------------------------------------------- requests --- */

/* Matches and builds; returns the status and fills msg / err. */
static int build(struct ccm_arena *a, const char *method, const char *uri, const char *body,
                 ProtobufCMessage **msg, struct ccm_route_error *err) {
  struct ccm_route_match m;
  assert_int_equal(ccm_routes_match(method, uri, a, &m), CCM_OK);
  return ccm_routes_build_request(&m, body, body != NULL ? strlen(body) : 0, a, msg, err);
}

static void expect_400(struct ccm_arena *a, const char *method, const char *uri, const char *body,
                       const char *field, const char *message) {
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  assert_int_equal(build(a, method, uri, body, &msg, &err), CCM_EINVAL);
  assert_int_equal(err.status, CCM_EINVAL);
  assert_null(msg);
  if (field == NULL) {
    assert_null(err.field);
  } else {
    assert_non_null(err.field);
    assert_string_equal(err.field, field);
  }
  if (strncmp(message, "Malformed", 9) == 0) {
    assert_memory_equal(err.message, message, strlen(message));
  } else {
    assert_string_equal(err.message, message);
  }
}

static void test_numeric_path_params(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  assert_int_equal(build(a, "GET", "/api/v1/campaigns/12/", NULL, &msg, &err), CCM_OK);
  assert_int_equal(((Callmanager__V1__GetCampaignRequest *)msg)->id, 12);
  assert_int_equal(build(a, "GET", "/api/v1/campaigns/-3", NULL, &msg, &err), CCM_OK);
  assert_int_equal(((Callmanager__V1__GetCampaignRequest *)msg)->id, -3);
  assert_int_equal(build(a, "GET", "/api/v1/campaigns/9223372036854775807/", NULL, &msg, &err),
                   CCM_OK);
  assert_int_equal(((Callmanager__V1__GetCampaignRequest *)msg)->id, INT64_MAX);
  const char *bad[] = {"/api/v1/campaigns/abc/",
                       "/api/v1/campaigns/1a/",
                       "/api/v1/campaigns/1.0/",
                       "/api/v1/campaigns/+1/",
                       "/api/v1/campaigns/-/",
                       "/api/v1/campaigns/%201/",
                       "/api/v1/campaigns/9223372036854775808/",
                       "/api/v1/campaigns/99999999999999999999999/"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    expect_400(a, "GET", bad[i], NULL, "id", "Campaign id must be an integer.");
  }
}

static void test_query_params(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  assert_int_equal(build(a, "GET", "/api/v1/campaigns/", NULL, &msg, &err), CCM_OK);
  Callmanager__V1__ListCampaignsRequest *req = (void *)msg;
  assert_int_equal(req->_limit_case, 0);
  assert_int_equal(req->offset, 0);
  assert_int_equal(
      build(a, "GET", "/api/v1/campaigns/?limit=5&offset=2&x=y&flag", NULL, &msg, &err), CCM_OK);
  req = (void *)msg;
  assert_int_not_equal(req->_limit_case, 0);
  assert_int_equal(req->limit, 5);
  assert_int_equal(req->offset, 2);
  assert_int_equal(build(a, "GET", "/api/v1/campaigns?limit=0&limit=%33", NULL, &msg, &err),
                   CCM_OK);
  assert_int_equal(((Callmanager__V1__ListCampaignsRequest *)msg)->limit, 3);
  expect_400(a, "GET", "/api/v1/campaigns/?limit=abc", NULL, "limit",
             "limit must be a non-negative integer.");
  expect_400(a, "GET", "/api/v1/campaigns/?limit=", NULL, "limit",
             "limit must be a non-negative integer.");
  expect_400(a, "GET", "/api/v1/campaigns/?offset=1.5", NULL, "offset",
             "offset must be a non-negative integer.");
  expect_400(a, "GET", "/api/v1/campaigns/?offset=10&limit=2e3", NULL, "limit",
             "limit must be a non-negative integer.");
  /* Negative numbers are numeric: the server answers them. */
  assert_int_equal(build(a, "GET", "/api/v1/campaigns/?limit=-1", NULL, &msg, &err), CCM_OK);
}

static void test_bodies(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  const char *cc = "/api/v1/campaigns/";
  assert_int_equal(build(a, "POST", cc,
                         "{\"name\": \"Marketing Campaign Q1\", \"description\": "
                         "\"Cold calling for Q1 leads\"}",
                         &msg, &err),
                   CCM_OK);
  assert_string_equal(((Callmanager__V1__CreateCampaignRequest *)msg)->name,
                      "Marketing Campaign Q1");
  /* No body (or only whitespace) means no fields: the server says what is missing. */
  assert_int_equal(build(a, "POST", cc, NULL, &msg, &err), CCM_OK);
  assert_int_equal(build(a, "POST", cc, " \r\n", &msg, &err), CCM_OK);
  expect_400(a, "POST", cc, "{", NULL, "Malformed JSON in request body");
  expect_400(a, "POST", cc, "{\"name\": }", NULL, "Malformed JSON in request body");
  expect_400(a, "POST", cc, "{\"name\": \"a\"} x", NULL, "Malformed JSON in request body");
  expect_400(a, "POST", cc, "{\"name\":\"a\",\"name\":\"b\"}", NULL,
             "Malformed JSON in request body");
  expect_400(a, "POST", cc, "{\"name\":\"a\\u0000b\"}", NULL, "Malformed JSON in request body");
  expect_400(a, "POST", cc, "{\"name\":\"\xff\"}", NULL, "Malformed JSON in request body");
  expect_400(a, "POST", "/api/v1/phone-numbers/", "{\"campaign_id\": 99999999999999999999}", NULL,
             "Malformed JSON in request body");
  expect_400(a, "POST", cc, "[{\"name\":\"a\"}]", NULL, "Request body must be a JSON object.");
  expect_400(a, "POST", cc, "\"name\"", NULL, "Request body must be a JSON object.");
  expect_400(a, "POST", cc, "null", NULL, "Request body must be a JSON object.");
  expect_400(a, "POST", cc, "{\"name\":\"a\",\"owner\":\"me\"}", "owner", "Unknown field: owner.");
  expect_400(a, "POST", cc, "{\"name\":\"a\",\"is_active\":\"yes\"}", "is_active",
             "is_active must be a boolean.");
  expect_400(a, "POST", "/api/v1/initiate-call/", "{\"phone_number\":\"+1\",\"campaign_id\":\"1\"}",
             "campaign_id", "campaign_id must be an integer.");
}

static void test_string_limits(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  /* description: 2000 code points (multi-byte ones count once). */
  char *body = malloc(64 + 2001 * 2);
  assert_non_null(body);
  strcpy(body, "{\"name\":\"a\",\"description\":\"");
  for (int i = 0; i < 2000; i++) strcat(body, "\xc3\xa9");
  strcat(body, "\"}");
  assert_int_equal(build(a, "POST", "/api/v1/campaigns/", body, &msg, &err), CCM_OK);
  strcpy(body, "{\"name\":\"a\",\"description\":\"");
  for (int i = 0; i < 2001; i++) strcat(body, "x");
  strcat(body, "\"}");
  expect_400(a, "POST", "/api/v1/campaigns/", body, "description",
             "description must be at most 2000 characters of valid UTF-8.");
  /* phone_number: 64 bytes. */
  strcpy(body, "{\"campaign_id\":1,\"phone_number\":\"+");
  for (int i = 0; i < 64; i++) strcat(body, "1");
  strcat(body, "\"}");
  expect_400(a, "POST", "/api/v1/initiate-call/", body, "phone_number",
             "Invalid phone number format. Must start with + and contain digits.");
  /* call_id / external_call_id: 128 characters. */
  strcpy(body, "{\"status\":\"PICKED\",\"call_id\":\"");
  for (int i = 0; i < 129; i++) strcat(body, "c");
  strcat(body, "\"}");
  expect_400(a, "PUT", "/api/v1/callback/", body, "call_id",
             "call_id must be at most 128 characters.");
  strcpy(body, "{\"status\":\"PICKED\",\"call_id\":\"c\",\"external_call_id\":\"");
  for (int i = 0; i < 129; i++) strcat(body, "e");
  strcat(body, "\"}");
  expect_400(a, "PUT", "/api/v1/callback/", body, "external_call_id",
             "external_call_id must be at most 128 characters.");
  free(body);
}

static void test_callback_body(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  const char *cb = "/api/v1/callback/";
  assert_int_equal(build(a, "PUT", cb,
                         "{\"call_id\":\"c1\",\"status\":\"DISCONNECTED\",\"call_duration\":5,"
                         "\"provider_field\":{\"a\":1},\"sip_code\":486}",
                         &msg, &err),
                   CCM_OK);
  Callmanager__V1__ProcessCallbackRequest *req = (void *)msg;
  assert_int_equal(req->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_DISCONNECTED);
  assert_int_equal(req->call_duration, 5);
  const char *invalid = "Invalid status. Must be one of: PICKED, DISCONNECTED, RNR, FAILED";
  expect_400(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":\"BUSY\"}", "status", invalid);
  expect_400(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":3}", "status", invalid);
  expect_400(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":\"PICKED\",\"call_duration\":\"5\"}",
             "call_duration", "call_duration must be a non-negative integer.");
  expect_400(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":\"PICKED\",\"call_duration\":1.5}",
             "call_duration", "call_duration must be a non-negative integer.");
  expect_400(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":\"PICKED\",\"timestamp\":17}",
             "timestamp", "timestamp must be a string.");
  /* A status the enum knows but a callback may not carry is the server's to refuse. */
  assert_int_equal(build(a, "PUT", cb, "{\"call_id\":\"c1\",\"status\":\"INITIATED\"}", &msg, &err),
                   CCM_OK);
}

static void test_health_request(void **state) {
  struct ccm_arena *a = *state;
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  assert_int_equal(build(a, "GET", "/health/", NULL, &msg, &err), CCM_OK);
  assert_string_equal(((Grpc__Health__V1__HealthCheckRequest *)msg)->service,
                      "callmanager.v1.CallManager");
  /* The OpenAPI route builds no request. */
  assert_int_equal(build(a, "GET", "/api/v1/openapi.json", NULL, &msg, &err), CCM_OK);
  assert_null(msg);
}

/* ----------------------------------------------------------- responses --- */

static const struct ccm_route *route_of(struct ccm_arena *a, const char *method, const char *uri) {
  struct ccm_route_match m;
  assert_int_equal(ccm_routes_match(method, uri, a, &m), CCM_OK);
  return m.route;
}

static void test_response_shapes(void **state) {
  struct ccm_arena *a = *state;
  Callmanager__V1__Campaign c = CALLMANAGER__V1__CAMPAIGN__INIT;
  c.id = 1;
  c.name = "Q1";
  c.is_active = true;
  Callmanager__V1__CreateCampaignResponse created = CALLMANAGER__V1__CREATE_CAMPAIGN_RESPONSE__INIT;
  created.campaign = &c;
  json_t *j = ccm_routes_response_json(route_of(a, "POST", "/api/v1/campaigns/"), &created.base);
  assert_true(json_is_object(j));
  assert_int_equal(json_integer_value(json_object_get(j, "id")), 1);
  assert_true(json_is_null(json_object_get(j, "description")));
  assert_null(json_object_get(j, "campaign"));
  json_decref(j);

  Callmanager__V1__Campaign *list[] = {&c, &c};
  Callmanager__V1__ListCampaignsResponse listed = CALLMANAGER__V1__LIST_CAMPAIGNS_RESPONSE__INIT;
  listed.n_campaigns = 2;
  listed.campaigns = list;
  j = ccm_routes_response_json(route_of(a, "GET", "/api/v1/campaigns/"), &listed.base);
  assert_true(json_is_array(j));
  assert_int_equal(json_array_size(j), 2);
  json_decref(j);
  listed.n_campaigns = 0;
  j = ccm_routes_response_json(route_of(a, "GET", "/api/v1/campaigns/"), &listed.base);
  assert_true(json_is_array(j));
  assert_int_equal(json_array_size(j), 0);
  json_decref(j);

  char *numbers[] = {"+1234567890", "+1234567891"};
  char *errors[] = {"Invalid phone number: abc"};
  Callmanager__V1__AddPhoneNumbersResponse added =
      CALLMANAGER__V1__ADD_PHONE_NUMBERS_RESPONSE__INIT;
  added.success = true;
  added.campaign_id = 1;
  added.added_count = 2;
  added.n_phone_numbers = 2;
  added.phone_numbers = numbers;
  added.n_errors = 1;
  added.errors = errors;
  j = ccm_routes_response_json(route_of(a, "POST", "/api/v1/phone-numbers/"), &added.base);
  char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
  assert_string_equal(text,
                      "{\"success\":true,\"campaign_id\":1,\"added_count\":2,\"phone_numbers\":"
                      "[\"+1234567890\",\"+1234567891\"],\"duplicate_count\":0,\"errors\":"
                      "[\"Invalid phone number: abc\"],\"created_count\":2,\"created_numbers\":"
                      "[\"+1234567890\",\"+1234567891\"]}");
  free(text);
  json_decref(j);

  Callmanager__V1__Call call = CALLMANAGER__V1__CALL__INIT;
  call.call_id = "c1";
  Callmanager__V1__GetCallResponse got = CALLMANAGER__V1__GET_CALL_RESPONSE__INIT;
  got.call = &call;
  j = ccm_routes_response_json(route_of(a, "GET", "/api/v1/calls/c1/"), &got.base);
  assert_string_equal(json_string_value(json_object_get(j, "call_id")), "c1");
  assert_true(json_is_array(json_object_get(j, "attempts")));
  json_decref(j);

  Callmanager__V1__InitiateCallResponse init = CALLMANAGER__V1__INITIATE_CALL_RESPONSE__INIT;
  init.success = true;
  init.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_INITIATED;
  j = ccm_routes_response_json(route_of(a, "POST", "/api/v1/initiate-call/"), &init.base);
  assert_string_equal(json_string_value(json_object_get(j, "status")), "INITIATED");
  assert_int_equal(json_object_size(j), 9);
  json_decref(j);
}

static void test_success_statuses(void **state) {
  struct ccm_arena *a = *state;
  assert_int_equal(route_of(a, "POST", "/api/v1/campaigns/")->success_status, 201);
  assert_int_equal(route_of(a, "GET", "/api/v1/campaigns/")->success_status, 200);
  assert_int_equal(route_of(a, "GET", "/api/v1/campaigns/1/")->success_status, 200);
  assert_int_equal(route_of(a, "POST", "/api/v1/phone-numbers/")->success_status, 201);
  assert_int_equal(route_of(a, "POST", "/api/v1/initiate-call/")->success_status, 201);
  assert_int_equal(route_of(a, "PUT", "/api/v1/callback/")->success_status, 200);
  assert_int_equal(route_of(a, "GET", "/api/v1/metrics/")->success_status, 200);
  assert_int_equal(route_of(a, "GET", "/api/v1/calls/x/")->success_status, 200);
  assert_false(route_of(a, "GET", "/health/")->auth);
  assert_false(route_of(a, "GET", "/api/v1/openapi.json")->auth);
  for (size_t i = 0; i < ccm_routes_count; i++) {
    if (ccm_routes[i].kind == CCM_ROUTE_RPC) assert_true(ccm_routes[i].auth);
  }
}

/* ------------------------------------------------------------ OpenAPI --- */

static json_t *load_openapi(void) {
  const char *root = getenv("CCM_SOURCE_DIR");
  if (root == NULL) root = ".";
  char path[4096];
  snprintf(path, sizeof path, "%s/docs/openapi.yaml", root);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    print_error("cannot open %s (set CCM_SOURCE_DIR)\n", path);
    fail();
  }
  static char text[1 << 20];
  size_t len = fread(text, 1, sizeof text, f);
  fclose(f);
  assert_true(len < sizeof text);
  char err[256];
  json_t *doc = ccm_gateway_yaml_to_json(text, len, err, sizeof err);
  if (doc == NULL) {
    print_error("%s: %s\n", path, err);
    fail();
  }
  return doc;
}

static char *lower(const char *s, char *out, size_t cap) {
  size_t i = 0;
  for (; s[i] != '\0' && i + 1 < cap; i++)
    out[i] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
  out[i] = '\0';
  return out;
}

static void test_openapi_matches_route_table(void **state) {
  (void)state;
  json_t *doc = load_openapi();
  assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.0.3");
  json_t *paths = json_object_get(doc, "paths");
  assert_true(json_is_object(paths));
  /* Every route is documented with its method... */
  for (size_t i = 0; i < ccm_routes_count; i++) {
    char method[16];
    json_t *item = json_object_get(paths, ccm_routes[i].pattern);
    if (item == NULL ||
        json_object_get(item, lower(ccm_routes[i].method, method, sizeof method)) == NULL) {
      print_error("%s %s is not in docs/openapi.yaml\n", ccm_routes[i].method,
                  ccm_routes[i].pattern);
      fail();
    }
  }
  /* ...and every documented operation is a route. */
  static const char *const verbs[] = {"get",     "put",  "post",  "delete",
                                      "options", "head", "patch", "trace"};
  const char *path;
  json_t *item;
  size_t operations = 0;
  json_object_foreach(paths, path, item) {
    for (size_t v = 0; v < sizeof verbs / sizeof verbs[0]; v++) {
      if (json_object_get(item, verbs[v]) == NULL) continue;
      operations++;
      bool found = false;
      for (size_t i = 0; i < ccm_routes_count && !found; i++) {
        char method[16];
        found = strcmp(ccm_routes[i].pattern, path) == 0 &&
                strcmp(lower(ccm_routes[i].method, method, sizeof method), verbs[v]) == 0;
      }
      if (!found) {
        print_error("%s %s is documented but not routed\n", verbs[v], path);
        fail();
      }
    }
  }
  assert_int_equal(operations, ccm_routes_count);
  /* Token security everywhere except health and the document itself. */
  json_t *scheme = json_object_get(
      json_object_get(json_object_get(doc, "components"), "securitySchemes"), "TokenAuth");
  assert_string_equal(json_string_value(json_object_get(scheme, "name")), "X-Auth-Token");
  for (size_t i = 0; i < ccm_routes_count; i++) {
    char method[16];
    json_t *op = json_object_get(json_object_get(paths, ccm_routes[i].pattern),
                                 lower(ccm_routes[i].method, method, sizeof method));
    json_t *security = json_object_get(op, "security");
    bool open = json_is_array(security) && json_array_size(security) == 0;
    assert_int_equal(open, !ccm_routes[i].auth);
  }
  json_decref(doc);
}

/* Checks every "$ref" of node against the document. */
static void check_refs(json_t *doc, json_t *node) {
  if (json_is_array(node)) {
    size_t i;
    json_t *v;
    json_array_foreach(node, i, v) check_refs(doc, v);
    return;
  }
  if (!json_is_object(node)) return;
  const char *key;
  json_t *v;
  json_object_foreach(node, key, v) {
    if (strcmp(key, "$ref") == 0) {
      const char *ref = json_string_value(v);
      assert_non_null(ref);
      assert_memory_equal(ref, "#/", 2);
      char copy[256];
      snprintf(copy, sizeof copy, "%s", ref + 2);
      json_t *at = doc;
      for (char *save = NULL, *part = strtok_r(copy, "/", &save); part != NULL;
           part = strtok_r(NULL, "/", &save)) {
        at = json_object_get(at, part);
      }
      if (at == NULL) {
        print_error("dangling $ref %s\n", ref);
        fail();
      }
    } else {
      check_refs(doc, v);
    }
  }
}

static void test_openapi_refs_resolve(void **state) {
  (void)state;
  json_t *doc = load_openapi();
  check_refs(doc, doc);
  /* The response schemas name the fields of SPEC 4.2. */
  json_t *schemas = json_object_get(json_object_get(doc, "components"), "schemas");
  json_t *campaign = json_object_get(json_object_get(schemas, "Campaign"), "properties");
  const char *fields[] = {"id",         "name",       "description", "is_active",
                          "created_at", "updated_at", "phone_count"};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    assert_non_null(json_object_get(campaign, fields[i]));
  }
  json_t *avg = json_object_get(
      json_object_get(json_object_get(schemas, "DailyMetrics"), "properties"), "avg_call_duration");
  assert_string_equal(json_string_value(json_object_get(avg, "type")), "number");
  assert_true(json_is_real(json_object_get(avg, "example")));
  json_decref(doc);
}

static void test_yaml_scalars(void **state) {
  (void)state;
  const char *yaml =
      "a: 1\nb: -2\nc: 1.5\nd: true\ne: null\nf: ~\ng: '1'\nh: \"true\"\ni: text\n"
      "j: [1, x]\nk: {}\n\"200\": ok\nl: 1e3\nm: 0.10.1\n";
  char err[128];
  json_t *j = ccm_gateway_yaml_to_json(yaml, strlen(yaml), err, sizeof err);
  assert_non_null(j);
  assert_int_equal(json_integer_value(json_object_get(j, "a")), 1);
  assert_int_equal(json_integer_value(json_object_get(j, "b")), -2);
  assert_true(json_is_real(json_object_get(j, "c")));
  assert_true(json_is_true(json_object_get(j, "d")));
  assert_true(json_is_null(json_object_get(j, "e")));
  assert_true(json_is_null(json_object_get(j, "f")));
  assert_string_equal(json_string_value(json_object_get(j, "g")), "1");
  assert_string_equal(json_string_value(json_object_get(j, "h")), "true");
  assert_string_equal(json_string_value(json_object_get(j, "i")), "text");
  assert_int_equal(json_array_size(json_object_get(j, "j")), 2);
  assert_true(json_is_object(json_object_get(j, "k")));
  assert_string_equal(json_string_value(json_object_get(j, "200")), "ok");
  assert_true(json_is_real(json_object_get(j, "l")));
  assert_string_equal(json_string_value(json_object_get(j, "m")), "0.10.1");
  json_decref(j);
  const char *broken = "a: [1, 2\nb: c\n";
  assert_null(ccm_gateway_yaml_to_json(broken, strlen(broken), err, sizeof err));
  assert_non_null(strstr(err, "line"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_match_every_endpoint, setup, teardown),
      cmocka_unit_test_setup_teardown(test_trailing_slash_optional, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_paths, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_method, setup, teardown),
      cmocka_unit_test_setup_teardown(test_query_and_absolute_form, setup, teardown),
      cmocka_unit_test_setup_teardown(test_percent_decoding, setup, teardown),
      cmocka_unit_test_setup_teardown(test_numeric_path_params, setup, teardown),
      cmocka_unit_test_setup_teardown(test_query_params, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bodies, setup, teardown),
      cmocka_unit_test_setup_teardown(test_string_limits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_callback_body, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_request, setup, teardown),
      cmocka_unit_test_setup_teardown(test_response_shapes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_success_statuses, setup, teardown),
      cmocka_unit_test(test_openapi_matches_route_table),
      cmocka_unit_test(test_openapi_refs_resolve),
      cmocka_unit_test(test_yaml_scalars),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
