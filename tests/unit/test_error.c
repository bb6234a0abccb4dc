/* Unit tests for lib/ccm_error: the error table of SPEC 4.1 (gRPC status,
 * HTTP status, REST code), name/reason round trips and out-of-range input. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ccm_error.h"

/* Numeric gRPC status codes (grpc_status_code), spelled out so the test does
 * not depend on the gRPC headers. */
enum {
  G_OK = 0,
  G_CANCELLED = 1,
  G_UNKNOWN = 2,
  G_INVALID_ARGUMENT = 3,
  G_DEADLINE_EXCEEDED = 4,
  G_NOT_FOUND = 5,
  G_ALREADY_EXISTS = 6,
  G_PERMISSION_DENIED = 7,
  G_RESOURCE_EXHAUSTED = 8,
  G_FAILED_PRECONDITION = 9,
  G_ABORTED = 10,
  G_OUT_OF_RANGE = 11,
  G_UNIMPLEMENTED = 12,
  G_INTERNAL = 13,
  G_UNAVAILABLE = 14,
  G_DATA_LOSS = 15,
  G_UNAUTHENTICATED = 16,
};

/* The whole table as the header defines it (name, gRPC, HTTP, REST code). */
struct row {
  int status;
  const char *name;
  int grpc;
  int http;
  const char *code;
};

static const struct row rows[] = {
    {CCM_OK, "ok", G_OK, 200, "ok"},
    {CCM_EINVAL, "invalid_argument", G_INVALID_ARGUMENT, 400, "bad_request"},
    {CCM_EUNAUTH, "unauthenticated", G_UNAUTHENTICATED, 401, "unauthorized"},
    {CCM_EFORBIDDEN, "permission_denied", G_PERMISSION_DENIED, 403, "forbidden"},
    {CCM_ENOTFOUND, "not_found", G_NOT_FOUND, 404, "not_found"},
    {CCM_EMETHOD, "method_not_allowed", G_UNIMPLEMENTED, 405, "method_not_allowed"},
    {CCM_ECONFLICT, "already_exists", G_ALREADY_EXISTS, 409, "conflict"},
    {CCM_ETOOLARGE, "payload_too_large", G_RESOURCE_EXHAUSTED, 413, "payload_too_large"},
    {CCM_EPRECOND, "failed_precondition", G_FAILED_PRECONDITION, 400, "failed_precondition"},
    {CCM_EEXHAUSTED, "resource_exhausted", G_RESOURCE_EXHAUSTED, 429, "too_many_requests"},
    {CCM_EUNIMPL, "unimplemented", G_UNIMPLEMENTED, 501, "not_implemented"},
    {CCM_EUNAVAILABLE, "unavailable", G_UNAVAILABLE, 503, "service_unavailable"},
    {CCM_ETIMEOUT, "deadline_exceeded", G_DEADLINE_EXCEEDED, 504, "gateway_timeout"},
    {CCM_ENOMEM, "out_of_memory", G_INTERNAL, 500, "internal_server_error"},
    {CCM_EIO, "io_error", G_INTERNAL, 500, "internal_server_error"},
    {CCM_EINTERNAL, "internal", G_INTERNAL, 500, "internal_server_error"},
};
#define NROWS (sizeof rows / sizeof rows[0])

/* SPEC 4.1: what the gateway answers for each gRPC status (0..16). */
struct grpc_row {
  int grpc;
  int http;
  const char *code;
};

static const struct grpc_row grpc_rows[17] = {
    {G_OK, 200, "ok"},
    {G_CANCELLED, 500, "internal_server_error"}, /* "other" */
    {G_UNKNOWN, 500, "internal_server_error"},
    {G_INVALID_ARGUMENT, 400, "bad_request"},
    {G_DEADLINE_EXCEEDED, 504, "gateway_timeout"},
    {G_NOT_FOUND, 404, "not_found"},
    {G_ALREADY_EXISTS, 409, "conflict"},
    {G_PERMISSION_DENIED, 403, "forbidden"},
    {G_RESOURCE_EXHAUSTED, 429, "too_many_requests"},
    {G_FAILED_PRECONDITION, 400, "failed_precondition"},
    {G_ABORTED, 500, "internal_server_error"},      /* "other" */
    {G_OUT_OF_RANGE, 500, "internal_server_error"}, /* "other" */
    {G_UNIMPLEMENTED, 501, "not_implemented"},
    {G_INTERNAL, 500, "internal_server_error"},
    {G_UNAVAILABLE, 503, "service_unavailable"},
    {G_DATA_LOSS, 500, "internal_server_error"}, /* "other" */
    {G_UNAUTHENTICATED, 401, "unauthorized"},
};

static const int out_of_range[] = {
    -1, -2, -1000, INT_MIN, INT_MIN + 1, CCM_STATUS_COUNT, CCM_STATUS_COUNT + 1, 1000, INT_MAX};
#define NOOR (sizeof out_of_range / sizeof out_of_range[0])

