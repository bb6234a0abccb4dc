/* JSON <-> protobuf-c mapping by descriptor walking. Requests are written
 * into arena memory (the message, its strings, arrays and sub-messages), so
 * a request needs no free; responses become fresh jansson values. */
#include "ccm_json_map.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"

#define ENUM_LIST_MAX 512 /* bytes of "A, B, C" listed in an enum error */

/* What one mapping needs besides the value: where to allocate, what to do
 * with unknown fields, where to report. */
struct map_ctx {
  struct ccm_arena *arena;
  bool ignore_unknown;
  struct ccm_json_error *err;
};

static int map_object(struct map_ctx *cx, const json_t *json, ProtobufCMessage *msg,
                      const char *path);

/* ------------------------------------------------------------- errors --- */

static int fail(struct map_ctx *cx, const char *field, const char *fmt, const char *name) {
  cx->err->field = field;
  cx->err->message = ccm_arena_printf(cx->arena, fmt, name);
  if (cx->err->message == NULL) return CCM_ENOMEM;
  return CCM_EINVAL;
}

/* Returns "prefix.name" (or name alone) in the arena; NULL when out of memory. */
static const char *join_path(struct ccm_arena *a, const char *prefix, const char *name) {
  if (prefix == NULL || prefix[0] == '\0') return ccm_arena_strdup(a, name);
  return ccm_arena_printf(a, "%s.%s", prefix, name);
}

/* --------------------------------------------------------------- enums --- */

/* Length of the prefix shared by every value name, cut after its last '_'. */
static size_t enum_prefix_len(const ProtobufCEnumDescriptor *desc) {
  if (desc->n_values == 0) return 0;
  const char *first = desc->values[0].name;
  size_t common = strlen(first);
  for (unsigned i = 1; i < desc->n_values; i++) {
    const char *name = desc->values[i].name;
    size_t k = 0;
    while (k < common && name[k] == first[k]) k++;
    common = k;
  }
  while (common > 0 && first[common - 1] != '_') common--;
  return common;
}

const char *ccm_json_enum_name(const ProtobufCEnumDescriptor *desc, int value) {
  if (desc == NULL) return NULL;
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
  if (v == NULL) return NULL;
  size_t skip = enum_prefix_len(desc);
  return v->name[skip] != '\0' ? v->name + skip : v->name;
}

bool ccm_json_enum_value(const ProtobufCEnumDescriptor *desc, const char *name, int *value) {
  if (desc == NULL || name == NULL || value == NULL) return false;
  size_t skip = enum_prefix_len(desc);
  for (unsigned i = 0; i < desc->n_values; i++) {
    const char *full = desc->values[i].name;
    if (strcmp(full + skip, name) == 0) {
      *value = desc->values[i].value;
      return true;
    }
  }
  return false;
}

/* Writes "A, B, C" (short names, the zero value left out) into buf. */
static void enum_list(const ProtobufCEnumDescriptor *desc, char *buf, size_t cap) {
  size_t skip = enum_prefix_len(desc);
  size_t used = 0;
  buf[0] = '\0';
  for (unsigned i = 0; i < desc->n_values; i++) {
    if (desc->values[i].value == 0) continue;
    int n =
        snprintf(buf + used, cap - used, "%s%s", used > 0 ? ", " : "", desc->values[i].name + skip);
    if (n < 0 || (size_t)n >= cap - used) break;
    used += (size_t)n;
  }
}

/* -------------------------------------------------------------- base64 --- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_index(char c) {
  const char *p = c != '\0' ? strchr(b64_alphabet, c) : NULL;
  return p == NULL ? -1 : (int)(p - b64_alphabet);
}

/* Decodes standard base64 (padding optional) into the arena. Returns CCM_OK,
 * CCM_EINVAL for bad input or CCM_ENOMEM. */
static int b64_decode(struct ccm_arena *a, const char *s, size_t len, ProtobufCBinaryData *out) {
  while (len > 0 && s[len - 1] == '=') len--;
  if (len % 4 == 1) return CCM_EINVAL;
  uint8_t *data = ccm_arena_alloc(a, len * 3 / 4 + 1);
  if (data == NULL) return CCM_ENOMEM;
  size_t n = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64_index(s[i]);
    if (v < 0) return CCM_EINVAL;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      data[n++] = (uint8_t)(acc >> bits);
    }
  }
  out->data = data;
  out->len = n;
  return CCM_OK;
}

