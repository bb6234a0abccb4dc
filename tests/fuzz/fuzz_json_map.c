/* libFuzzer target: the gateway's JSON -> protobuf request mapping
 * (gateway/ccm_json_map.h) and its route table (gateway/ccm_routes.h).
 *
 * Input layout: byte 0 selects the mode, the rest is the payload.
 *   byte0 & 7 in 0..6: the payload is a request body, parsed by jansson as
 *     the gateway does and mapped with ccm_json_to_message onto one request
 *     message of callmanager.v1 (table below); bit 3 (0x08) also sets
 *     ignore_unknown, which ProcessCallbackRequest always has.
 *   byte0 & 7 == 7: the payload is "METHOD URI\nBODY": matched with
 *     ccm_routes_match and, when a route matches, built into its request
 *     with ccm_routes_build_request (path, query and body).
 * Every request mapped successfully goes through ccm_json_from_message and
 * back, and through the protobuf wire format and back; both must give the
 * same JSON again. */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_arena.h"
#include "ccm_error.h"
#include "ccm_json_map.h"
#include "ccm_routes.h"
#include "ccm_utf8.h"

#define ARENA_MAX (16u * 1024u * 1024u)
#define METHOD_MAX 16

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "fuzz_json_map: invariant failed: %s (line %d)\n", #cond, __LINE__); \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

static const ProtobufCMessageDescriptor *const requests[7] = {
    &callmanager__v1__create_campaign_request__descriptor,
    &callmanager__v1__list_campaigns_request__descriptor,
    &callmanager__v1__get_campaign_request__descriptor,
    &callmanager__v1__add_phone_numbers_request__descriptor,
    &callmanager__v1__initiate_call_request__descriptor,
    &callmanager__v1__process_callback_request__descriptor,
    &callmanager__v1__get_call_request__descriptor,
};

/* Compact text of a JSON value, checked to parse back to an equal value. */
static void check_text_round_trip(const json_t *json) {
  char *text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
  CHECK(text != NULL);
  json_error_t jerr;
  json_t *back = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  CHECK(back != NULL);
  CHECK(json_equal(json, back));
  json_decref(back);
  free(text);
}

/* msg was mapped from JSON (or built by a route): its JSON form must map
 * back strictly to a message with the same JSON form, and packing and
 * unpacking it must not change that form either. */
static void check_round_trips(const ProtobufCMessage *msg, struct ccm_arena *arena) {
  json_t *json = ccm_json_from_message(msg);
  CHECK(json != NULL);
  CHECK(json_is_object(json));
  check_text_round_trip(json);

  /* JSON -> message -> JSON. Unset optional fields come back as null, which
   * maps onto "unset" again. */
  ProtobufCMessage *again = NULL;
  struct ccm_json_error err = {NULL, NULL};
  int rc = ccm_json_to_message(json, msg->descriptor, NULL, arena, &again, &err);
  if (rc != CCM_OK) {
    fprintf(stderr, "fuzz_json_map: re-mapping failed: %s (%s)\n",
            err.message != NULL ? err.message : "?", err.field != NULL ? err.field : "-");
  }
  CHECK(rc == CCM_OK);
  json_t *json2 = ccm_json_from_message(again);
  CHECK(json2 != NULL);
  CHECK(json_equal(json, json2));
  json_decref(json2);

  /* message -> wire -> message -> JSON. */
  size_t size = protobuf_c_message_get_packed_size(msg);
  uint8_t *wire = malloc(size > 0 ? size : 1);
  CHECK(wire != NULL);
  CHECK(protobuf_c_message_pack(msg, wire) == size);
  ProtobufCAllocator alloc;
  ccm_arena_protobuf_allocator(arena, &alloc);
  ProtobufCMessage *unpacked = protobuf_c_message_unpack(msg->descriptor, &alloc, size, wire);
  CHECK(unpacked != NULL);
  json_t *json3 = ccm_json_from_message(unpacked);
  CHECK(json3 != NULL);
  CHECK(json_equal(json, json3));
  json_decref(json3);
  free(wire);
  json_decref(json);
}

static void fuzz_body(const ProtobufCMessageDescriptor *desc, bool ignore_unknown,
                      const uint8_t *data, size_t size, struct ccm_arena *arena) {
  json_error_t jerr;
  /* As the gateway reads bodies (ccm_routes.c map_body). */
  json_t *json =
      json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
  if (json == NULL) return;
  struct ccm_json_map_options opts = {.ignore_unknown = ignore_unknown};
  ProtobufCMessage *msg = (ProtobufCMessage *)&opts; /* must be reset */
  struct ccm_json_error err = {"stale", "stale"};
  int rc = ccm_json_to_message(json, desc, &opts, arena, &msg, &err);
  if (rc == CCM_OK) {
    CHECK(msg != NULL);
    CHECK(msg->descriptor == desc);
    CHECK(protobuf_c_message_check(msg));
    check_round_trips(msg, arena);
  } else {
    CHECK(rc == CCM_EINVAL);
    CHECK(msg == NULL);
    CHECK(err.message != NULL && err.message[0] != '\0');
    CHECK(strcmp(err.message, "stale") != 0);
    CHECK(json_is_object(json) || err.field == NULL);
  }
  json_decref(json);
}

