/* Generic JSON (jansson) <-> protobuf-c mapping driven by message
 * descriptors, with the REST API's rules (SPEC 4): integer fields take JSON
 * integers only, enums travel as their names without the enum's common
 * prefix ("PICKED" for CALL_STATUS_PICKED), a single-field oneof `_<x>` is an
 * optional field (JSON null or absent = unset), repeated fields are arrays,
 * and responses show every field, unset optional ones as null. Per-endpoint
 * shapes (unwrapping, aliases) belong to the route table, not here. */
#ifndef CCM_JSON_MAP_H
#define CCM_JSON_MAP_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

#include "ccm_arena.h"

/* Why a request body could not be mapped (400 bad_request). */
struct ccm_json_error {
  const char *message; /* human message, e.g. "campaign_id must be an integer." */
  const char *field;   /* offending field ("a.b" when nested); NULL for the whole body */
};

struct ccm_json_map_options {
  bool ignore_unknown; /* skip fields the message does not have (provider callbacks) */
};

/* Maps a JSON object onto a new message of type desc allocated in arena (so
 * everything it points to lives and dies with the arena). opts may be NULL
 * (strict). Returns CCM_OK and the message in *out; CCM_EINVAL with err
 * filled (strings in the arena) for a body that breaks the rules; CCM_ENOMEM
 * when the arena is exhausted. */
int ccm_json_to_message(const json_t *json, const ProtobufCMessageDescriptor *desc,
                        const struct ccm_json_map_options *opts, struct ccm_arena *arena,
                        ProtobufCMessage **out, struct ccm_json_error *err);

/* Sets the field called name of msg (allocated in arena) from one JSON value,
 * with the same rules as ccm_json_to_message (null unsets an optional field).
 * Returns CCM_OK; CCM_ENOTFOUND when msg has no such field; CCM_EINVAL with
 * err filled for a value of the wrong type; CCM_ENOMEM. */
int ccm_json_set_field(ProtobufCMessage *msg, const char *name, const json_t *value,
                       struct ccm_arena *arena, struct ccm_json_error *err);

/* Returns a new JSON object (the caller owns the reference) with every field
 * of msg, or NULL when out of memory or msg is NULL. */
json_t *ccm_json_from_message(const ProtobufCMessage *msg);

/* Returns the enum value's name without the enum's common prefix ("PICKED"),
 * or NULL when value is not one of desc's values. Borrowed from desc. */
const char *ccm_json_enum_name(const ProtobufCEnumDescriptor *desc, int value);

/* Looks an enum value up by its short name ("PICKED"), as the REST API spells it. Returns
 * true and stores it in *value, false when unknown. */
bool ccm_json_enum_value(const ProtobufCEnumDescriptor *desc, const char *name, int *value);

#endif
