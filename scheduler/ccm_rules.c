/* The retry-rule engine (SPEC 8). The YAML is read with libyaml's document API and checked
 * against a fixed schema; all wall-clock arithmetic is done by ICU in the configured zone.
 *
 * Reading choices where SPEC 8 is silent:
 * - A slot with start_time == end_time is an error ("empty slot"): it could mean "nothing" or
 *   "all day", and guessing wrong would silently change when calls are dialled. An all-day
 *   window is written as two slots, e.g. 00:00-12:00 and 12:00-00:00.
 * - An empty `days` list and an empty `time_slots` list are errors (a rule that can never apply
 *   is a mistake). An empty rule *set* is allowed: `global_rules: []` or a campaign entry with
 *   `rules: []` deliberately gives no retry window, so such calls fail with "No retry window
 *   available" once the defaults' interval has been checked against max_attempts.
 * - `global_rules` is required (it may be an empty list); `campaign_rules`, `defaults`,
 *   `scheduler`, `timezone`, `status_retry_rules` are optional, and a null value for
 *   `global_rules`, `campaign_rules`, `defaults` or `scheduler` reads as empty.
 * - Every key inside a time slot is required; integers must be plain (unquoted) scalars.
 * - When several slots contain t, the first in file order supplies interval and max_attempts.
 * - The window search covers [t + interval, t + interval + 7x24h). A weekly slot always recurs
 *   within that span except across a 25-hour DST day, where a slot shorter than one hour can
 *   fall just outside it; the call then fails with "No retry window available", as written.
 * - A slot boundary in a DST gap resolves to the first instant after the gap (so a slot lying
 *   wholly inside the gap is empty that day); one in a repeated hour uses its first occurrence. */
#include "ccm_rules.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicode/ucal.h>
#include <unicode/utypes.h>
#include <yaml.h>

#include "ccm_error.h"

enum {
  MAX_INPUT_BYTES = 1 << 20,
  MAX_DEPTH = 32,   /* libyaml's loader recurses per level: keep the stack small */
  MAX_RULES = 1024, /* in the whole file */
  MAX_SLOTS = 1024, /* in the whole file */
  MAX_CAMPAIGNS = 1024,
  MAX_DAY_ITEMS = 64, /* per `days` list; repeats are harmless but bounded */
  MAX_WARNINGS = 4,
  WARNING_LEN = 128,
  TZ_LEN = 64,
  SHOW_LEN = 48, /* scalar excerpt quoted in error messages */
  MAX_ATTEMPTS_LIMIT = 1000,
  MINUTES_LIMIT = 525600, /* one year */
  COUNT_LIMIT = 1000000,
};

#define MS_PER_MINUTE INT64_C(60000)
#define MS_PER_DAY INT64_C(86400000)
#define SEARCH_SPAN_MS (7 * MS_PER_DAY)
#define T_MAX_MS INT64_C(253402300799999) /* 9999-12-31T23:59:59.999Z */
#define CAMPAIGN_ID_MAX INT64_C(999999999999999999)

struct slot {
  unsigned days; /* bit n set: the slot starts on UCAL_DAY_OF_WEEK n (1 Sunday .. 7 Saturday) */
  int start_min; /* minutes after local midnight, inclusive */
  int end_min;   /* exclusive; < start_min means it ends on the next day */
  int max_attempts;
  int interval_min;
};

struct rule_set {
  int64_t campaign_id;
  size_t line;  /* of campaign_id, for the duplicate message */
  size_t first; /* slots[first .. first+count) */
  size_t count;
};

struct ccm_rules {
  struct ccm_rules_settings settings;
  char tz_name[TZ_LEN];
  UChar tz_id[TZ_LEN];
  struct slot *slots;
  size_t slot_count;
  size_t slot_cap;
  size_t rule_count;
  struct rule_set global;
  struct rule_set *campaigns;
  size_t campaign_count;
  char warnings[MAX_WARNINGS][WARNING_LEN];
  size_t warning_count;
};

struct loader {
  yaml_document_t *doc;
  struct ccm_rules *rules;
  char *err;
  size_t errlen;
};

static const char *const day_names[7] = {"sunday",   "monday", "tuesday", "wednesday",
                                         "thursday", "friday", "saturday"};

static const struct ccm_rules_settings builtin_settings = {
    .default_max_attempts = 3,
    .default_retry_interval_minutes = 60,
    .concurrent_call_limit = 100,
    .duplicate_call_window_minutes = 5,
    .check_interval_minutes = 1,
    .batch_size = 100,
    .max_concurrent_retries = 50,
};

/* ---- messages ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct loader *ld, const yaml_node_t *node, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static size_t line_of(const yaml_node_t *node) { return node->start_mark.line + 1; }

/* Writes "line N: <message>" for node and returns CCM_EINVAL. */
static int fail(struct loader *ld, const yaml_node_t *node, const char *fmt, ...) {
  if (ld->err == NULL || ld->errlen == 0) return CCM_EINVAL;
  int n = snprintf(ld->err, ld->errlen, "line %zu: ", line_of(node));
  if (n < 0 || (size_t)n >= ld->errlen) return CCM_EINVAL;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return CCM_EINVAL;
}