/* A request the route accepted respects its length limits (SPEC 4:
 * description 2,000 characters, phone_number 64 bytes, call_id and
 * external_call_id 128 characters). */
static void check_limits(const struct ccm_route *route, const ProtobufCMessage *msg) {
  const char *base = (const char *)msg;
  for (size_t i = 0; i < CCM_ROUTE_MAX_LIMITS && route->limits[i].field != NULL; i++) {
    const struct ccm_route_limit *l = &route->limits[i];
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, l->field);
    CHECK(f != NULL && f->type == PROTOBUF_C_TYPE_STRING);
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 &&
        *(const uint32_t *)(base + f->quantifier_offset) != f->id) {
      continue;
    }
    const char *s = *(const char *const *)(base + f->offset);
    if (s == NULL) continue;
    size_t len = strlen(s);
    size_t count = len;
    if (!l->bytes) CHECK(ccm_utf8_valid(s, len, &count));
    CHECK(count <= l->max);
  }
}

static void fuzz_route(const uint8_t *data, size_t size, struct ccm_arena *arena) {
  /* "METHOD URI\nBODY"; the request line is made a C string as the HTTP
   * library hands it over (it stops at the first NUL). */
  const uint8_t *nl = memchr(data, '\n', size);
  size_t line_len = nl != NULL ? (size_t)(nl - data) : size;
  const char *body = nl != NULL ? (const char *)nl + 1 : NULL;
  size_t body_len = nl != NULL ? size - line_len - 1 : 0;
  const uint8_t *sp = memchr(data, ' ', line_len);
  size_t method_len = sp != NULL ? (size_t)(sp - data) : 0;
  size_t uri_start = sp != NULL ? method_len + 1 : 0;
  if (method_len >= METHOD_MAX) method_len = METHOD_MAX - 1;
  char method[METHOD_MAX];
  memcpy(method, data, method_len);
  method[method_len] = '\0';
  char *uri = ccm_arena_strndup(arena, (const char *)data + uri_start, line_len - uri_start);
  CHECK(uri != NULL);

  struct ccm_route_match m;
  int rc = ccm_routes_match(method, uri, arena, &m);
  CHECK(rc == CCM_OK || rc == CCM_ENOTFOUND || rc == CCM_EMETHOD);
  if (rc == CCM_ENOTFOUND) return;
  CHECK(m.allow != NULL && strstr(m.allow, "OPTIONS") != NULL);
  if (rc == CCM_EMETHOD) {
    CHECK(m.route == NULL);
    return;
  }
  CHECK(m.route != NULL && m.path != NULL);
  for (size_t i = 0; i < CCM_ROUTE_MAX_PARAMS && m.route->path_params[i].name != NULL; i++) {
    CHECK(m.params[i] != NULL && m.param_lens[i] > 0);
  }
  ProtobufCMessage *msg = NULL;
  struct ccm_route_error err;
  rc = ccm_routes_build_request(&m, body, body_len, arena, &msg, &err);
  if (rc == CCM_OK) {
    CHECK(m.route->request == NULL || msg != NULL);
    if (msg == NULL) return;
    CHECK(msg->descriptor == m.route->request);
    CHECK(protobuf_c_message_check(msg));
    check_limits(m.route, msg);
    check_round_trips(msg, arena);
  } else {
    CHECK(rc == CCM_EINVAL);
    CHECK(err.status == CCM_EINVAL);
    CHECK(err.message != NULL && err.message[0] != '\0');
    CHECK(msg == NULL);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  struct ccm_arena arena;
  ccm_arena_init(&arena, ARENA_MAX);
  unsigned mode = data[0] & 7u;
  if (mode < 7) {
    const ProtobufCMessageDescriptor *desc = requests[mode];
    bool ignore_unknown =
        desc == &callmanager__v1__process_callback_request__descriptor || (data[0] & 8u) != 0;
    fuzz_body(desc, ignore_unknown, data + 1, size - 1, &arena);
  } else {
    fuzz_route(data + 1, size - 1, &arena);
  }
  ccm_arena_free(&arena);
  return 0;
}
