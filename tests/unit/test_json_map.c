/* Unit tests for gateway/ccm_json_map: JSON -> protobuf-c (types, nulls,
 * optional oneofs, enums by name, repeated and nested fields, unknown
 * fields, Unicode, integer ranges) and protobuf-c -> JSON (every field,
 * null for unset optional fields, enum names, int64 and double numbers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_arena.h"
#include "ccm_error.h"
#include "ccm_json_map.h"

#define ARENA_MAX (4u * 1024u * 1024u)

struct fixture {
  struct ccm_arena arena;
  struct ccm_json_error err;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof *f);
  if (f == NULL) return -1;
  ccm_arena_init(&f->arena, ARENA_MAX);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  ccm_arena_free(&f->arena);
  free(f);
  return 0;
}

/* Parses text and maps it onto desc; returns the status. */
static int map_text(struct fixture *f, const char *text, const ProtobufCMessageDescriptor *desc,
                    bool ignore_unknown, ProtobufCMessage **out) {
  json_error_t jerr;
  json_t *json = json_loads(text, JSON_DECODE_ANY, &jerr);
  assert_non_null(json);
  struct ccm_json_map_options opts = {.ignore_unknown = ignore_unknown};
  int rc = ccm_json_to_message(json, desc, &opts, &f->arena, out, &f->err);
  json_decref(json);
  return rc;
}

/* Expects a 400 on field with exactly message. */
static void expect_error(struct fixture *f, const char *text,
                         const ProtobufCMessageDescriptor *desc, const char *field,
                         const char *message) {
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f, text, desc, false, &msg), CCM_EINVAL);
  assert_null(msg);
  if (field == NULL) {
    assert_null(f->err.field);
  } else {
    assert_non_null(f->err.field);
    assert_string_equal(f->err.field, field);
  }
  assert_string_equal(f->err.message, message);
}

/* Returns the compact JSON text of msg (caller frees). */
static char *to_text(const ProtobufCMessage *msg) {
  json_t *json = ccm_json_from_message(msg);
  assert_non_null(json);
  char *text = json_dumps(json, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(json);
  assert_non_null(text);
  return text;
}

/* -------------------------------------------------------- JSON -> proto --- */

static void test_create_campaign_fields(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f, "{\"name\":\"Q1\",\"description\":\"Cold\",\"is_active\":false}",
                            &callmanager__v1__create_campaign_request__descriptor, false, &msg),
                   CCM_OK);
  Callmanager__V1__CreateCampaignRequest *req = (void *)msg;
  assert_string_equal(req->name, "Q1");
  assert_int_not_equal(req->_description_case, 0);
  assert_string_equal(req->description, "Cold");
  assert_int_not_equal(req->_is_active_case, 0);
  assert_false(req->is_active);
}

static void test_optional_null_and_absent(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f, "{\"name\":\"Q1\",\"description\":null}",
                            &callmanager__v1__create_campaign_request__descriptor, false, &msg),
                   CCM_OK);
  Callmanager__V1__CreateCampaignRequest *req = (void *)msg;
  assert_int_equal(req->_description_case, 0);
  assert_int_equal(req->_is_active_case, 0);
  /* null on a plain field means "not given": the default stays. */
  assert_int_equal(map_text(f, "{\"name\":null,\"is_active\":null}",
                            &callmanager__v1__create_campaign_request__descriptor, false, &msg),
                   CCM_OK);
  req = (void *)msg;
  assert_string_equal(req->name, "");
  assert_int_equal(req->_is_active_case, 0);
  /* The empty object is valid: every field unset. */
  assert_int_equal(
      map_text(f, "{}", &callmanager__v1__create_campaign_request__descriptor, false, &msg),
      CCM_OK);
}