/* A printable, bounded excerpt of a scalar for messages (input may hold any byte). */
static const char *show(const yaml_node_t *node, char out[SHOW_LEN]) {
  if (node->type != YAML_SCALAR_NODE) {
    snprintf(out, SHOW_LEN, "%s", node->type == YAML_MAPPING_NODE ? "{...}" : "[...]");
    return out;
  }
  size_t len = node->data.scalar.length;
  size_t keep = len > SHOW_LEN - 4 ? SHOW_LEN - 7 : len;
  for (size_t i = 0; i < keep; i++) {
    unsigned char c = node->data.scalar.value[i];
    out[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
  }
  if (keep < len) {
    memcpy(out + keep, "...", 3);
    keep += 3;
  }
  out[keep] = '\0';
  return out;
}

static const char *kind(const yaml_node_t *node) {
  if (node->type == YAML_MAPPING_NODE) return "a mapping";
  if (node->type == YAML_SEQUENCE_NODE) return "a list";
  return "a scalar";
}

/* ---- scalar helpers ---- */

static bool scalar_eq(const yaml_node_t *node, const char *lit) {
  size_t n = strlen(lit);
  return node->type == YAML_SCALAR_NODE && node->data.scalar.length == n &&
         memcmp(node->data.scalar.value, lit, n) == 0;
}

static bool is_null(const yaml_node_t *node) {
  if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
    return false;
  return scalar_eq(node, "") || scalar_eq(node, "~") || scalar_eq(node, "null") ||
         scalar_eq(node, "Null") || scalar_eq(node, "NULL");
}

static char ascii_lower(unsigned char c) {
  return (char)((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
}

static bool scalar_ieq(const yaml_node_t *node, const char *lit) {
  size_t n = strlen(lit);
  if (node->type != YAML_SCALAR_NODE || node->data.scalar.length != n) return false;
  for (size_t i = 0; i < n; i++) {
    if (ascii_lower(node->data.scalar.value[i]) != lit[i]) return false;
  }
  return true;
}

static yaml_node_t *node_at(struct loader *ld, int index) {
  return yaml_document_get_node(ld->doc, index);
}

/* Reads a decimal integer in [min, max] from a plain scalar. */
static int read_int64(struct loader *ld, const yaml_node_t *node, const char *name, int64_t min,
                      int64_t max, int64_t *out) {
  char buf[SHOW_LEN];
  if (node->type != YAML_SCALAR_NODE)
    return fail(ld, node, "%s must be an integer, not %s", name, kind(node));
  const unsigned char *s = node->data.scalar.value;
  size_t len = node->data.scalar.length;
  size_t i = 0;
  bool neg = len > 0 && s[0] == '-';
  if (neg) i = 1;
  bool ok = node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && i < len && len - i <= 18;
  int64_t v = 0;
  for (; ok && i < len; i++) {
    if (s[i] < '0' || s[i] > '9') {
      ok = false;
    } else {
      v = v * 10 + (s[i] - '0');
    }
  }
  if (!ok) return fail(ld, node, "%s must be an integer, got '%s'", name, show(node, buf));
  if (neg) v = -v;
  if (v < min || v > max) {
    return fail(ld, node, "%s must be between %lld and %lld, got %lld", name, (long long)min,
                (long long)max, (long long)v);
  }
  *out = v;
  return CCM_OK;
}

static int read_int(struct loader *ld, const yaml_node_t *node, const char *name, int min, int max,
                    int *out) {
  int64_t v = 0;
  int rc = read_int64(ld, node, name, min, max, &v);
  if (rc != CCM_OK) return rc;
  *out = (int)v;
  return CCM_OK;
}

/* Reads "HH:MM" (00:00-23:59) as minutes after midnight; quoting does not matter. */
static int read_time(struct loader *ld, const yaml_node_t *node, const char *name, int *out) {
  char buf[SHOW_LEN];
  if (node->type != YAML_SCALAR_NODE)
    return fail(ld, node, "%s must be a time HH:MM, not %s", name, kind(node));
  const unsigned char *s = node->data.scalar.value;
  bool ok = node->data.scalar.length == 5 && s[2] == ':';
  for (int i = 0; ok && i < 5; i++) {
    if (i != 2 && (s[i] < '0' || s[i] > '9')) ok = false;
  }
  int hh = ok ? (s[0] - '0') * 10 + (s[1] - '0') : 0;
  int mm = ok ? (s[3] - '0') * 10 + (s[4] - '0') : 0;
  if (!ok || hh > 23 || mm > 59) {
    return fail(ld, node, "%s must be a time HH:MM between 00:00 and 23:59, got '%s'", name,
                show(node, buf));
  }
  *out = hh * 60 + mm;
  return CCM_OK;
}

/* Checks that every key of map is one of names (once) and stores each value in values[i]
 * (NULL when absent). what names the mapping in messages. */
static int read_mapping(struct loader *ld, const yaml_node_t *map, const char *what,
                        const char *const *names, size_t n, const yaml_node_t **values) {
  char buf[SHOW_LEN];
  if (map->type != YAML_MAPPING_NODE)
    return fail(ld, map, "%s must be a mapping, not %s", what, kind(map));
  for (size_t i = 0; i < n; i++) values[i] = NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const yaml_node_t *key = node_at(ld, p->key);
    const yaml_node_t *value = node_at(ld, p->value);
    if (key == NULL || value == NULL) return fail(ld, map, "malformed mapping in %s", what);
    if (key->type != YAML_SCALAR_NODE) return fail(ld, key, "keys in %s must be scalars", what);
    size_t idx = n;
    for (size_t i = 0; i < n; i++) {
      if (scalar_eq(key, names[i])) idx = i;
    }
    if (idx == n) {
      char expected[256];
      size_t used = 0;
      expected[0] = '\0';
      for (size_t i = 0; i < n && used < sizeof expected; i++) {
        int w = snprintf(expected + used, sizeof expected - used, "%s%s", i ? ", " : "", names[i]);
        if (w < 0) break;
        used += (size_t)w;
      }
      return fail(ld, key, "unknown key '%s' in %s (expected: %s)", show(key, buf), what, expected);
    }
    if (values[idx] != NULL) return fail(ld, key, "duplicate key '%s' in %s", names[idx], what);
    values[idx] = value;
  }
  return CCM_OK;
}

/* ---- schema ---- */

static int parse_days(struct loader *ld, const yaml_node_t *node, unsigned *mask) {
  char buf[SHOW_LEN];
  if (node->type != YAML_SEQUENCE_NODE)
    return fail(ld, node, "days must be a list of day names, not %s", kind(node));
  yaml_node_item_t *start = node->data.sequence.items.start;
  size_t count = (size_t)(node->data.sequence.items.top - start);
  if (count == 0) return fail(ld, node, "days is empty: list at least one day");
  if (count > MAX_DAY_ITEMS) return fail(ld, node, "days has more than %d entries", MAX_DAY_ITEMS);
  *mask = 0;
  for (size_t i = 0; i < count; i++) {
    const yaml_node_t *item = node_at(ld, start[i]);
    if (item == NULL) return fail(ld, node, "malformed days list");
    if (item->type != YAML_SCALAR_NODE)
      return fail(ld, item, "days must list day names, not %s", kind(item));
    int day = -1;
    for (int d = 0; d < 7; d++) {
      if (scalar_ieq(item, day_names[d])) day = d;
    }
    if (day < 0) return fail(ld, item, "unknown day name '%s'", show(item, buf));
    *mask |= 1u << (UCAL_SUNDAY + day);
  }
  return CCM_OK;
}

static int append_slot(struct loader *ld, const yaml_node_t *node, const struct slot *s) {
  struct ccm_rules *r = ld->rules;
  if (r->slot_count == MAX_SLOTS)
    return fail(ld, node, "too many time slots (at most %d in the file)", MAX_SLOTS);
  if (r->slot_count == r->slot_cap) {
    size_t cap = r->slot_cap ? r->slot_cap * 2 : 16;
    struct slot *grown = realloc(r->slots, cap * sizeof *grown);
    if (grown == NULL) {
      set_err(ld->err, ld->errlen, "out of memory");
      return CCM_ENOMEM;
    }
    r->slots = grown;
    r->slot_cap = cap;
  }
  r->slots[r->slot_count++] = *s;
  return CCM_OK;
}

static int parse_slot(struct loader *ld, const yaml_node_t *node, unsigned days) {
  static const char *const names[] = {"start_time", "end_time", "max_attempts",
                                      "retry_interval_minutes"};
  const yaml_node_t *v[4];
  int rc = read_mapping(ld, node, "a time slot", names, 4, v);
  if (rc != CCM_OK) return rc;
  for (size_t i = 0; i < 4; i++) {
    if (v[i] == NULL) return fail(ld, node, "time slot is missing '%s'", names[i]);
  }
  struct slot s = {.days = days};
  rc = read_time(ld, v[0], "start_time", &s.start_min);
  if (rc == CCM_OK) rc = read_time(ld, v[1], "end_time", &s.end_min);
  if (rc == CCM_OK) rc = read_int(ld, v[2], "max_attempts", 1, MAX_ATTEMPTS_LIMIT, &s.max_attempts);
  if (rc == CCM_OK)
    rc = read_int(ld, v[3], "retry_interval_minutes", 0, MINUTES_LIMIT, &s.interval_min);
  if (rc != CCM_OK) return rc;
  if (s.start_min == s.end_min) {
    char buf[SHOW_LEN];
    return fail(ld, v[1],
                "empty slot: start_time and end_time are both %s (an end before the start "
                "crosses midnight)",
                show(v[1], buf));
  }
  return append_slot(ld, node, &s);
}

static int parse_rule(struct loader *ld, const yaml_node_t *node) {
  static const char *const names[] = {"name", "days", "time_slots"};
  const yaml_node_t *v[3];
  int rc = read_mapping(ld, node, "a rule", names, 3, v);
  if (rc != CCM_OK) return rc;
  ld->rules->rule_count++;
  if (ld->rules->rule_count > MAX_RULES)
    return fail(ld, node, "too many rules (at most %d in the file)", MAX_RULES);
  if (v[0] != NULL && v[0]->type != YAML_SCALAR_NODE)
    return fail(ld, v[0], "name must be a string, not %s", kind(v[0]));
  if (v[1] == NULL) return fail(ld, node, "rule is missing 'days'");
  if (v[2] == NULL) return fail(ld, node, "rule is missing 'time_slots'");
  unsigned days = 0;
  rc = parse_days(ld, v[1], &days);
  if (rc != CCM_OK) return rc;
  const yaml_node_t *slots = v[2];
  if (slots->type != YAML_SEQUENCE_NODE)
    return fail(ld, slots, "time_slots must be a list, not %s", kind(slots));
  if (slots->data.sequence.items.top == slots->data.sequence.items.start)
    return fail(ld, slots, "time_slots is empty: list at least one slot");
  for (yaml_node_item_t *it = slots->data.sequence.items.start; it < slots->data.sequence.items.top;
       it++) {
    const yaml_node_t *item = node_at(ld, *it);
    if (item == NULL) return fail(ld, slots, "malformed time_slots list");
    rc = parse_slot(ld, item, days);
    if (rc != CCM_OK) return rc;
  }
  return CCM_OK;
}

/* Parses a list of rules into set (its slots are appended contiguously). */
static int parse_rule_list(struct loader *ld, const yaml_node_t *node, const char *what,
                           bool null_ok, struct rule_set *set) {
  set->first = ld->rules->slot_count;
  set->count = 0;
  if (null_ok && is_null(node)) return CCM_OK;
  if (node->type != YAML_SEQUENCE_NODE)
    return fail(ld, node, "%s must be a list of rules, not %s", what, kind(node));
  for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top;
       it++) {
    const yaml_node_t *item = node_at(ld, *it);
    if (item == NULL) return fail(ld, node, "malformed %s list", what);
    int rc = parse_rule(ld, item);
    if (rc != CCM_OK) return rc;
  }
  set->count = ld->rules->slot_count - set->first;
  return CCM_OK;
}

static int parse_campaign(struct loader *ld, const yaml_node_t *node) {
  static const char *const names[] = {"campaign_id", "name", "rules"};
  const yaml_node_t *v[3];
  struct ccm_rules *r = ld->rules;
  int rc = read_mapping(ld, node, "a campaign_rules entry", names, 3, v);
  if (rc != CCM_OK) return rc;
  if (r->campaign_count == MAX_CAMPAIGNS)
    return fail(ld, node, "too many campaign_rules entries (at most %d)", MAX_CAMPAIGNS);
  if (v[0] == NULL) return fail(ld, node, "campaign_rules entry is missing 'campaign_id'");
  if (v[2] == NULL) return fail(ld, node, "campaign_rules entry is missing 'rules'");
  if (v[1] != NULL && v[1]->type != YAML_SCALAR_NODE)
    return fail(ld, v[1], "name must be a string, not %s", kind(v[1]));
  struct rule_set set = {.line = line_of(v[0])};
  rc = read_int64(ld, v[0], "campaign_id", 1, CAMPAIGN_ID_MAX, &set.campaign_id);
  if (rc != CCM_OK) return rc;
  for (size_t i = 0; i < r->campaign_count; i++) {
    if (r->campaigns[i].campaign_id == set.campaign_id) {
      return fail(ld, v[0], "duplicate campaign_id %lld (first at line %zu)",
                  (long long)set.campaign_id, r->campaigns[i].line);
    }
  }
  rc = parse_rule_list(ld, v[2], "rules", false, &set);
  if (rc != CCM_OK) return rc;
  r->campaigns[r->campaign_count++] = set;
  return CCM_OK;
}

static int parse_campaign_list(struct loader *ld, const yaml_node_t *node) {
  if (is_null(node)) return CCM_OK;
  if (node->type != YAML_SEQUENCE_NODE)
    return fail(ld, node, "campaign_rules must be a list, not %s", kind(node));
  ld->rules->campaigns = calloc(MAX_CAMPAIGNS, sizeof *ld->rules->campaigns);
  if (ld->rules->campaigns == NULL) {
    set_err(ld->err, ld->errlen, "out of memory");
    return CCM_ENOMEM;
  }
  for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top;
       it++) {
    const yaml_node_t *item = node_at(ld, *it);
    if (item == NULL) return fail(ld, node, "malformed campaign_rules list");
    int rc = parse_campaign(ld, item);
    if (rc != CCM_OK) return rc;
  }
  return CCM_OK;
}