static void test_table_is_complete(void **state) {
  (void)state;
  /* Every status of the enum is covered by the expectations above, once. */
  assert_int_equal(NROWS, CCM_STATUS_COUNT);
  for (size_t i = 0; i < NROWS; i++) assert_int_equal(rows[i].status, (int)i);
  assert_int_equal(CCM_OK, 0);
}

static void test_every_row(void **state) {
  (void)state;
  for (size_t i = 0; i < NROWS; i++) {
    const struct row *r = &rows[i];
    print_message("row %s\n", r->name);
    assert_string_equal(ccm_error_name(r->status), r->name);
    assert_int_equal(ccm_error_grpc_status(r->status), r->grpc);
    assert_int_equal(ccm_error_http_status(r->status), r->http);
    assert_string_equal(ccm_error_rest_code(r->status), r->code);
    const char *msg = ccm_error_message(r->status);
    assert_non_null(msg);
    assert_true(strlen(msg) > 0);
    assert_null(strchr(msg, '\n'));
  }
}

static void test_name_parse_round_trip(void **state) {
  (void)state;
  for (int s = 0; s < CCM_STATUS_COUNT; s++) {
    const char *name = ccm_error_name(s);
    assert_non_null(name);
    assert_int_equal(ccm_error_parse(name), s);
    /* names are unique */
    for (int t = 0; t < s; t++) assert_string_not_equal(ccm_error_name(t), name);
  }
  assert_int_equal(ccm_error_parse(NULL), -1);
  assert_int_equal(ccm_error_parse(""), -1);
  assert_int_equal(ccm_error_parse("unknown"), -1);
  assert_int_equal(ccm_error_parse("NOT_FOUND"), -1); /* case matters */
  assert_int_equal(ccm_error_parse("not_found "), -1);
  assert_int_equal(ccm_error_parse("not_foun"), -1);
  assert_int_equal(ccm_error_parse("bad_request"), -1); /* a REST code, not a name */
}

/* SPEC 4.1 human messages that clients see verbatim. */
static void test_spec_messages(void **state) {
  (void)state;
  assert_string_equal(ccm_error_message(CCM_EUNAVAILABLE),
                      "Service temporarily unavailable. Please retry.");
  assert_string_equal(ccm_error_message(CCM_EUNAUTH),
                      "Authentication credentials were not provided or are invalid.");
  /* No internals in the message of a 500. */
  const int internal[] = {CCM_EINTERNAL, CCM_EIO, CCM_ENOMEM};
  for (size_t i = 0; i < sizeof internal / sizeof internal[0]; i++) {
    assert_string_equal(ccm_error_message(internal[i]), "Internal server error.");
  }
}

static void test_from_grpc_all_codes(void **state) {
  (void)state;
  for (int g = 0; g <= 16; g++) {
    const struct grpc_row *e = &grpc_rows[g];
    assert_int_equal(e->grpc, g);
    int s = ccm_error_from_grpc(g);
    print_message("grpc %d -> %s\n", g, ccm_error_name(s));
    assert_true(s >= 0 && s < CCM_STATUS_COUNT);
    assert_int_equal(ccm_error_http_status(s), e->http);
    assert_string_equal(ccm_error_rest_code(s), e->code);
  }
  /* The canonical statuses. */
  assert_int_equal(ccm_error_from_grpc(G_OK), CCM_OK);
  assert_int_equal(ccm_error_from_grpc(G_INVALID_ARGUMENT), CCM_EINVAL);
  assert_int_equal(ccm_error_from_grpc(G_UNAUTHENTICATED), CCM_EUNAUTH);
  assert_int_equal(ccm_error_from_grpc(G_PERMISSION_DENIED), CCM_EFORBIDDEN);
  assert_int_equal(ccm_error_from_grpc(G_NOT_FOUND), CCM_ENOTFOUND);
  assert_int_equal(ccm_error_from_grpc(G_ALREADY_EXISTS), CCM_ECONFLICT);
  assert_int_equal(ccm_error_from_grpc(G_FAILED_PRECONDITION), CCM_EPRECOND);
  assert_int_equal(ccm_error_from_grpc(G_RESOURCE_EXHAUSTED), CCM_EEXHAUSTED);
  assert_int_equal(ccm_error_from_grpc(G_UNAVAILABLE), CCM_EUNAVAILABLE);
  assert_int_equal(ccm_error_from_grpc(G_DEADLINE_EXCEEDED), CCM_ETIMEOUT);
  assert_int_equal(ccm_error_from_grpc(G_UNIMPLEMENTED), CCM_EUNIMPL);
  assert_int_equal(ccm_error_from_grpc(G_INTERNAL), CCM_EINTERNAL);
  assert_int_equal(ccm_error_from_grpc(G_UNKNOWN), CCM_EINTERNAL);
  assert_int_equal(ccm_error_from_grpc(G_CANCELLED), CCM_EINTERNAL);
  assert_int_equal(ccm_error_from_grpc(G_ABORTED), CCM_EINTERNAL);
  assert_int_equal(ccm_error_from_grpc(G_OUT_OF_RANGE), CCM_EINTERNAL);
  assert_int_equal(ccm_error_from_grpc(G_DATA_LOSS), CCM_EINTERNAL);
}