static void test_wrong_types(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *cc = &callmanager__v1__create_campaign_request__descriptor;
  const ProtobufCMessageDescriptor *ap = &callmanager__v1__add_phone_numbers_request__descriptor;
  const ProtobufCMessageDescriptor *ic = &callmanager__v1__initiate_call_request__descriptor;
  expect_error(f, "{\"name\":5}", cc, "name", "name must be a string.");
  expect_error(f, "{\"name\":true}", cc, "name", "name must be a string.");
  expect_error(f, "{\"name\":[\"a\"]}", cc, "name", "name must be a string.");
  expect_error(f, "{\"name\":{\"a\":1}}", cc, "name", "name must be a string.");
  expect_error(f, "{\"is_active\":\"true\"}", cc, "is_active", "is_active must be a boolean.");
  expect_error(f, "{\"is_active\":1}", cc, "is_active", "is_active must be a boolean.");
  expect_error(f, "{\"description\":7}", cc, "description", "description must be a string.");
  expect_error(f, "{\"campaign_id\":\"1\"}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"campaign_id\":1.5}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"campaign_id\":1.0}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"campaign_id\":1e3}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"campaign_id\":true}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"campaign_id\":[1]}", ap, "campaign_id", "campaign_id must be an integer.");
  expect_error(f, "{\"phone_numbers\":\"+1234567890\"}", ap, "phone_numbers",
               "phone_numbers must be an array.");
  expect_error(f, "{\"phone_numbers\":{}}", ap, "phone_numbers", "phone_numbers must be an array.");
  expect_error(f, "{\"phone_numbers\":[\"+1234567890\", 5]}", ap, "phone_numbers",
               "phone_numbers[1] must be a string.");
  expect_error(f, "{\"phone_numbers\":[null]}", ap, "phone_numbers",
               "phone_numbers[0] must not be null.");
  expect_error(f, "{\"phone_numbers\":[[\"+1234567890\"]]}", ap, "phone_numbers",
               "phone_numbers[0] must be a string.");
  expect_error(f, "{\"phone_number\":1234567890,\"campaign_id\":1}", ic, "phone_number",
               "phone_number must be a string.");
}

static void test_not_an_object(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *cc = &callmanager__v1__create_campaign_request__descriptor;
  expect_error(f, "[]", cc, NULL, "Request body must be a JSON object.");
  expect_error(f, "\"text\"", cc, NULL, "Request body must be a JSON object.");
  expect_error(f, "42", cc, NULL, "Request body must be a JSON object.");
  expect_error(f, "null", cc, NULL, "Request body must be a JSON object.");
}

static void test_unknown_fields(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *cc = &callmanager__v1__create_campaign_request__descriptor;
  expect_error(f, "{\"name\":\"a\",\"color\":\"red\"}", cc, "color", "Unknown field: color.");
  /* The oneof's own name is not a field. */
  expect_error(f, "{\"_description\":\"x\"}", cc, "_description", "Unknown field: _description.");
  /* The first problem in document order is reported. */
  expect_error(f, "{\"zzz\":1,\"name\":5}", cc, "zzz", "Unknown field: zzz.");
  expect_error(f, "{\"name\":5,\"zzz\":1}", cc, "name", "name must be a string.");
  /* Provider callbacks ignore unknown fields (still type-checking known ones). */
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f,
                            "{\"call_id\":\"c1\",\"status\":\"PICKED\",\"provider\":{\"x\":[1]},"
                            "\"extra\":null}",
                            &callmanager__v1__process_callback_request__descriptor, true, &msg),
                   CCM_OK);
  Callmanager__V1__ProcessCallbackRequest *cb = (void *)msg;
  assert_string_equal(cb->call_id, "c1");
  assert_int_equal(cb->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED);
  assert_int_equal(map_text(f, "{\"call_id\":5,\"extra\":1}",
                            &callmanager__v1__process_callback_request__descriptor, true, &msg),
                   CCM_EINVAL);
  assert_string_equal(f->err.field, "call_id");
}