/* Returns a new JSON string with the base64 of data, NULL when out of memory. */
static json_t *b64_encode(const ProtobufCBinaryData *bin) {
  size_t cap = (bin->len + 2) / 3 * 4 + 1;
  char *text = malloc(cap);
  if (text == NULL) return NULL;
  size_t n = 0;
  for (size_t i = 0; i < bin->len; i += 3) {
    uint32_t v = (uint32_t)bin->data[i] << 16;
    if (i + 1 < bin->len) v |= (uint32_t)bin->data[i + 1] << 8;
    if (i + 2 < bin->len) v |= bin->data[i + 2];
    text[n++] = b64_alphabet[(v >> 18) & 63];
    text[n++] = b64_alphabet[(v >> 12) & 63];
    text[n++] = i + 1 < bin->len ? b64_alphabet[(v >> 6) & 63] : '=';
    text[n++] = i + 2 < bin->len ? b64_alphabet[v & 63] : '=';
  }
  text[n] = '\0';
  json_t *j = json_stringn(text, n);
  free(text);
  return j;
}

/* ---------------------------------------------------- JSON -> protobuf --- */

static size_t type_size(ProtobufCType type) {
  switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      return 8;
    case PROTOBUF_C_TYPE_FLOAT:
      return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
      return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
      return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
      return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
      return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
      return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
      return sizeof(ProtobufCMessage *);
  }
  return 0;
}

/* Range-checks a JSON integer for an integer field; CCM_OK or CCM_EINVAL. */
static int check_int(struct map_ctx *cx, ProtobufCType type, json_int_t v, const char *path) {
  bool ok = true;
  switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      ok = v >= INT32_MIN && v <= INT32_MAX;
      break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      ok = v >= 0 && v <= (json_int_t)UINT32_MAX;
      break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      ok = v >= 0;
      break;
    default:
      break;
  }
  return ok ? CCM_OK : fail(cx, path, "%s is out of range.", path);
}

/* Parses one JSON value (not null) of field f's type into dst, which has
 * type_size(f->type) bytes. label is the name shown in messages. */
static int parse_value(struct map_ctx *cx, const ProtobufCFieldDescriptor *f, const json_t *v,
                       void *dst, const char *path, const char *label) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
      if (!json_is_integer(v)) return fail(cx, path, "%s must be an integer.", label);
      json_int_t i = json_integer_value(v);
      int rc = check_int(cx, f->type, i, path);
      if (rc != CCM_OK) return rc;
      if (type_size(f->type) == 4) {
        int32_t i32 = (int32_t)(uint32_t)i;
        memcpy(dst, &i32, sizeof i32);
      } else {
        int64_t i64 = (int64_t)i;
        memcpy(dst, &i64, sizeof i64);
      }
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE: {
      if (!json_is_number(v)) return fail(cx, path, "%s must be a number.", label);
      double d = json_number_value(v);
      if (f->type == PROTOBUF_C_TYPE_FLOAT) {
        float fl = (float)d;
        memcpy(dst, &fl, sizeof fl);
      } else {
        memcpy(dst, &d, sizeof d);
      }
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_BOOL: {
      if (!json_is_boolean(v)) return fail(cx, path, "%s must be a boolean.", label);
      protobuf_c_boolean b = json_is_true(v) ? 1 : 0;
      memcpy(dst, &b, sizeof b);
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumDescriptor *ed = f->descriptor;
      int value = 0;
      if (!json_is_string(v) || !ccm_json_enum_value(ed, json_string_value(v), &value)) {
        char list[ENUM_LIST_MAX];
        enum_list(ed, list, sizeof list);
        cx->err->field = path;
        cx->err->message =
            ccm_arena_printf(cx->arena, "Invalid %s. Must be one of: %s", label, list);
        return cx->err->message == NULL ? CCM_ENOMEM : CCM_EINVAL;
      }
      memcpy(dst, &value, sizeof value);
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_STRING: {
      if (!json_is_string(v)) return fail(cx, path, "%s must be a string.", label);
      size_t len = json_string_length(v);
      const char *s = json_string_value(v);
      if (memchr(s, '\0', len) != NULL) {
        return fail(cx, path, "%s must not contain NUL characters.", label);
      }
      char *copy = ccm_arena_strndup(cx->arena, s, len);
      if (copy == NULL) return CCM_ENOMEM;
      memcpy(dst, &copy, sizeof copy);
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      if (!json_is_string(v)) return fail(cx, path, "%s must be a base64 string.", label);
      ProtobufCBinaryData bin = {0, NULL};
      int rc = b64_decode(cx->arena, json_string_value(v), json_string_length(v), &bin);
      if (rc == CCM_EINVAL) return fail(cx, path, "%s must be a base64 string.", label);
      if (rc != CCM_OK) return rc;
      memcpy(dst, &bin, sizeof bin);
      return CCM_OK;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
      if (!json_is_object(v)) return fail(cx, path, "%s must be an object.", label);
      const ProtobufCMessageDescriptor *md = f->descriptor;
      ProtobufCMessage *sub = ccm_arena_alloc(cx->arena, md->sizeof_message);
      if (sub == NULL) return CCM_ENOMEM;
      md->message_init(sub);
      int rc = map_object(cx, v, sub, path);
      if (rc != CCM_OK) return rc;
      memcpy(dst, &sub, sizeof sub);
      return CCM_OK;
    }
  }
  return fail(cx, path, "%s has an unsupported type.", label);
}