static void test_from_grpc_out_of_range(void **state) {
  (void)state;
  const int bad[] = {-1, -16, 17, 18, 100, 1000, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int s = ccm_error_from_grpc(bad[i]);
    assert_int_equal(s, CCM_EINTERNAL);
    assert_int_equal(ccm_error_http_status(s), 500);
    assert_string_equal(ccm_error_rest_code(s), "internal_server_error");
  }
}

/* A status that the server sends over gRPC maps back, through the gateway's
 * gRPC-status mapping, onto the same gRPC status (so the gateway can pick
 * the REST answer from the gRPC status alone). */
static void test_grpc_round_trip(void **state) {
  (void)state;
  for (int s = 0; s < CCM_STATUS_COUNT; s++) {
    int g = ccm_error_grpc_status(s);
    assert_true(g >= 0 && g <= 16);
    assert_int_equal(ccm_error_grpc_status(ccm_error_from_grpc(g)), g);
  }
  /* Statuses whose gRPC code is canonical give the same HTTP answer both ways. */
  const int wire[] = {CCM_OK,        CCM_EINVAL,   CCM_EUNAUTH,    CCM_EFORBIDDEN, CCM_ENOTFOUND,
                      CCM_ECONFLICT, CCM_EPRECOND, CCM_EEXHAUSTED, CCM_EUNIMPL,    CCM_EUNAVAILABLE,
                      CCM_ETIMEOUT,  CCM_EIO,      CCM_EINTERNAL};
  for (size_t i = 0; i < sizeof wire / sizeof wire[0]; i++) {
    int s = wire[i];
    int back = ccm_error_from_grpc(ccm_error_grpc_status(s));
    assert_int_equal(ccm_error_http_status(back), ccm_error_http_status(s));
    assert_string_equal(ccm_error_rest_code(back), ccm_error_rest_code(s));
  }
}

static void test_out_of_range_status(void **state) {
  (void)state;
  for (size_t i = 0; i < NOOR; i++) {
    int s = out_of_range[i];
    assert_string_equal(ccm_error_name(s), "unknown");
    assert_non_null(ccm_error_message(s));
    assert_string_equal(ccm_error_message(s), "Internal server error.");
    assert_int_equal(ccm_error_grpc_status(s), G_INTERNAL);
    assert_int_equal(ccm_error_http_status(s), 500);
    assert_string_equal(ccm_error_rest_code(s), "internal_server_error");
  }
}

static void test_reasons(void **state) {
  (void)state;
  static const struct {
    int reason;
    const char *name;
  } reasons[] = {
      {CCM_REASON_NONE, ""},
      {CCM_REASON_DUPLICATE_CALL, "duplicate_call"},
      {CCM_REASON_CONCURRENCY_LIMIT, "concurrency_limit"},
      {CCM_REASON_IDEMPOTENCY_MISMATCH, "idempotency_mismatch"},
      {CCM_REASON_IDEMPOTENCY_IN_PROGRESS, "idempotency_in_progress"},
      {CCM_REASON_INVALID_FIELD, "invalid_field"},
      {CCM_REASON_DEPENDENCY_DOWN, "dependency_down"},
  };
  assert_int_equal(sizeof reasons / sizeof reasons[0], CCM_REASON_COUNT);
  assert_int_equal(CCM_REASON_NONE, 0);
  for (size_t i = 0; i < CCM_REASON_COUNT; i++) {
    assert_int_equal(reasons[i].reason, (int)i);
    assert_string_equal(ccm_reason_name(reasons[i].reason), reasons[i].name);
    assert_int_equal(ccm_reason_parse(reasons[i].name), reasons[i].reason);
    assert_int_equal(ccm_reason_parse(ccm_reason_name((int)i)), (int)i);
  }
  /* Unknown and out-of-range input never crashes. */
  assert_int_equal(ccm_reason_parse(NULL), CCM_REASON_NONE);
  assert_int_equal(ccm_reason_parse(""), CCM_REASON_NONE);
  assert_int_equal(ccm_reason_parse("DUPLICATE_CALL"), CCM_REASON_NONE);
  assert_int_equal(ccm_reason_parse("duplicate_call "), CCM_REASON_NONE);
  assert_int_equal(ccm_reason_parse("no_such_reason"), CCM_REASON_NONE);
  const int bad[] = {-1, CCM_REASON_COUNT, CCM_REASON_COUNT + 1, 1000, INT_MIN, INT_MAX};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_non_null(ccm_reason_name(bad[i]));
    assert_string_equal(ccm_reason_name(bad[i]), "");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table_is_complete),
      cmocka_unit_test(test_every_row),
      cmocka_unit_test(test_name_parse_round_trip),
      cmocka_unit_test(test_spec_messages),
      cmocka_unit_test(test_from_grpc_all_codes),
      cmocka_unit_test(test_from_grpc_out_of_range),
      cmocka_unit_test(test_grpc_round_trip),
      cmocka_unit_test(test_out_of_range_status),
      cmocka_unit_test(test_reasons),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