static void test_enums(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *cb = &callmanager__v1__process_callback_request__descriptor;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f, "{\"status\":\"DISCONNECTED\"}", cb, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__ProcessCallbackRequest *)msg)->status,
                   CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_DISCONNECTED);
  /* Only the REST spelling: the proto's full name is not a status. */
  assert_int_equal(map_text(f, "{\"status\":\"CALL_STATUS_RNR\"}", cb, false, &msg), CCM_EINVAL);
  const char *list =
      "Invalid status. Must be one of: INITIATED, PROCESSING, RETRYING, PICKED, DISCONNECTED, "
      "RNR, FAILED";
  expect_error(f, "{\"status\":\"picked\"}", cb, "status", list);
  expect_error(f, "{\"status\":\"BUSY\"}", cb, "status", list);
  expect_error(f, "{\"status\":4}", cb, "status", list);
  expect_error(f, "{\"status\":\"\"}", cb, "status", list);

  const char *name = ccm_json_enum_name(&callmanager__v1__call_status__descriptor, 4);
  assert_non_null(name);
  assert_string_equal(name, "PICKED");
  assert_null(ccm_json_enum_name(&callmanager__v1__call_status__descriptor, 99));
  int value = -1;
  assert_true(ccm_json_enum_value(&callmanager__v1__call_status__descriptor, "FAILED", &value));
  assert_int_equal(value, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_FAILED);
  assert_false(ccm_json_enum_value(&callmanager__v1__call_status__descriptor, "NOPE", &value));
}

static void test_optional_int_and_string(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *cb = &callmanager__v1__process_callback_request__descriptor;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f,
                            "{\"call_id\":\"c\",\"status\":\"PICKED\",\"call_duration\":0,"
                            "\"external_call_id\":null,\"timestamp\":\"2025-01-24T10:30:00Z\"}",
                            cb, false, &msg),
                   CCM_OK);
  Callmanager__V1__ProcessCallbackRequest *req = (void *)msg;
  assert_int_not_equal(req->_call_duration_case, 0); /* 0 is present, not absent */
  assert_int_equal(req->call_duration, 0);
  assert_int_equal(req->_external_call_id_case, 0);
  assert_int_not_equal(req->_timestamp_case, 0);
  assert_string_equal(req->timestamp, "2025-01-24T10:30:00Z");
  expect_error(f, "{\"call_duration\":\"5\"}", cb, "call_duration",
               "call_duration must be an integer.");
  expect_error(f, "{\"call_duration\":5.5}", cb, "call_duration",
               "call_duration must be an integer.");
  expect_error(f, "{\"timestamp\":1706092200}", cb, "timestamp", "timestamp must be a string.");
}

static void test_unicode_strings(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  /* Raw UTF-8, \u escapes and a surrogate pair (U+1F4DE) all arrive as UTF-8. */
  assert_int_equal(map_text(f, "{\"name\":\"Caf\\u00e9 \xe6\x97\xa5\xe6\x9c\xac \\ud83d\\udcde\"}",
                            &callmanager__v1__create_campaign_request__descriptor, false, &msg),
                   CCM_OK);
  Callmanager__V1__CreateCampaignRequest *req = (void *)msg;
  assert_string_equal(req->name, "Caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x93\x9e");
  /* A string built with an embedded NUL cannot become a C string. */
  json_t *json = json_pack("{s:s%}", "name", "a\0b", (size_t)3);
  assert_non_null(json);
  assert_int_equal(ccm_json_to_message(json, &callmanager__v1__create_campaign_request__descriptor,
                                       NULL, &f->arena, &msg, &f->err),
                   CCM_EINVAL);
  assert_string_equal(f->err.field, "name");
  json_decref(json);
}

static void test_integer_ranges(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  const ProtobufCMessageDescriptor *ap = &callmanager__v1__add_phone_numbers_request__descriptor;
  assert_int_equal(map_text(f, "{\"campaign_id\":9223372036854775807}", ap, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__AddPhoneNumbersRequest *)msg)->campaign_id, INT64_MAX);
  assert_int_equal(map_text(f, "{\"campaign_id\":-9223372036854775808}", ap, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__AddPhoneNumbersRequest *)msg)->campaign_id, INT64_MIN);
  /* int32 fields are range-checked. */
  const ProtobufCMessageDescriptor *at = &callmanager__v1__call_attempt__descriptor;
  assert_int_equal(map_text(f, "{\"attempt\":2147483647}", at, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__CallAttempt *)msg)->attempt, INT32_MAX);
  assert_int_equal(map_text(f, "{\"attempt\":-2147483648}", at, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__CallAttempt *)msg)->attempt, INT32_MIN);
  expect_error(f, "{\"attempt\":2147483648}", at, "attempt", "attempt is out of range.");
  expect_error(f, "{\"attempt\":-2147483649}", at, "attempt", "attempt is out of range.");
  /* Numbers beyond int64 are rejected by the JSON parser itself (the
   * gateway answers "Malformed JSON"); as reals they are not integers. */
  json_error_t jerr;
  assert_null(json_loads("{\"campaign_id\":99999999999999999999}", 0, &jerr));
  expect_error(f, "{\"campaign_id\":1e300}", ap, "campaign_id", "campaign_id must be an integer.");
  /* doubles take integers and reals, not strings. */
  const ProtobufCMessageDescriptor *dm = &callmanager__v1__daily_metrics__descriptor;
  assert_int_equal(map_text(f, "{\"avg_call_duration\":75}", dm, false, &msg), CCM_OK);
  assert_true(((Callmanager__V1__DailyMetrics *)msg)->avg_call_duration == 75.0);
  expect_error(f, "{\"avg_call_duration\":\"75\"}", dm, "avg_call_duration",
               "avg_call_duration must be a number.");
}