static int set_repeated(struct map_ctx *cx, const ProtobufCFieldDescriptor *f, const json_t *v,
                        char *base, const char *path) {
  size_t *count = (size_t *)(base + f->quantifier_offset);
  void **array = (void **)(base + f->offset);
  if (!json_is_array(v)) return fail(cx, path, "%s must be an array.", path);
  size_t n = json_array_size(v);
  size_t elem = type_size(f->type);
  char *items = NULL;
  if (n > 0) {
    items = ccm_arena_calloc(cx->arena, n, elem);
    if (items == NULL) return CCM_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const json_t *item = json_array_get(v, i);
    const char *label = ccm_arena_printf(cx->arena, "%s[%zu]", path, i);
    if (label == NULL) return CCM_ENOMEM;
    if (json_is_null(item)) return fail(cx, path, "%s must not be null.", label);
    int rc = parse_value(cx, f, item, items + i * elem, path, label);
    if (rc != CCM_OK) return rc;
  }
  *count = n;
  *array = items;
  return CCM_OK;
}

/* Sets field f of the message at base from v (any JSON value). */
static int set_field(struct map_ctx *cx, const ProtobufCMessageDescriptor *desc,
                     const ProtobufCFieldDescriptor *f, const json_t *v, char *base,
                     const char *path) {
  bool oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
  if (json_is_null(v)) {
    /* Unset: optional fields lose their presence, the others keep defaults. */
    if (oneof) {
      uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
      if (*which == f->id) *which = 0;
    } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0 &&
               f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) {
      *(protobuf_c_boolean *)(base + f->quantifier_offset) = 0;
    } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      *(size_t *)(base + f->quantifier_offset) = 0;
      *(void **)(base + f->offset) = NULL;
    }
    return CCM_OK;
  }
  if (f->label == PROTOBUF_C_LABEL_REPEATED) return set_repeated(cx, f, v, base, path);
  if (oneof) {
    uint32_t *which = (uint32_t *)(base + f->quantifier_offset);
    if (*which != 0 && *which != f->id) {
      const ProtobufCFieldDescriptor *other =
          protobuf_c_message_descriptor_get_field(desc, (unsigned)*which);
      cx->err->field = path;
      cx->err->message = ccm_arena_printf(cx->arena, "Only one of %s and %s may be set.",
                                          other != NULL ? other->name : "?", f->name);
      return cx->err->message == NULL ? CCM_ENOMEM : CCM_EINVAL;
    }
  }
  int rc = parse_value(cx, f, v, base + f->offset, path, path);
  if (rc != CCM_OK) return rc;
  if (oneof) {
    *(uint32_t *)(base + f->quantifier_offset) = f->id;
  } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset != 0 &&
             f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) {
    *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
  }
  return CCM_OK;
}

static int map_object(struct map_ctx *cx, const json_t *json, ProtobufCMessage *msg,
                      const char *path) {
  const ProtobufCMessageDescriptor *desc = msg->descriptor;
  const char *key;
  json_t *value;
  /* jansson iterates in document order, so the first problem is reported. */
  json_object_foreach((json_t *)json, key, value) {
    const char *field_path = join_path(cx->arena, path, key);
    if (field_path == NULL) return CCM_ENOMEM;
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, key);
    if (f == NULL) {
      if (cx->ignore_unknown) continue;
      return fail(cx, field_path, "Unknown field: %s.", field_path);
    }
    int rc = set_field(cx, desc, f, value, (char *)msg, field_path);
    if (rc != CCM_OK) return rc;
  }
  return CCM_OK;
}

int ccm_json_to_message(const json_t *json, const ProtobufCMessageDescriptor *desc,
                        const struct ccm_json_map_options *opts, struct ccm_arena *arena,
                        ProtobufCMessage **out, struct ccm_json_error *err) {
  if (json == NULL || desc == NULL || arena == NULL || out == NULL || err == NULL) {
    return CCM_EINVAL;
  }
  *out = NULL;
  err->message = NULL;
  err->field = NULL;
  struct map_ctx cx = {arena, opts != NULL && opts->ignore_unknown, err};
  if (!json_is_object(json)) {
    err->message = "Request body must be a JSON object.";
    return CCM_EINVAL;
  }
  ProtobufCMessage *msg = ccm_arena_alloc(arena, desc->sizeof_message);
  if (msg == NULL) return CCM_ENOMEM;
  desc->message_init(msg);
  int rc = map_object(&cx, json, msg, NULL);
  if (rc != CCM_OK) return rc;
  *out = msg;
  return CCM_OK;
}