static int parse_defaults(struct loader *ld, const yaml_node_t *node) {
  static const char *const names[] = {"max_attempts", "retry_interval_minutes",
                                      "concurrent_call_limit", "duplicate_call_window_minutes"};
  const yaml_node_t *v[4];
  struct ccm_rules_settings *s = &ld->rules->settings;
  if (is_null(node)) return CCM_OK;
  int rc = read_mapping(ld, node, "defaults", names, 4, v);
  if (rc == CCM_OK && v[0] != NULL)
    rc = read_int(ld, v[0], "max_attempts", 1, MAX_ATTEMPTS_LIMIT, &s->default_max_attempts);
  if (rc == CCM_OK && v[1] != NULL) {
    rc = read_int(ld, v[1], "retry_interval_minutes", 0, MINUTES_LIMIT,
                  &s->default_retry_interval_minutes);
  }
  if (rc == CCM_OK && v[2] != NULL) {
    rc = read_int(ld, v[2], "concurrent_call_limit", 1, COUNT_LIMIT, &s->concurrent_call_limit);
    s->concurrent_call_limit_set = true;
  }
  if (rc == CCM_OK && v[3] != NULL) {
    rc = read_int(ld, v[3], "duplicate_call_window_minutes", 0, MINUTES_LIMIT,
                  &s->duplicate_call_window_minutes);
    s->duplicate_call_window_set = true;
  }
  return rc;
}