static void test_nested_messages(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *call = &callmanager__v1__call__descriptor;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(
      map_text(f,
               "{\"call_id\":\"c\",\"status\":\"RETRYING\",\"next_retry_at\":null,\"attempts\":["
               "{\"attempt\":1,\"status\":\"RNR\",\"call_duration\":null},"
               "{\"attempt\":2,\"status\":\"PICKED\",\"call_duration\":30,\"outcome_at\":\"t\"}]}",
               call, false, &msg),
      CCM_OK);
  Callmanager__V1__Call *c = (void *)msg;
  assert_int_equal(c->status, CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_RETRYING);
  assert_int_equal(c->n_attempts, 2);
  assert_int_equal(c->attempts[0]->attempt, 1);
  assert_int_equal(c->attempts[0]->_call_duration_case, 0);
  assert_int_equal(c->attempts[1]->call_duration, 30);
  assert_string_equal(c->attempts[1]->outcome_at, "t");
  expect_error(f, "{\"attempts\":[{\"attempt\":1},{\"status\":\"NOPE\"}]}", call, "attempts.status",
               "Invalid attempts.status. Must be one of: INITIATED, PROCESSING, RETRYING, PICKED, "
               "DISCONNECTED, RNR, FAILED");
  expect_error(f, "{\"attempts\":[[1]]}", call, "attempts", "attempts[0] must be an object.");
  expect_error(f, "{\"attempts\":[{\"bogus\":1}]}", call, "attempts.bogus",
               "Unknown field: attempts.bogus.");
  /* A singular message field takes an object or null. */
  const ProtobufCMessageDescriptor *gm = &callmanager__v1__get_metrics_response__descriptor;
  assert_int_equal(map_text(f, "{\"dependencies\":{\"database\":\"ok\"},\"recent_metrics\":[]}", gm,
                            false, &msg),
                   CCM_OK);
  assert_string_equal(((Callmanager__V1__GetMetricsResponse *)msg)->dependencies->database, "ok");
  assert_int_equal(((Callmanager__V1__GetMetricsResponse *)msg)->n_recent_metrics, 0);
  assert_int_equal(map_text(f, "{\"dependencies\":null}", gm, false, &msg), CCM_OK);
  assert_null(((Callmanager__V1__GetMetricsResponse *)msg)->dependencies);
  expect_error(f, "{\"dependencies\":\"ok\"}", gm, "dependencies",
               "dependencies must be an object.");
}

static void test_repeated_strings(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *ap = &callmanager__v1__add_phone_numbers_request__descriptor;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(
      map_text(f, "{\"campaign_id\":1,\"phone_numbers\":[\"+1\",\"+2\",\"abc\"]}", ap, false, &msg),
      CCM_OK);
  Callmanager__V1__AddPhoneNumbersRequest *req = (void *)msg;
  assert_int_equal(req->n_phone_numbers, 3);
  assert_string_equal(req->phone_numbers[2], "abc");
  assert_int_equal(map_text(f, "{\"phone_numbers\":[]}", ap, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__AddPhoneNumbersRequest *)msg)->n_phone_numbers, 0);
  assert_int_equal(map_text(f, "{\"phone_numbers\":null}", ap, false, &msg), CCM_OK);
  assert_int_equal(((Callmanager__V1__AddPhoneNumbersRequest *)msg)->n_phone_numbers, 0);
}