int ccm_json_set_field(ProtobufCMessage *msg, const char *name, const json_t *value,
                       struct ccm_arena *arena, struct ccm_json_error *err) {
  if (msg == NULL || name == NULL || value == NULL || arena == NULL || err == NULL) {
    return CCM_EINVAL;
  }
  err->message = NULL;
  err->field = NULL;
  const ProtobufCMessageDescriptor *desc = msg->descriptor;
  const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, name);
  if (f == NULL) return CCM_ENOTFOUND;
  struct map_ctx cx = {arena, false, err};
  const char *path = ccm_arena_strdup(arena, name);
  if (path == NULL) return CCM_ENOMEM;
  return set_field(&cx, desc, f, value, (char *)msg, path);
}

/* ---------------------------------------------------- protobuf -> JSON --- */

/* Returns a new JSON value for one element of field f stored at src. */
static json_t *value_json(const ProtobufCFieldDescriptor *f, const void *src) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: {
      int32_t v;
      memcpy(&v, src, sizeof v);
      return json_integer(v);
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
      uint32_t v;
      memcpy(&v, src, sizeof v);
      return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
      int64_t v;
      memcpy(&v, src, sizeof v);
      return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
      uint64_t v;
      memcpy(&v, src, sizeof v);
      if (v > (uint64_t)INT64_MAX) return json_real((double)v);
      return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_FLOAT: {
      float v;
      memcpy(&v, src, sizeof v);
      return isfinite(v) ? json_real(v) : json_null();
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
      double v;
      memcpy(&v, src, sizeof v);
      return isfinite(v) ? json_real(v) : json_null();
    }
    case PROTOBUF_C_TYPE_BOOL: {
      protobuf_c_boolean v;
      memcpy(&v, src, sizeof v);
      return json_boolean(v);
    }
    case PROTOBUF_C_TYPE_ENUM: {
      int v;
      memcpy(&v, src, sizeof v);
      const char *name = ccm_json_enum_name(f->descriptor, v);
      return name != NULL ? json_string(name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
      const char *s;
      memcpy(&s, src, sizeof s);
      return json_string(s != NULL ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: {
      ProtobufCBinaryData bin;
      memcpy(&bin, src, sizeof bin);
      return b64_encode(&bin);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
      const ProtobufCMessage *m;
      memcpy(&m, src, sizeof m);
      return m != NULL ? ccm_json_from_message(m) : json_null();
    }
  }
  return json_null();
}

/* True when an optional field of the message at base is absent. */
static bool field_absent(const ProtobufCFieldDescriptor *f, const char *base) {
  if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
    return *(const uint32_t *)(base + f->quantifier_offset) != f->id;
  }
  if (f->label != PROTOBUF_C_LABEL_OPTIONAL) return false;
  if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
    return *(void *const *)(base + f->offset) == NULL;
  }
  return f->quantifier_offset != 0 && !*(const protobuf_c_boolean *)(base + f->quantifier_offset);
}

static json_t *repeated_json(const ProtobufCFieldDescriptor *f, const char *base) {
  size_t n = *(const size_t *)(base + f->quantifier_offset);
  const char *items = *(char *const *)(base + f->offset);
  json_t *arr = json_array();
  if (arr == NULL) return NULL;
  size_t elem = type_size(f->type);
  for (size_t i = 0; i < n && items != NULL; i++) {
    json_t *v = value_json(f, items + i * elem);
    if (v == NULL || json_array_append_new(arr, v) != 0) {
      json_decref(arr);
      return NULL;
    }
  }
  return arr;
}

json_t *ccm_json_from_message(const ProtobufCMessage *msg) {
  if (msg == NULL) return NULL;
  const ProtobufCMessageDescriptor *desc = msg->descriptor;
  const char *base = (const char *)msg;
  json_t *obj = json_object();
  if (obj == NULL) return NULL;
  for (unsigned i = 0; i < desc->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &desc->fields[i];
    json_t *v;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      v = repeated_json(f, base);
    } else if (field_absent(f, base)) {
      v = json_null();
    } else {
      v = value_json(f, base + f->offset);
    }
    if (v == NULL || json_object_set_new(obj, f->name, v) != 0) {
      json_decref(obj);
      return NULL;
    }
  }
  return obj;
}