static int parse_scheduler(struct loader *ld, const yaml_node_t *node) {
  static const char *const names[] = {"check_interval_minutes", "batch_size",
                                      "max_concurrent_retries"};
  const yaml_node_t *v[3];
  struct ccm_rules_settings *s = &ld->rules->settings;
  if (is_null(node)) return CCM_OK;
  int rc = read_mapping(ld, node, "scheduler", names, 3, v);
  if (rc == CCM_OK && v[0] != NULL) {
    rc = read_int(ld, v[0], "check_interval_minutes", 1, MINUTES_LIMIT, &s->check_interval_minutes);
    s->check_interval_set = true;
  }
  if (rc == CCM_OK && v[1] != NULL)
    rc = read_int(ld, v[1], "batch_size", 1, COUNT_LIMIT, &s->batch_size);
  if (rc == CCM_OK && v[2] != NULL)
    rc = read_int(ld, v[2], "max_concurrent_retries", 1, COUNT_LIMIT, &s->max_concurrent_retries);
  return rc;
}

/* Stores an ASCII zone name as UTF-16 for ICU (plain widening is exact for ASCII). */
static void set_zone(struct ccm_rules *r, const char *name, size_t len) {
  memcpy(r->tz_name, name, len);
  r->tz_name[len] = '\0';
  for (size_t i = 0; i <= len; i++) r->tz_id[i] = (UChar)(unsigned char)r->tz_name[i];
}