static void test_bytes_base64(void **state) {
  struct fixture *f = *state;
  const ProtobufCMessageDescriptor *dl = &callmanager__events__v1__dead_letter__descriptor;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(map_text(f, "{\"key\":\"aGVsbG8=\",\"payload\":\"AAEC\"}", dl, false, &msg),
                   CCM_OK);
  Callmanager__Events__V1__DeadLetter *d = (void *)msg;
  assert_int_equal(d->key.len, 5);
  assert_memory_equal(d->key.data, "hello", 5);
  assert_int_equal(d->payload.len, 3);
  char *text = to_text(msg);
  assert_non_null(strstr(text, "\"key\":\"aGVsbG8=\""));
  assert_non_null(strstr(text, "\"payload\":\"AAEC\""));
  free(text);
  expect_error(f, "{\"key\":\"***\"}", dl, "key", "key must be a base64 string.");
  expect_error(f, "{\"key\":5}", dl, "key", "key must be a base64 string.");
}

static void test_set_field(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  assert_int_equal(
      map_text(f, "{}", &callmanager__v1__list_campaigns_request__descriptor, false, &msg), CCM_OK);
  json_t *five = json_integer(5);
  json_t *text = json_string("5");
  assert_int_equal(ccm_json_set_field(msg, "limit", five, &f->arena, &f->err), CCM_OK);
  Callmanager__V1__ListCampaignsRequest *req = (void *)msg;
  assert_int_not_equal(req->_limit_case, 0);
  assert_int_equal(req->limit, 5);
  assert_int_equal(ccm_json_set_field(msg, "limit", json_null(), &f->arena, &f->err), CCM_OK);
  assert_int_equal(req->_limit_case, 0);
  assert_int_equal(ccm_json_set_field(msg, "offset", text, &f->arena, &f->err), CCM_EINVAL);
  assert_string_equal(f->err.message, "offset must be an integer.");
  assert_int_equal(ccm_json_set_field(msg, "nope", five, &f->arena, &f->err), CCM_ENOTFOUND);
  json_decref(five);
  json_decref(text);
}

/* -------------------------------------------------------- proto -> JSON --- */

static void test_campaign_to_json(void **state) {
  (void)state;
  Callmanager__V1__Campaign c = CALLMANAGER__V1__CAMPAIGN__INIT;
  c.id = 1;
  c.name = "Marketing Campaign Q1";
  c.is_active = true;
  c.created_at = "2025-01-24T10:30:00Z";
  c.updated_at = "2025-01-24T10:30:00Z";
  c.phone_count = 3;
  char *text = to_text(&c.base);
  assert_string_equal(text,
                      "{\"id\":1,\"name\":\"Marketing Campaign Q1\",\"description\":null,"
                      "\"is_active\":true,\"created_at\":\"2025-01-24T10:30:00Z\","
                      "\"updated_at\":\"2025-01-24T10:30:00Z\",\"phone_count\":3}");
  free(text);
  c._description_case = CALLMANAGER__V1__CAMPAIGN___DESCRIPTION_DESCRIPTION;
  c.description = "";
  text = to_text(&c.base);
  assert_non_null(strstr(text, "\"description\":\"\""));
  free(text);
}

static void test_metrics_to_json(void **state) {
  (void)state;
  Callmanager__V1__DailyMetrics day = CALLMANAGER__V1__DAILY_METRICS__INIT;
  day.date = "2025-01-24";
  day.total_calls_picked = 2;
  day.total_call_duration = 150;
  day.avg_call_duration = 75.0;
  day.total_calls_initiated = INT64_MAX;
  Callmanager__V1__DailyMetrics *days[] = {&day};
  Callmanager__V1__GetMetricsResponse m = CALLMANAGER__V1__GET_METRICS_RESPONSE__INIT;
  m.max_concurrent_calls = 100;
  m.system_status = "healthy";
  m.n_recent_metrics = 1;
  m.recent_metrics = days;
  char *text = to_text(&m.base);
  /* dependencies unset -> null; the double stays a number with its ".0". */
  assert_non_null(strstr(text, "\"dependencies\":null"));
  assert_non_null(strstr(text, "\"avg_call_duration\":75.0"));
  assert_non_null(strstr(text, "\"total_calls_initiated\":9223372036854775807"));
  assert_non_null(strstr(text, "\"dlq_entries_created\":0"));
  assert_non_null(strstr(text, "\"current_concurrent_calls\":0,"));
  free(text);
  day.avg_call_duration = 0.0;
  text = to_text(&m.base);
  assert_non_null(strstr(text, "\"avg_call_duration\":0.0"));
  free(text);
}