static int parse_timezone(struct loader *ld, const yaml_node_t *node) {
  char buf[SHOW_LEN];
  if (node->type != YAML_SCALAR_NODE)
    return fail(ld, node, "timezone must be an IANA zone name, not %s", kind(node));
  const unsigned char *s = node->data.scalar.value;
  size_t len = node->data.scalar.length;
  bool ok = len > 0 && len < TZ_LEN;
  for (size_t i = 0; ok && i < len; i++) {
    if (s[i] <= 0x20 || s[i] >= 0x7f) ok = false;
  }
  UChar id[TZ_LEN];
  UChar canonical[2 * TZ_LEN];
  UBool is_system = 0;
  UErrorCode st = U_ZERO_ERROR;
  if (ok) {
    for (size_t i = 0; i < len; i++) id[i] = (UChar)s[i];
    ucal_getCanonicalTimeZoneID(id, (int32_t)len, canonical, 2 * TZ_LEN, &is_system, &st);
  }
  /* ICU accepts custom ids ("GMT+05:00") and maps unknown ones to Etc/Unknown: neither is a
   * system (IANA) zone. */
  if (!ok || U_FAILURE(st) || !is_system) {
    return fail(ld, node, "unknown time zone '%s' (expected an IANA name such as Europe/Paris)",
                show(node, buf));
  }
  set_zone(ld->rules, (const char *)s, len);
  return CCM_OK;
}

static void add_warning(struct ccm_rules *r, const char *text) {
  if (r->warning_count == MAX_WARNINGS) return;
  snprintf(r->warnings[r->warning_count++], WARNING_LEN, "%s", text);
}

static int parse_root(struct loader *ld, const yaml_node_t *root) {
  static const char *const names[] = {"global_rules", "campaign_rules", "defaults",
                                      "scheduler",    "timezone",       "status_retry_rules"};
  const yaml_node_t *v[6];
  if (root->type != YAML_MAPPING_NODE)
    return fail(ld, root, "the top level must be a mapping, not %s", kind(root));
  int rc = read_mapping(ld, root, "the top level", names, 6, v);
  if (rc != CCM_OK) return rc;
  if (v[0] == NULL) return fail(ld, root, "missing required key 'global_rules'");
  rc = parse_rule_list(ld, v[0], "global_rules", true, &ld->rules->global);
  if (rc == CCM_OK && v[1] != NULL) rc = parse_campaign_list(ld, v[1]);
  if (rc == CCM_OK && v[2] != NULL) rc = parse_defaults(ld, v[2]);
  if (rc == CCM_OK && v[3] != NULL) rc = parse_scheduler(ld, v[3]);
  if (rc == CCM_OK && v[4] != NULL) rc = parse_timezone(ld, v[4]);
  if (rc == CCM_OK && v[5] != NULL)
    add_warning(ld->rules, "status_retry_rules is ignored: FAILED stays terminal");
  return rc;
}

/* ---- YAML input ---- */

/* Whether the character at mark is a tab, YAML's most common stumbling block. The mark's
 * column counts characters, so UTF-8 continuation bytes are skipped while walking to it. */
static bool is_tab_at(const char *yaml, size_t len, yaml_mark_t mark) {
  size_t i = 0;
  for (size_t line = 0; line < mark.line && i < len; i++) {
    if (yaml[i] == '\n') line++;
  }
  for (size_t col = 0; i < len && yaml[i] != '\n'; i++) {
    if (((unsigned char)yaml[i] & 0xc0) == 0x80) continue;
    if (col == mark.column) return yaml[i] == '\t';
    col++;
  }
  return false;
}

/* Formats a libyaml failure as "line N: problem (context at line M)". */
static int syntax_error(const yaml_parser_t *p, const char *yaml, size_t len, char *err,
                        size_t errlen) {
  if (p->error == YAML_MEMORY_ERROR) {
    set_err(err, errlen, "out of memory while reading YAML");
    return CCM_ENOMEM;
  }
  size_t line = p->problem_mark.line + 1;
  if (p->error == YAML_READER_ERROR) {
    /* The reader reports a byte offset, not a mark. */
    line = 1;
    for (size_t i = 0; i < p->problem_offset && i < len; i++) {
      if (yaml[i] == '\n') line++;
    }
  }
  const char *problem = p->problem != NULL ? p->problem : "invalid YAML";
  const char *hint = p->error == YAML_SCANNER_ERROR && is_tab_at(yaml, len, p->problem_mark)
                         ? ": a tab; indent with spaces"
                         : "";
  if (p->context != NULL) {
    set_err(err, errlen, "line %zu: %s%s (%s at line %zu)", line, problem, hint, p->context,
            p->context_mark.line + 1);
  } else {
    set_err(err, errlen, "line %zu: %s%s", line, problem, hint);
  }
  return CCM_EINVAL;
}

/* Streams the events once before loading: rejects syntax errors, nesting deeper than MAX_DEPTH
 * (libyaml's loader recurses, and deep flow nesting is quadratic in its scanner) and more than
 * one document. */