static void test_call_to_json(void **state) {
  (void)state;
  Callmanager__V1__CallAttempt a = CALLMANAGER__V1__CALL_ATTEMPT__INIT;
  a.attempt = 1;
  a.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED;
  a._call_duration_case = CALLMANAGER__V1__CALL_ATTEMPT___CALL_DURATION_CALL_DURATION;
  a.call_duration = 30;
  Callmanager__V1__CallAttempt *attempts[] = {&a};
  Callmanager__V1__Call c = CALLMANAGER__V1__CALL__INIT;
  c.call_id = "call_1_+1234567890_20250124103000_1a2b3c4d";
  c.status = CALLMANAGER__V1__CALL_STATUS__CALL_STATUS_PICKED;
  c.attempt_count = 1;
  c.max_attempts = 3;
  c.n_attempts = 1;
  c.attempts = attempts;
  json_t *json = ccm_json_from_message(&c.base);
  assert_non_null(json);
  assert_int_equal(json_object_size(json), 14);
  assert_string_equal(json_string_value(json_object_get(json, "status")), "PICKED");
  assert_true(json_is_null(json_object_get(json, "next_retry_at")));
  assert_true(json_is_null(json_object_get(json, "error_message")));
  assert_true(json_is_integer(json_object_get(json, "total_call_time")));
  json_t *first = json_array_get(json_object_get(json, "attempts"), 0);
  assert_int_equal(json_object_size(first), 6);
  assert_true(json_is_null(json_object_get(first, "external_call_id")));
  assert_int_equal(json_integer_value(json_object_get(first, "call_duration")), 30);
  json_decref(json);
  /* An enum value the descriptor does not know stays a number. */
  c.status = (Callmanager__V1__CallStatus)42;
  json = ccm_json_from_message(&c.base);
  assert_int_equal(json_integer_value(json_object_get(json, "status")), 42);
  json_decref(json);
  assert_null(ccm_json_from_message(NULL));
}

static void test_round_trip_through_wire(void **state) {
  struct fixture *f = *state;
  ProtobufCMessage *msg = NULL;
  const char *in =
      "{\"success\":true,\"campaign_id\":1,\"added_count\":2,\"phone_numbers\":[\"+1234567890\","
      "\"+1234567891\"],\"duplicate_count\":0,\"errors\":[\"Invalid phone number: abc\"]}";
  assert_int_equal(
      map_text(f, in, &callmanager__v1__add_phone_numbers_response__descriptor, false, &msg),
      CCM_OK);
  size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(len + 1);
  assert_non_null(buf);
  protobuf_c_message_pack(msg, buf);
  ProtobufCMessage *back = protobuf_c_message_unpack(
      &callmanager__v1__add_phone_numbers_response__descriptor, NULL, len, buf);
  assert_non_null(back);
  char *text = to_text(back);
  assert_string_equal(text, in);
  free(text);
  protobuf_c_message_free_unpacked(back, NULL);
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_create_campaign_fields, setup, teardown),
      cmocka_unit_test_setup_teardown(test_optional_null_and_absent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrong_types, setup, teardown),
      cmocka_unit_test_setup_teardown(test_not_an_object, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_fields, setup, teardown),
      cmocka_unit_test_setup_teardown(test_enums, setup, teardown),
      cmocka_unit_test_setup_teardown(test_optional_int_and_string, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unicode_strings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_integer_ranges, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nested_messages, setup, teardown),
      cmocka_unit_test_setup_teardown(test_repeated_strings, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bytes_base64, setup, teardown),
      cmocka_unit_test_setup_teardown(test_set_field, setup, teardown),
      cmocka_unit_test_setup_teardown(test_campaign_to_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metrics_to_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_call_to_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_round_trip_through_wire, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