static int check_events(const char *yaml, size_t len, char *err, size_t errlen) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) {
    set_err(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
  int rc = CCM_OK;
  int depth = 0;
  int documents = 0;
  bool done = false;
  while (rc == CCM_OK && !done) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      rc = syntax_error(&p, yaml, len, err, errlen);
      break;
    }
    size_t line = ev.start_mark.line + 1;
    switch (ev.type) {
      case YAML_SEQUENCE_START_EVENT:
      case YAML_MAPPING_START_EVENT:
        depth++;
        if (depth > MAX_DEPTH) {
          set_err(err, errlen, "line %zu: nesting deeper than %d levels", line, MAX_DEPTH);
          rc = CCM_EINVAL;
        }
        break;
      case YAML_SEQUENCE_END_EVENT:
      case YAML_MAPPING_END_EVENT:
        depth--;
        break;
      case YAML_DOCUMENT_START_EVENT:
        documents++;
        if (documents > 1) {
          set_err(err, errlen, "line %zu: only one YAML document is allowed", line);
          rc = CCM_EINVAL;
        }
        break;
      case YAML_STREAM_END_EVENT:
        done = true;
        break;
      default:
        break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  return rc;
}

static int parse_yaml(struct ccm_rules *r, const char *yaml, size_t len, char *err, size_t errlen) {
  int rc = check_events(yaml, len, err, errlen);
  if (rc != CCM_OK) return rc;
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) {
    set_err(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
  yaml_document_t doc;
  if (!yaml_parser_load(&p, &doc)) {
    /* yaml_parser_load frees the partial document itself. */
    rc = syntax_error(&p, yaml, len, err, errlen);
    yaml_parser_delete(&p);
    return rc;
  }
  struct loader ld = {.doc = &doc, .rules = r, .err = err, .errlen = errlen};
  const yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (root == NULL) {
    set_err(err, errlen, "line 1: the file is empty (expected global_rules, defaults, ...)");
    rc = CCM_EINVAL;
  } else {
    rc = parse_root(&ld, root);
  }
  yaml_document_delete(&doc);
  yaml_parser_delete(&p);
  return rc;
}

/* ---- calendar ---- */

static int icu_status(UErrorCode st) {
  if (U_SUCCESS(st)) return CCM_OK;
  return st == U_MEMORY_ALLOCATION_ERROR ? CCM_ENOMEM : CCM_EINTERNAL;
}

/* Opens a calendar in the rules' zone; one per call, as a UCalendar is not thread-safe. */
static int open_calendar(const struct ccm_rules *r, UCalendar **out) {
  UErrorCode st = U_ZERO_ERROR;
  UCalendar *cal = ucal_open(r->tz_id, -1, "en_US_POSIX", UCAL_GREGORIAN, &st);
  if (U_FAILURE(st)) {
    if (cal != NULL) ucal_close(cal);
    return icu_status(st);
  }
  ucal_setAttribute(cal, UCAL_LENIENT, 1); /* day-of-month overflow rolls into the next month */
  ucal_setAttribute(cal, UCAL_SKIPPED_WALL_TIME, UCAL_WALLTIME_NEXT_VALID);
  ucal_setAttribute(cal, UCAL_REPEATED_WALL_TIME, UCAL_WALLTIME_FIRST);
  *out = cal;
  return CCM_OK;
}

struct local_day {
  int year;
  int month; /* UCAL_JANUARY based */
  int date;
  int dow; /* UCAL_SUNDAY .. UCAL_SATURDAY */
};

static void read_day(UCalendar *cal, struct local_day *day, UErrorCode *st) {
  day->year = ucal_get(cal, UCAL_YEAR, st);
  day->month = ucal_get(cal, UCAL_MONTH, st);
  day->date = ucal_get(cal, UCAL_DATE, st);
  day->dow = ucal_get(cal, UCAL_DAY_OF_WEEK, st);
}

/* The local calendar day containing instant ms. */
static void day_of(UCalendar *cal, int64_t ms, struct local_day *day, UErrorCode *st) {
  ucal_setMillis(cal, (UDate)ms, st);
  read_day(cal, day, st);
}

/* The local day k days after base; noon is used because midnight may not exist. */
static void shift_day(UCalendar *cal, const struct local_day *base, int k, struct local_day *day,
                      UErrorCode *st) {
  ucal_clear(cal);
  ucal_setDateTime(cal, base->year, base->month, base->date + k, 12, 0, 0, st);
  read_day(cal, day, st);
}

/* The instant of wall time minute_of_day on day + plus_days, DST rules applied by ICU. */
static int64_t wall_instant(UCalendar *cal, const struct local_day *day, int plus_days,
                            int minute_of_day, UErrorCode *st) {
  ucal_clear(cal); /* also zeroes seconds and milliseconds */
  ucal_setDateTime(cal, day->year, day->month, day->date + plus_days, minute_of_day / 60,
                   minute_of_day % 60, 0, st);
  return (int64_t)ucal_getMillis(cal, st);
}

/* The occurrence [*start, *end) of s that starts on day. */
static void occurrence(UCalendar *cal, const struct slot *s, const struct local_day *day,
                       int64_t *start, int64_t *end, UErrorCode *st) {
  *start = wall_instant(cal, day, 0, s->start_min, st);
  *end = wall_instant(cal, day, s->end_min < s->start_min ? 1 : 0, s->end_min, st);
}

/* The first slot of set (file order) with an occurrence containing t, or NULL. Only
 * occurrences starting on t's local day or the day before can contain it. */
static const struct slot *containing_slot(UCalendar *cal, const struct ccm_rules *r,
                                          const struct rule_set *set, int64_t t, UErrorCode *st) {
  struct local_day days[2];
  day_of(cal, t, &days[1], st);
  shift_day(cal, &days[1], -1, &days[0], st);
  for (size_t i = 0; i < set->count && U_SUCCESS(*st); i++) {
    const struct slot *s = &r->slots[set->first + i];
    for (int d = 0; d < 2; d++) {
      if ((s->days & (1u << days[d].dow)) == 0) continue;
      int64_t start = 0;
      int64_t end = 0;
      occurrence(cal, s, &days[d], &start, &end, st);
      if (U_SUCCESS(*st) && start <= t && t < end) return s;
    }
  }
  return NULL;
}

/* The earliest instant in [a, a + 7x24h) inside a slot of set; false when there is none. */
static bool next_window(UCalendar *cal, const struct ccm_rules *r, const struct rule_set *set,
                        int64_t a, int64_t *out, UErrorCode *st) {
  int64_t horizon = a + SEARCH_SPAN_MS;
  int64_t best = INT64_MAX;
  struct local_day base;
  day_of(cal, a, &base, st);
  /* From the day before a (a midnight-crossing slot may hold a) to day +8 (the horizon's local
   * day, whatever the DST shifts in between). */
  for (int k = -1; k <= 8 && U_SUCCESS(*st); k++) {
    struct local_day day;
    shift_day(cal, &base, k, &day, st);
    for (size_t i = 0; i < set->count && U_SUCCESS(*st); i++) {
      const struct slot *s = &r->slots[set->first + i];
      if ((s->days & (1u << day.dow)) == 0) continue;
      int64_t start = 0;
      int64_t end = 0;
      occurrence(cal, s, &day, &start, &end, st);
      if (start <= a && a < end) {
        *out = a;
        return true;
      }
      if (start > a && start < horizon && start < best) best = start;
    }
    /* Occurrences of later days start later still. */
    if (best != INT64_MAX) break;
  }
  if (best == INT64_MAX || U_FAILURE(*st)) return false;
  *out = best;
  return true;
}

/* ---- public API ---- */

int ccm_rules_load_string(const char *yaml, size_t len, struct ccm_rules **out, char *err,
                          size_t errlen) {
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (out == NULL) {
    set_err(err, errlen, "no output pointer");
    return CCM_EINVAL;
  }
  *out = NULL;
  if (yaml == NULL) {
    set_err(err, errlen, "no YAML text");
    return CCM_EINVAL;
  }
  if (len > MAX_INPUT_BYTES) {
    set_err(err, errlen, "retry rules larger than %d bytes", MAX_INPUT_BYTES);
    return CCM_EINVAL;
  }
  struct ccm_rules *r = calloc(1, sizeof *r);
  if (r == NULL) {
    set_err(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  r->settings = builtin_settings;
  set_zone(r, "UTC", 3);
  int rc = parse_yaml(r, yaml, len, err, errlen);
  if (rc == CCM_OK) {
    /* Fail now, not on the first decision, when ICU cannot build the calendar. */
    UCalendar *cal = NULL;
    rc = open_calendar(r, &cal);
    if (rc != CCM_OK)
      set_err(err, errlen, "cannot open a calendar for zone '%s'", r->tz_name);
    else
      ucal_close(cal);
  }
  if (rc != CCM_OK) {
    ccm_rules_destroy(r);
    return rc;
  }
  *out = r;
  return CCM_OK;
}

int ccm_rules_load_file(const char *path, struct ccm_rules **out, char *err, size_t errlen) {
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (out == NULL || path == NULL) {
    set_err(err, errlen, "no path or output pointer");
    return CCM_EINVAL;
  }
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return CCM_EIO;
  }
  char *buf = malloc((size_t)MAX_INPUT_BYTES + 1);
  if (buf == NULL) {
    fclose(f);
    set_err(err, errlen, "out of memory");
    return CCM_ENOMEM;
  }
  /* Read one byte past the limit to tell "exactly at the limit" from "too large". */
  size_t len = fread(buf, 1, (size_t)MAX_INPUT_BYTES + 1, f);
  bool failed = ferror(f) != 0;
  int saved = errno;
  fclose(f);
  int rc = CCM_OK;
  if (failed) {
    set_err(err, errlen, "cannot read %s: %s", path, strerror(saved));
    rc = CCM_EIO;
  } else if (len > MAX_INPUT_BYTES) {
    set_err(err, errlen, "%s is larger than %d bytes", path, MAX_INPUT_BYTES);
    rc = CCM_EINVAL;
  } else {
    rc = ccm_rules_load_string(buf, len, out, err, errlen);
  }
  free(buf);
  return rc;
}

void ccm_rules_destroy(struct ccm_rules *rules) {
  if (rules == NULL) return;
  free(rules->slots);
  free(rules->campaigns);
  free(rules);
}

/* NULL rules answer the built-in values, so a caller without a file still gets sane numbers. */
const struct ccm_rules_settings *ccm_rules_settings(const struct ccm_rules *rules) {
  if (rules == NULL) return &builtin_settings;
  return &rules->settings;
}

const char *ccm_rules_timezone(const struct ccm_rules *rules) {
  if (rules == NULL) return "UTC";
  return rules->tz_name;
}

size_t ccm_rules_warning_count(const struct ccm_rules *rules) {
  if (rules == NULL) return 0;
  return rules->warning_count;
}

const char *ccm_rules_warning(const struct ccm_rules *rules, size_t i) {
  if (rules == NULL || i >= rules->warning_count) return NULL;
  return rules->warnings[i];
}

int ccm_rules_default_max_attempts(const struct ccm_rules *rules, int override) {
  if (override > 0) return override;
  return ccm_rules_settings(rules)->default_max_attempts;
}

static const struct rule_set *rule_set_for(const struct ccm_rules *r, int64_t campaign_id) {
  for (size_t i = 0; i < r->campaign_count; i++) {
    if (r->campaigns[i].campaign_id == campaign_id) return &r->campaigns[i];
  }
  return &r->global;
}

int ccm_rules_decide(const struct ccm_rules *rules, int64_t campaign_id, int64_t t_ms,
                     int attempt_count, int max_attempts_override, struct ccm_retry_decision *out) {
  if (out == NULL) return CCM_EINVAL;
  memset(out, 0, sizeof *out);
  if (rules == NULL || t_ms < 0 || t_ms > T_MAX_MS || attempt_count < 0) return CCM_EINVAL;

  UCalendar *cal = NULL;
  int rc = open_calendar(rules, &cal);
  if (rc != CCM_OK) return rc;
  UErrorCode st = U_ZERO_ERROR;
  const struct rule_set *set = rule_set_for(rules, campaign_id);
  const struct slot *s = containing_slot(cal, rules, set, t_ms, &st);
  int max_attempts =
      s != NULL ? s->max_attempts : ccm_rules_default_max_attempts(rules, max_attempts_override);
  int interval = s != NULL ? s->interval_min : rules->settings.default_retry_interval_minutes;
  out->max_attempts = max_attempts;
  /* Exhaustion is checked before any window search (SPEC 8). */
  if (U_SUCCESS(st) && attempt_count >= max_attempts) {
    snprintf(out->message, sizeof out->message, "Max retry attempts reached (%d)", attempt_count);
    ucal_close(cal);
    return CCM_OK;
  }
  int64_t next = 0;
  bool found =
      U_SUCCESS(st) && next_window(cal, rules, set, t_ms + interval * MS_PER_MINUTE, &next, &st);
  ucal_close(cal);
  rc = icu_status(st);
  if (rc != CCM_OK) {
    memset(out, 0, sizeof *out);
    return rc;
  }
  if (!found) {
    snprintf(out->message, sizeof out->message, "No retry window available");
    return CCM_OK;
  }
  out->retry = true;
  out->next_retry_at_ms = next;
  return CCM_OK;
}
