/* Unit tests of the retry-rule engine (scheduler/ccm_rules.c, SPEC 8).
 *
 * Expected instants are written as independent constants: UTC cases count from
 * 2025-01-06T00:00:00Z (a Monday, Unix ms 1736121600000); time-zone cases use Unix ms computed
 * with `date -u -d <ISO> +%s`, with the ISO instant and the New York wall time in comments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ccm_error.h"
#include "ccm_rules.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define M_MS INT64_C(60000)
#define H_MS INT64_C(3600000)
#define D_MS INT64_C(86400000)
#define MON INT64_C(1736121600000) /* 2025-01-06T00:00:00Z, Monday */
/* UTC instant on day d after MON (0 Mon .. 4 Fri, 5 Sat, 6 Sun, 7 next Mon) at h:m. */
#define AT(d, h, m) (MON + (d)*D_MS + (h)*H_MS + (m)*M_MS)

/* ---- fixtures ---- */

/* The seed README's example (SPEC 8): global weekday 09-17 x3/60, campaign 1 every day
 * 00:00-23:59 x5/30, defaults 3/60. */
static const char SEED[] =
    "# Global retry rules (apply to all campaigns)\n"
    "global_rules:\n"
    "  - name: \"Weekday Business Hours\"\n"
    "    days: [\"monday\", \"tuesday\", \"wednesday\", \"thursday\", \"friday\"]\n"
    "    time_slots:\n"
    "      - start_time: \"09:00\"\n"
    "        end_time: \"17:00\"\n"
    "        max_attempts: 3\n"
    "        retry_interval_minutes: 60\n"
    "campaign_rules:\n"
    "  - campaign_id: 1\n"
    "    name: \"High Priority Campaign\"\n"
    "    rules:\n"
    "      - name: \"Aggressive Retry\"\n"
    "        days: [\"monday\", \"tuesday\", \"wednesday\", \"thursday\", \"friday\", "
    "\"saturday\", \"sunday\"]\n"
    "        time_slots:\n"
    "          - start_time: \"00:00\"\n"
    "            end_time: \"23:59\"\n"
    "            max_attempts: 5\n"
    "            retry_interval_minutes: 30\n"
    "defaults:\n"
    "  max_attempts: 3\n"
    "  retry_interval_minutes: 60\n"
    "  concurrent_call_limit: 100\n"
    "scheduler:\n"
    "  check_interval_minutes: 1\n"
    "  batch_size: 100\n"
    "  max_concurrent_retries: 50\n";

/* Slot values differ from the defaults so each case shows which applied. Unquoted and
 * single-quoted times, mixed-case day names. */
static const char BIZ[] =
    "global_rules:\n"
    "  - name: Business\n"
    "    days: [Monday, TUESDAY, wednesday, Thursday, fRiDaY]\n"
    "    time_slots:\n"
    "      - start_time: 09:00\n"
    "        end_time: '17:00'\n"
    "        max_attempts: 4\n"
    "        retry_interval_minutes: 15\n"
    "defaults:\n"
    "  max_attempts: 2\n"
    "  retry_interval_minutes: 120\n";

/* Friday 22:00 to Saturday 02:00. */
static const char NIGHT[] =
    "global_rules:\n"
    "  - name: Night\n"
    "    days: [friday]\n"
    "    time_slots:\n"
    "      - start_time: \"22:00\"\n"
    "        end_time: \"02:00\"\n"
    "        max_attempts: 6\n"
    "        retry_interval_minutes: 20\n"
    "defaults:\n"
    "  max_attempts: 3\n"
    "  retry_interval_minutes: 30\n";

/* One hour a week. */
static const char WEEKLY[] =
    "global_rules:\n"
    "  - days: [monday]\n"
    "    time_slots:\n"
    "      - {start_time: \"09:00\", end_time: \"10:00\", max_attempts: 3, "
    "retry_interval_minutes: 30}\n"
    "defaults: {max_attempts: 3, retry_interval_minutes: 60}\n";

/* Overlapping slots: the first in file order wins. */
static const char OVERLAP[] =
    "global_rules:\n"
    "  - name: first\n"
    "    days: [monday]\n"
    "    time_slots:\n"
    "      - {start_time: \"09:00\", end_time: \"12:00\", max_attempts: 4, "
    "retry_interval_minutes: 15}\n"
    "  - name: second\n"
    "    days: [monday]\n"
    "    time_slots:\n"
    "      - {start_time: \"08:00\", end_time: \"18:00\", max_attempts: 7, "
    "retry_interval_minutes: 45}\n";

/* Campaign 7 overrides with an empty rule set: no window ever. */
static const char NEVER[] =
    "global_rules:\n"
    "  - days: [monday]\n"
    "    time_slots:\n"
    "      - {start_time: \"09:00\", end_time: \"17:00\", max_attempts: 3, "
    "retry_interval_minutes: 60}\n"
    "campaign_rules:\n"
    "  - campaign_id: 7\n"
    "    name: Never retry\n"
    "    rules: []\n"
    "defaults: {max_attempts: 3, retry_interval_minutes: 10}\n";

static const char NO_GLOBAL[] = "global_rules: []\n";

/* America/New_York: DST starts 2025-03-09 02:00 EST (-> 03:00 EDT) and ends 2025-11-02
 * 02:00 EDT (-> 01:00 EST). Campaign 9's slot ends inside the spring gap. */
static const char NEW_YORK[] =
    "timezone: America/New_York\n"
    "global_rules:\n"
    "  - name: Sunday\n"
    "    days: [sunday]\n"
    "    time_slots:\n"
    "      - {start_time: \"02:30\", end_time: \"04:00\", max_attempts: 3, "
    "retry_interval_minutes: 10}\n"
    "      - {start_time: \"01:00\", end_time: \"01:30\", max_attempts: 3, "
    "retry_interval_minutes: 10}\n"
    "  - name: Weekdays\n"
    "    days: [monday, tuesday, wednesday, thursday, friday]\n"
    "    time_slots:\n"
    "      - {start_time: \"09:00\", end_time: \"17:00\", max_attempts: 3, "
    "retry_interval_minutes: 60}\n"
    "campaign_rules:\n"
    "  - campaign_id: 9\n"
    "    rules:\n"
    "      - days: [sunday]\n"
    "        time_slots:\n"
    "          - {start_time: \"00:30\", end_time: \"02:15\", max_attempts: 4, "
    "retry_interval_minutes: 5}\n"
    "defaults:\n"
    "  max_attempts: 3\n"
    "  retry_interval_minutes: 30\n";

/* America/New_York, only one minute a week: Saturday 12:00-12:01. */
static const char NY_SATURDAY[] =
    "timezone: America/New_York\n"
    "global_rules:\n"
    "  - name: Saturday noon minute\n"
    "    days: [saturday]\n"
    "    time_slots:\n"
    "      - {start_time: \"12:00\", end_time: \"12:01\", max_attempts: 3, "
    "retry_interval_minutes: 30}\n";

/* Asia/Kolkata, UTC+05:30 all year. */
static const char KOLKATA[] =
    "timezone: Asia/Kolkata\n"
    "global_rules:\n"
    "  - days: [monday, tuesday, wednesday, thursday, friday]\n"
    "    time_slots:\n"
    "      - {start_time: \"09:00\", end_time: \"17:00\", max_attempts: 3, "
    "retry_interval_minutes: 60}\n";

/* ---- decisions ---- */

struct decide_case {
  const char *name;
  const char *yaml;
  int64_t campaign_id;
  int64_t t_ms;
  int attempt_count;
  int override;
  bool retry;
  int64_t next_ms; /* when retry */
  int max_attempts;
  const char *message; /* when !retry */
};

#define RETRY(n, y, c, t, a, o, next, max) \
  { n, y, c, t, a, o, true, next, max, "" }
#define STOP(n, y, c, t, a, o, max, msg) \
  { n, y, c, t, a, o, false, 0, max, msg }
#define NO_WINDOW "No retry window available"

static struct decide_case decide_cases[] = {
    /* Weekday in the business slot: the slot's interval and max_attempts. */
    RETRY("biz_monday_in_slot", BIZ, 1, AT(0, 10, 0), 1, 0, AT(0, 10, 15), 4),
    RETRY("biz_case_insensitive_tuesday", BIZ, 1, AT(1, 10, 0), 1, 0, AT(1, 10, 15), 4),
    RETRY("biz_case_insensitive_friday", BIZ, 1, AT(4, 12, 0), 1, 0, AT(4, 12, 15), 4),
    RETRY("biz_ms_precision", BIZ, 1, AT(0, 10, 0) + 123, 1, 0, AT(0, 10, 15) + 123, 4),
    RETRY("biz_start_inclusive_unquoted", BIZ, 1, AT(0, 9, 0), 1, 0, AT(0, 9, 15), 4),
    /* t at the (single-quoted) end is outside: defaults 120 min, max 2, next day 09:00. */
    RETRY("biz_end_exclusive_quoted", BIZ, 1, AT(0, 17, 0), 1, 0, AT(1, 9, 0), 2),
    RETRY("biz_last_ms_in_slot", BIZ, 1, AT(0, 17, 0) - 1, 1, 0, AT(1, 9, 0), 4),
    RETRY("biz_retry_past_end_next_day", BIZ, 1, AT(0, 16, 50), 1, 0, AT(1, 9, 0), 4),
    RETRY("biz_retry_just_before_end", BIZ, 1, AT(0, 16, 44) + 59999, 1, 0, AT(0, 16, 59) + 59999,
          4),
    /* Outside every slot: the defaults. */
    RETRY("biz_early_defaults_land_on_start", BIZ, 1, AT(0, 7, 0), 1, 0, AT(0, 9, 0), 2),
    RETRY("biz_early_defaults_wait_for_start", BIZ, 1, AT(0, 7, 0) - 1, 1, 0, AT(0, 9, 0), 2),
    RETRY("biz_saturday_weekend_defaults", BIZ, 1, AT(5, 10, 0), 1, 0, AT(7, 9, 0), 2),
    RETRY("biz_sunday_night_to_monday", BIZ, 1, AT(6, 23, 0), 1, 0, AT(7, 9, 0), 2),
    RETRY("biz_friday_evening_to_monday", BIZ, 1, AT(4, 16, 50), 1, 0, AT(7, 9, 0), 4),
    /* Attempts: the slot's max_attempts, the defaults', and the MAX_RETRY_ATTEMPTS override. */
    RETRY("biz_slot_max_not_reached", BIZ, 1, AT(0, 10, 0), 3, 0, AT(0, 10, 15), 4),
    STOP("biz_slot_max_reached", BIZ, 1, AT(0, 10, 0), 4, 0, 4, "Max retry attempts reached (4)"),
    STOP("biz_slot_max_exceeded", BIZ, 1, AT(0, 10, 0), 6, 0, 4, "Max retry attempts reached (6)"),
    STOP("biz_defaults_max_reached", BIZ, 1, AT(5, 10, 0), 2, 0, 2,
         "Max retry attempts reached (2)"),
    RETRY("biz_override_raises_defaults", BIZ, 1, AT(5, 10, 0), 2, 5, AT(7, 9, 0), 5),
    STOP("biz_override_lowers_defaults", BIZ, 1, AT(5, 10, 0), 1, 1, 1,
         "Max retry attempts reached (1)"),
    STOP("biz_override_ignored_in_slot", BIZ, 1, AT(0, 10, 0), 4, 10, 4,
         "Max retry attempts reached (4)"),
    RETRY("biz_zero_attempts", BIZ, 1, AT(0, 10, 0), 0, 0, AT(0, 10, 15), 4),

    /* The seed example: campaign 1 overrides the global rules. */
    RETRY("seed_campaign1_saturday", SEED, 1, AT(5, 10, 0), 1, 0, AT(5, 10, 30), 5),
    RETRY("seed_other_campaign_saturday", SEED, 2, AT(5, 10, 0), 1, 0, AT(7, 9, 0), 3),
    RETRY("seed_other_campaign_weekday", SEED, 2, AT(2, 10, 0), 1, 0, AT(2, 11, 0), 3),
    RETRY("seed_campaign1_weekday", SEED, 1, AT(2, 10, 0), 4, 0, AT(2, 10, 30), 5),
    STOP("seed_campaign1_exhausted", SEED, 1, AT(2, 10, 0), 5, 0, 5,
         "Max retry attempts reached (5)"),
    /* 23:29 + 30 min = 23:59, the excluded last minute: wait for 00:00. */
    RETRY("seed_campaign1_lands_in_2359_gap", SEED, 1, AT(0, 23, 29), 1, 0, AT(1, 0, 0), 5),
    RETRY("seed_campaign1_past_midnight", SEED, 1, AT(0, 23, 40), 1, 0, AT(1, 0, 10), 5),
    /* 23:59:30 is outside the slot: defaults (60 min, max 3). */
    RETRY("seed_campaign1_2359_defaults", SEED, 1, AT(0, 23, 59) + 30000, 1, 0,
          AT(1, 0, 59) + 30000, 3),
    STOP("seed_campaign1_2359_defaults_max", SEED, 1, AT(0, 23, 59) + 30000, 3, 0, 3,
         "Max retry attempts reached (3)"),
    RETRY("seed_campaign1_2359_override", SEED, 1, AT(0, 23, 59) + 30000, 3, 4,
          AT(1, 0, 59) + 30000, 4),

    /* Midnight-crossing slot, Friday 22:00 -> Saturday 02:00. */
    RETRY("night_before_midnight", NIGHT, 1, AT(4, 23, 0), 1, 0, AT(4, 23, 20), 6),
    RETRY("night_after_midnight", NIGHT, 1, AT(5, 1, 0), 1, 0, AT(5, 1, 20), 6),
    RETRY("night_retry_crosses_midnight", NIGHT, 1, AT(4, 23, 50), 1, 0, AT(5, 0, 10), 6),
    /* 01:50 + 20 min = 02:10 is past the end: next Friday 22:00, 6 days 19h50 later. */
    RETRY("night_seven_day_search", NIGHT, 1, AT(5, 1, 50), 1, 0, AT(11, 22, 0), 6),
    RETRY("night_end_exclusive", NIGHT, 1, AT(5, 2, 0), 1, 0, AT(11, 22, 0), 3),
    RETRY("night_before_start_defaults", NIGHT, 1, AT(4, 21, 0), 1, 0, AT(4, 22, 0), 3),
    RETRY("night_defaults_land_inside", NIGHT, 1, AT(4, 21, 45), 1, 0, AT(4, 22, 15), 3),
    /* Early Sunday is not covered: the slot starts on Fridays only. */
    RETRY("night_sunday_early_not_covered", NIGHT, 1, AT(6, 1, 0), 1, 0, AT(11, 22, 0), 3),
    RETRY("night_friday_early_not_covered", NIGHT, 1, AT(4, 1, 0), 1, 0, AT(4, 22, 0), 3),
    RETRY("night_thursday_late_not_covered", NIGHT, 1, AT(3, 23, 0), 1, 0, AT(4, 22, 0), 3),

    /* One hour a week: the search reaches the next week. */
    RETRY("weekly_after_slot", WEEKLY, 1, AT(0, 10, 30), 1, 0, AT(7, 9, 0), 3),
    RETRY("weekly_in_slot_past_end", WEEKLY, 1, AT(0, 9, 45), 1, 0, AT(7, 9, 0), 3),
    RETRY("weekly_tuesday", WEEKLY, 1, AT(1, 9, 0), 1, 0, AT(7, 9, 0), 3),

    /* Overlapping slots: the first in file order supplies the values. */
    RETRY("overlap_first_wins", OVERLAP, 1, AT(0, 10, 0), 1, 0, AT(0, 10, 15), 4),
    RETRY("overlap_only_second", OVERLAP, 1, AT(0, 8, 30), 1, 0, AT(0, 9, 15), 7),
    RETRY("overlap_second_after_first", OVERLAP, 1, AT(0, 13, 0), 1, 0, AT(0, 13, 45), 7),

    /* An empty rule set: no window at all, but exhaustion is checked first. */
    STOP("never_no_window", NEVER, 7, AT(0, 10, 0), 1, 0, 3, NO_WINDOW),
    STOP("never_exhausted_first", NEVER, 7, AT(0, 10, 0), 3, 0, 3,
         "Max retry attempts reached (3)"),
    STOP("never_override", NEVER, 7, AT(0, 10, 0), 3, 8, 8, NO_WINDOW),
    RETRY("never_other_campaign_global", NEVER, 8, AT(0, 10, 0), 1, 0, AT(0, 11, 0), 3),
    STOP("no_global_rules", NO_GLOBAL, 1, AT(0, 10, 0), 1, 0, 3, NO_WINDOW),

    /* Spring forward, 2025-03-09. */
    /* 06:20Z = 01:20 EST in 01:00-01:30; +10 min = 01:30 (end); the 02:30 slot starts in
     * the gap, so at the first instant after it: 03:00 EDT = 07:00Z. */
    RETRY("ny_spring_start_in_gap", NEW_YORK, 1, 1741501200000, 1, 0, 1741503600000, 3),
    /* 07:30Z = 03:30 EDT, inside [07:00Z, 08:00Z): +10 min. */
    RETRY("ny_spring_after_gap_in_slot", NEW_YORK, 1, 1741505400000, 1, 0, 1741506000000, 3),
    /* 06:59:59Z = 01:59:59 EST, outside: defaults 30 min -> 07:29:59Z, inside. */
    RETRY("ny_spring_defaults_into_slot", NEW_YORK, 1, 1741503599000, 1, 0, 1741505399000, 3),
    /* Campaign 9, slot 00:30-02:15: its end is in the gap, so it ends at 07:00Z.
     * 06:55Z (01:55 EST) + 5 min = 07:00Z, outside: next Sunday 00:30 EDT = 03-16T04:30Z. */
    RETRY("ny_spring_end_in_gap", NEW_YORK, 9, 1741503300000, 1, 0, 1742099400000, 4),
    STOP("ny_spring_end_in_gap_inside", NEW_YORK, 9, 1741503600000 - 1, 4, 0, 4,
         "Max retry attempts reached (4)"),
    /* 07:05Z = 03:05 EDT is after the slot: defaults' max 3. */
    STOP("ny_spring_end_in_gap_outside", NEW_YORK, 9, 1741503900000, 4, 0, 3,
         "Max retry attempts reached (4)"),
    /* Weekday slot before and after the change: 09:00 EST = 14:00Z, 09:00 EDT = 13:00Z. */
    RETRY("ny_weekday_est", NEW_YORK, 1, 1741352400000, 1, 0, 1741356000000, 3),
    RETRY("ny_weekday_edt", NEW_YORK, 1, 1741609800000, 1, 0, 1741611600000, 3),
    /* Saturday 12:00 EST 03-08 (17:00Z) + 30 min: next Saturday 12:00 EDT = 03-15T16:00Z,
     * 166.5 h later (a 167-hour week). */
    RETRY("ny_spring_short_week", NY_SATURDAY, 1, 1741453200000, 1, 0, 1742054400000, 3),

    /* Fall back, 2025-11-02: 01:00-02:00 happens twice (EDT 05:00Z-06:00Z, EST 06:00Z-07:00Z). */
    /* 04:00Z = 00:00 EDT; defaults 30 -> 00:30; the 01:00 slot starts at its first
     * occurrence, 05:00Z. */
    RETRY("ny_fall_start_first_occurrence", NEW_YORK, 1, 1762056000000, 1, 0, 1762059600000, 3),
    /* 04:50Z = 00:50 EDT; defaults 30 -> 05:20Z = 01:20 EDT, inside the first 01:00-01:30. */
    RETRY("ny_fall_first_pass_inside", NEW_YORK, 1, 1762059000000, 1, 0, 1762060800000, 3),
    /* 05:10Z = 01:10 EDT is inside (slot interval 10). */
    RETRY("ny_fall_in_slot", NEW_YORK, 1, 1762060200000, 1, 0, 1762060800000, 3),
    /* 06:10Z = 01:10 EST, the second pass, is outside: defaults 30 -> 06:40Z (01:40 EST),
     * next slot 02:30 EST = 07:30Z. */
    RETRY("ny_fall_second_pass_outside", NEW_YORK, 1, 1762063800000, 1, 0, 1762068600000, 3),
    /* Saturday 12:00 EDT 10-25 (16:00Z) + 30 min: next 12:00 EDT 11-01 = 16:00Z, 167.5 h. */
    RETRY("ny_fall_week_before", NY_SATURDAY, 1, 1761408000000, 1, 0, 1762012800000, 3),
    /* Saturday 12:00 EDT 11-01 (16:00Z) + 30 min = 16:30Z; the next 12:00 is 11-08 12:00 EST
     * = 17:00Z, 168.5 h later, beyond the 7x24 h search (a 169-hour week). */
    STOP("ny_fall_long_week_no_window", NY_SATURDAY, 1, 1762012800000, 1, 0, 3, NO_WINDOW),

    /* A half-hour offset. 03:00Z = 08:30 IST; defaults 60 -> 09:30 IST, inside. */
    RETRY("kolkata_defaults_into_slot", KOLKATA, 1, AT(0, 3, 0), 1, 0, AT(0, 4, 0), 3),
    /* 11:00Z = 16:30 IST + 60 = 17:30 IST: next day 09:00 IST = 03:30Z. */
    RETRY("kolkata_next_day", KOLKATA, 1, AT(0, 11, 0), 1, 0, AT(1, 3, 30), 3),
};

static void run_decide(void **state) {
  const struct decide_case *c = *state;
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *rules = NULL;
  int rc = ccm_rules_load_string(c->yaml, strlen(c->yaml), &rules, err, sizeof err);
  if (rc != CCM_OK) print_error("load failed: %s\n", err);
  assert_int_equal(rc, CCM_OK);
  struct ccm_retry_decision d;
  rc = ccm_rules_decide(rules, c->campaign_id, c->t_ms, c->attempt_count, c->override, &d);
  ccm_rules_destroy(rules);
  assert_int_equal(rc, CCM_OK);
  assert_int_equal(d.max_attempts, c->max_attempts);
  assert_string_equal(d.message, c->message);
  assert_int_equal(d.retry, c->retry);
  if (c->retry) assert_int_equal(d.next_retry_at_ms, c->next_ms);
}

/* ---- load errors ---- */

struct error_case {
  const char *name;
  const char *yaml;
  int line;         /* expected "line N: " prefix */
  const char *text; /* expected somewhere in the message */
};

#define RULE_HEAD "global_rules:\n  - name: r\n    days: [monday]\n    time_slots:\n"
/* clang-format off */
#define SLOT(s, e, m, i)                 \
  "      - start_time: " s "\n"          \
  "        end_time: " e "\n"            \
  "        max_attempts: " m "\n"        \
  "        retry_interval_minutes: " i "\n"
/* clang-format on */
#define GOOD RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "3", "60") /* lines 1-8 */

static struct error_case error_cases[] = {
    {"syntax_bad_indent", "global_rules:\n  - name: a\n    days: [monday]\n   time_slots: []\n", 4,
     "expected"},
    {"syntax_unclosed_flow", "global_rules: [\n  {days: [monday]\n", 3, "flow mapping at line 2"},
    {"syntax_unclosed_quote", GOOD "timezone: \"UTC\n", 10, "quoted scalar at line 9"},
    {"syntax_tab_indent", "global_rules:\n\t- days: [monday]\n", 2, "a tab"},
    {"syntax_undefined_alias", GOOD "defaults:\n  max_attempts: *nope\n", 10, "undefined alias"},
    {"unknown_day", GOOD "  - days: [monday, Funday]\n    time_slots: []\n", 9,
     "unknown day name 'Funday'"},
    {"unknown_day_abbreviation", "global_rules:\n  - days:\n      - mon\n    time_slots: []\n", 3,
     "unknown day name 'mon'"},
    {"bad_time_25", RULE_HEAD SLOT("\"25:00\"", "\"17:00\"", "3", "60"), 5, "'25:00'"},
    {"bad_time_minutes", RULE_HEAD SLOT("\"09:00\"", "12:60", "3", "60"), 6, "'12:60'"},
    {"bad_time_one_digit", RULE_HEAD SLOT("9:00", "\"17:00\"", "3", "60"), 5, "HH:MM"},
    {"bad_time_text", RULE_HEAD SLOT("noon", "\"17:00\"", "3", "60"), 5, "'noon'"},
    {"bad_time_list", RULE_HEAD SLOT("[9, 0]", "\"17:00\"", "3", "60"), 5, "not a list"},
    {"negative_interval", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "3", "-5"), 8,
     "retry_interval_minutes must be between 0 and"},
    {"zero_max_attempts", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "0", "60"), 7,
     "max_attempts must be between 1 and"},
    {"text_max_attempts", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "three", "60"), 7,
     "max_attempts must be an integer, got 'three'"},
    {"quoted_max_attempts", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "\"3\"", "60"), 7,
     "must be an integer"},
    {"float_interval", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "3", "1.5"), 8,
     "must be an integer"},
    {"huge_interval", RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "3", "99999999999999999999"), 8,
     "must be an integer"},
    {"empty_slot", RULE_HEAD SLOT("\"10:00\"", "10:00", "3", "60"), 6, "empty slot"},
    {"slot_missing_end",
     RULE_HEAD "      - start_time: \"09:00\"\n        max_attempts: 3\n"
               "        retry_interval_minutes: 60\n",
     5, "missing 'end_time'"},
    {"slot_unknown_key",
     RULE_HEAD SLOT("\"09:00\"", "\"17:00\"", "3", "60") "        interval: 5\n", 9,
     "unknown key 'interval' in a time slot"},
    {"slot_not_mapping", RULE_HEAD "      - \"09:00-17:00\"\n", 5, "must be a mapping"},
    {"time_slots_mapping",
     "global_rules:\n  - days: [monday]\n    time_slots:\n"
     "      start_time: \"09:00\"\n",
     4, "time_slots must be a list"},
    {"time_slots_empty", "global_rules:\n  - days: [monday]\n    time_slots: []\n", 3,
     "time_slots is empty"},
    {"days_scalar", "global_rules:\n  - days: monday\n    time_slots: []\n", 2,
     "days must be a list"},
    {"days_empty", "global_rules:\n  - name: x\n    days: []\n    time_slots: []\n", 3,
     "days is empty"},
    {"rule_missing_days", "global_rules:\n  - name: x\n    time_slots: []\n", 2, "missing 'days'"},
    {"rule_unknown_key", GOOD "    priority: 1\n", 9, "unknown key 'priority' in a rule"},
    {"unknown_top_level_key", GOOD "retry_rules: []\n", 9,
     "unknown key 'retry_rules' in the top level"},
    {"duplicate_top_level_key", GOOD "global_rules: []\n", 9, "duplicate key 'global_rules'"},
    {"missing_global_rules", "defaults:\n  max_attempts: 3\n", 1, "missing required key"},
    {"global_rules_mapping", "global_rules:\n  days: [monday]\n", 2, "must be a list"},
    {"top_level_list", "- global_rules\n", 1, "top level must be a mapping"},
    {"top_level_scalar", "hello\n", 1, "top level must be a mapping"},
    {"empty_file", "", 1, "empty"},
    {"comments_only", "# nothing here\n\n", 1, "empty"},
    {"two_documents", GOOD "---\nglobal_rules: []\n", 9, "one YAML document"},
    {"unknown_timezone", "timezone: Mars/Olympus_Mons\n" GOOD, 1,
     "unknown time zone 'Mars/Olympus_Mons'"},
    {"timezone_wrong_case", GOOD "timezone: america/new_york\n", 9, "unknown time zone"},
    {"timezone_custom_offset", GOOD "timezone: GMT+05:00\n", 9, "unknown time zone"},
    {"timezone_empty", GOOD "timezone: \"\"\n", 9, "unknown time zone"},
    {"timezone_list", GOOD "timezone: [UTC]\n", 9, "timezone must be an IANA zone name"},
    {"campaign_duplicate_id",
     GOOD "campaign_rules:\n  - campaign_id: 4\n    rules: []\n  - campaign_id: 4\n"
          "    rules: []\n",
     12, "duplicate campaign_id 4 (first at line 10)"},
    {"campaign_id_zero", GOOD "campaign_rules:\n  - campaign_id: 0\n    rules: []\n", 10,
     "campaign_id must be between 1"},
    {"campaign_id_text", GOOD "campaign_rules:\n  - campaign_id: abc\n    rules: []\n", 10,
     "campaign_id must be an integer"},
    {"campaign_missing_rules", GOOD "campaign_rules:\n  - campaign_id: 2\n", 10, "missing 'rules'"},
    {"campaign_rules_null", GOOD "campaign_rules:\n  - campaign_id: 2\n    rules:\n", 11,
     "rules must be a list"},
    {"campaign_unknown_key", GOOD "campaign_rules:\n  - campaign_id: 2\n    rule: []\n", 11,
     "unknown key 'rule'"},
    {"defaults_unknown_key", GOOD "defaults:\n  max_attempt: 3\n", 10,
     "unknown key 'max_attempt' in defaults"},
    {"defaults_negative_interval", GOOD "defaults:\n  retry_interval_minutes: -1\n", 10,
     "retry_interval_minutes must be between 0"},
    {"defaults_list", GOOD "defaults: [3, 60]\n", 9, "defaults must be a mapping"},
    {"scheduler_zero_batch", GOOD "scheduler:\n  batch_size: 0\n", 10,
     "batch_size must be between 1"},
    {"scheduler_bad_retries", GOOD "scheduler:\n  max_concurrent_retries: many\n", 10,
     "max_concurrent_retries must be an integer"},
    {"deep_nesting",
     GOOD "status_retry_rules: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]"
          "]]]]]]]]]]]]]]]]]]]]]]]]\n",
     9, "nesting deeper"},
    {"invalid_utf8", GOOD "timezone: \"\xff\xfe\"\n", 9, "invalid"},
};

static void run_error(void **state) {
  const struct error_case *c = *state;
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *rules = (struct ccm_rules *)&rules; /* must be reset to NULL */
  int rc = ccm_rules_load_string(c->yaml, strlen(c->yaml), &rules, err, sizeof err);
  print_message("error: %s\n", err);
  assert_int_equal(rc, CCM_EINVAL);
  assert_null(rules);
  char prefix[32];
  snprintf(prefix, sizeof prefix, "line %d: ", c->line);
  assert_memory_equal(err, prefix, strlen(prefix));
  assert_non_null(strstr(err, c->text));
  assert_null(strchr(err, '\n'));
}

/* ---- settings, warnings, files, arguments ---- */

static struct ccm_rules *load_ok(const char *yaml) {
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *rules = NULL;
  int rc = ccm_rules_load_string(yaml, strlen(yaml), &rules, err, sizeof err);
  if (rc != CCM_OK) print_error("load failed: %s\n", err);
  assert_int_equal(rc, CCM_OK);
  assert_non_null(rules);
  return rules;
}

static void test_settings_seed(void **state) {
  (void)state;
  struct ccm_rules *r = load_ok(SEED);
  const struct ccm_rules_settings *s = ccm_rules_settings(r);
  assert_int_equal(s->default_max_attempts, 3);
  assert_int_equal(s->default_retry_interval_minutes, 60);
  assert_true(s->concurrent_call_limit_set);
  assert_int_equal(s->concurrent_call_limit, 100);
  assert_false(s->duplicate_call_window_set);
  assert_true(s->check_interval_set);
  assert_int_equal(s->check_interval_minutes, 1);
  assert_int_equal(s->batch_size, 100);
  assert_int_equal(s->max_concurrent_retries, 50);
  assert_string_equal(ccm_rules_timezone(r), "UTC");
  assert_int_equal(ccm_rules_warning_count(r), 0);
  assert_null(ccm_rules_warning(r, 0));
  ccm_rules_destroy(r);
}

static void test_settings_custom(void **state) {
  (void)state;
  struct ccm_rules *r = load_ok(GOOD
                                "defaults:\n"
                                "  max_attempts: 4\n"
                                "  retry_interval_minutes: 15\n"
                                "  concurrent_call_limit: 20\n"
                                "  duplicate_call_window_minutes: 10\n"
                                "scheduler:\n"
                                "  check_interval_minutes: 5\n"
                                "  batch_size: 25\n"
                                "  max_concurrent_retries: 7\n");
  const struct ccm_rules_settings *s = ccm_rules_settings(r);
  assert_int_equal(s->default_max_attempts, 4);
  assert_int_equal(s->default_retry_interval_minutes, 15);
  assert_true(s->concurrent_call_limit_set);
  assert_int_equal(s->concurrent_call_limit, 20);
  assert_true(s->duplicate_call_window_set);
  assert_int_equal(s->duplicate_call_window_minutes, 10);
  assert_true(s->check_interval_set);
  assert_int_equal(s->check_interval_minutes, 5);
  assert_int_equal(s->batch_size, 25);
  assert_int_equal(s->max_concurrent_retries, 7);
  assert_int_equal(ccm_rules_default_max_attempts(r, 0), 4);
  assert_int_equal(ccm_rules_default_max_attempts(r, -1), 4);
  assert_int_equal(ccm_rules_default_max_attempts(r, 9), 9);
  ccm_rules_destroy(r);
}

static void test_settings_builtin(void **state) {
  (void)state;
  /* Absent and null sections keep the built-in values. */
  const char *inputs[] = {GOOD, GOOD "defaults:\nscheduler:\ncampaign_rules:\n", "global_rules:\n"};
  for (size_t i = 0; i < ARRAY_LEN(inputs); i++) {
    struct ccm_rules *r = load_ok(inputs[i]);
    const struct ccm_rules_settings *s = ccm_rules_settings(r);
    assert_int_equal(s->default_max_attempts, 3);
    assert_int_equal(s->default_retry_interval_minutes, 60);
    assert_false(s->concurrent_call_limit_set);
    assert_false(s->duplicate_call_window_set);
    assert_false(s->check_interval_set);
    assert_int_equal(s->batch_size, 100);
    assert_int_equal(s->max_concurrent_retries, 50);
    assert_int_equal(ccm_rules_default_max_attempts(r, 0), 3);
    ccm_rules_destroy(r);
  }
  assert_int_equal(ccm_rules_settings(NULL)->batch_size, 100);
  assert_int_equal(ccm_rules_default_max_attempts(NULL, 0), 3);
  assert_int_equal(ccm_rules_default_max_attempts(NULL, 6), 6);
}

static void test_timezone_names(void **state) {
  (void)state;
  struct ccm_rules *r = load_ok(NEW_YORK);
  assert_string_equal(ccm_rules_timezone(r), "America/New_York");
  ccm_rules_destroy(r);
  /* An IANA alias is kept as written. */
  r = load_ok(GOOD "timezone: US/Eastern\n");
  assert_string_equal(ccm_rules_timezone(r), "US/Eastern");
  ccm_rules_destroy(r);
  r = load_ok(GOOD "timezone: Etc/UTC\n");
  assert_string_equal(ccm_rules_timezone(r), "Etc/UTC");
  ccm_rules_destroy(r);
  assert_string_equal(ccm_rules_timezone(NULL), "UTC");
}

static void test_warning_status_retry_rules(void **state) {
  (void)state;
  struct ccm_rules *r = load_ok(GOOD
                                "status_retry_rules:\n"
                                "  FAILED:\n"
                                "    retry: true\n"
                                "    max_attempts: 2\n");
  assert_int_equal(ccm_rules_warning_count(r), 1);
  assert_string_equal(ccm_rules_warning(r, 0),
                      "status_retry_rules is ignored: FAILED stays terminal");
  assert_null(ccm_rules_warning(r, 1));
  /* The rules still apply (FAILED stays terminal, nothing else changes). */
  struct ccm_retry_decision d;
  assert_int_equal(ccm_rules_decide(r, 1, AT(0, 10, 0), 1, 0, &d), CCM_OK);
  assert_true(d.retry);
  assert_int_equal(d.next_retry_at_ms, AT(0, 11, 0));
  ccm_rules_destroy(r);
  assert_int_equal(ccm_rules_warning_count(NULL), 0);
  assert_null(ccm_rules_warning(NULL, 0));
}

/* The repository's config files: $CCM_SOURCE_DIR (set by ctest), else relative to this file. */
static void source_path(const char *rel, char *out, size_t len) {
  const char *dir = getenv("CCM_SOURCE_DIR");
  if (dir != NULL && dir[0] != '\0') {
    snprintf(out, len, "%s/%s", dir, rel);
    return;
  }
  const char *file = __FILE__;
  const char *tail = strstr(file, "tests/unit/test_rules.c");
  int n = tail != NULL ? (int)(tail - file) : 0;
  snprintf(out, len, "%.*s%s%s", n, file, tail != NULL ? "" : "../../", rel);
}

static void test_config_files(void **state) {
  (void)state;
  char path[1024];
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *r = NULL;
  source_path("config/retry_config.yaml", path, sizeof path);
  int rc = ccm_rules_load_file(path, &r, err, sizeof err);
  if (rc != CCM_OK) print_error("%s: %s\n", path, err);
  assert_int_equal(rc, CCM_OK);
  const struct ccm_rules_settings *s = ccm_rules_settings(r);
  assert_int_equal(s->default_max_attempts, 3);
  assert_int_equal(s->default_retry_interval_minutes, 60);
  assert_int_equal(s->concurrent_call_limit, 100);
  assert_int_equal(s->check_interval_minutes, 1);
  assert_int_equal(s->batch_size, 100);
  assert_int_equal(s->max_concurrent_retries, 50);
  assert_string_equal(ccm_rules_timezone(r), "UTC");
  struct ccm_retry_decision d;
  assert_int_equal(ccm_rules_decide(r, 1, AT(5, 10, 0), 1, 0, &d), CCM_OK);
  assert_true(d.retry);
  assert_int_equal(d.next_retry_at_ms, AT(5, 10, 30));
  assert_int_equal(d.max_attempts, 5);
  assert_int_equal(ccm_rules_decide(r, 3, AT(0, 10, 0), 3, 0, &d), CCM_OK);
  assert_false(d.retry);
  assert_string_equal(d.message, "Max retry attempts reached (3)");
  ccm_rules_destroy(r);

  /* The dev file: one minute later at any hour, 3 attempts. */
  source_path("config/retry_config.dev.yaml", path, sizeof path);
  rc = ccm_rules_load_file(path, &r, err, sizeof err);
  if (rc != CCM_OK) print_error("%s: %s\n", path, err);
  assert_int_equal(rc, CCM_OK);
  const int64_t times[] = {AT(0, 0, 0),       AT(0, 11, 59),      AT(0, 12, 0),
                           AT(2, 23, 59) + 1, AT(5, 3, 17) + 999, AT(6, 23, 59)};
  for (size_t i = 0; i < ARRAY_LEN(times); i++) {
    assert_int_equal(ccm_rules_decide(r, 42, times[i], 2, 0, &d), CCM_OK);
    assert_true(d.retry);
    assert_int_equal(d.next_retry_at_ms, times[i] + M_MS);
    assert_int_equal(d.max_attempts, 3);
    assert_int_equal(ccm_rules_decide(r, 42, times[i], 3, 0, &d), CCM_OK);
    assert_false(d.retry);
    assert_string_equal(d.message, "Max retry attempts reached (3)");
  }
  ccm_rules_destroy(r);
}

static void test_load_file_errors(void **state) {
  (void)state;
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *r = NULL;
  assert_int_equal(ccm_rules_load_file("/nonexistent/ccm/retry.yaml", &r, err, sizeof err),
                   CCM_EIO);
  assert_null(r);
  assert_non_null(strstr(err, "/nonexistent/ccm/retry.yaml"));
  /* A directory opens but cannot be read. */
  assert_int_equal(ccm_rules_load_file("/tmp", &r, err, sizeof err), CCM_EIO);
  assert_null(r);
  assert_non_null(strstr(err, "/tmp"));

  /* A file with a bad line reports that line. */
  char path[] = "/tmp/ccm_test_rules_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  fputs(GOOD "  - days: [someday]\n    time_slots: []\n", f);
  fclose(f);
  assert_int_equal(ccm_rules_load_file(path, &r, err, sizeof err), CCM_EINVAL);
  assert_null(r);
  assert_string_equal(err, "line 9: unknown day name 'someday'");

  /* Larger than 1 MiB: refused before parsing. */
  f = fopen(path, "w");
  assert_non_null(f);
  fputs(GOOD, f);
  for (int i = 0; i < (1 << 20) / 16 + 1; i++) fputs("# padding......\n", f);
  fclose(f);
  assert_int_equal(ccm_rules_load_file(path, &r, err, sizeof err), CCM_EINVAL);
  assert_null(r);
  assert_non_null(strstr(err, "larger than"));
  unlink(path);
}

static void test_arguments(void **state) {
  (void)state;
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *r = NULL;
  assert_int_equal(ccm_rules_load_string(GOOD, strlen(GOOD), NULL, err, sizeof err), CCM_EINVAL);
  assert_int_equal(ccm_rules_load_string(NULL, 0, &r, err, sizeof err), CCM_EINVAL);
  assert_int_equal(ccm_rules_load_file(NULL, &r, err, sizeof err), CCM_EINVAL);
  assert_int_equal(ccm_rules_load_string(GOOD, (1 << 20) + 1, &r, err, sizeof err), CCM_EINVAL);
  /* No error buffer, or a tiny one: still safe. */
  assert_int_equal(ccm_rules_load_string("x: [", 4, &r, NULL, 0), CCM_EINVAL);
  char tiny[8];
  assert_int_equal(ccm_rules_load_string("x: 1\n", 5, &r, tiny, sizeof tiny), CCM_EINVAL);
  assert_string_equal(tiny, "line 1:");
  /* Length is honoured: text after len is not read. */
  r = load_ok(GOOD);
  ccm_rules_destroy(r);
  assert_int_equal(ccm_rules_load_string(GOOD "bogus: 1\n", strlen(GOOD), &r, err, sizeof err),
                   CCM_OK);

  struct ccm_retry_decision d;
  assert_int_equal(ccm_rules_decide(NULL, 1, AT(0, 10, 0), 1, 0, &d), CCM_EINVAL);
  assert_int_equal(ccm_rules_decide(r, 1, AT(0, 10, 0), 1, 0, NULL), CCM_EINVAL);
  assert_int_equal(ccm_rules_decide(r, 1, AT(0, 10, 0), -1, 0, &d), CCM_EINVAL);
  assert_int_equal(ccm_rules_decide(r, 1, -1, 1, 0, &d), CCM_EINVAL);
  assert_int_equal(ccm_rules_decide(r, 1, INT64_MAX, 1, 0, &d), CCM_EINVAL);
  /* 1970-01-01 is a Thursday: next Monday 09:00. */
  assert_int_equal(ccm_rules_decide(r, 1, 0, 1, 0, &d), CCM_OK);
  assert_true(d.retry);
  assert_int_equal(d.next_retry_at_ms, 4 * D_MS + 9 * H_MS);
  ccm_rules_destroy(r);
  ccm_rules_destroy(NULL);
}

/* Limits: 1024 slots are accepted, one more is refused; aliases cannot multiply work. */
static void test_limits(void **state) {
  (void)state;
  size_t cap = 200 * 1024;
  char *yaml = malloc(cap);
  assert_non_null(yaml);
  for (int slots = 1024; slots <= 1025; slots++) {
    size_t used = (size_t)snprintf(yaml, cap,
                                   "global_rules:\n  - days: [sunday]\n"
                                   "    time_slots:\n");
    for (int i = 0; i < slots; i++) {
      used += (size_t)snprintf(yaml + used, cap - used,
                               "      - {start_time: \"%02d:%02d\", end_time: \"23:59\", "
                               "max_attempts: 3, retry_interval_minutes: 1}\n",
                               (i / 60) % 23, i % 60);
    }
    char err[CCM_RULES_ERR_MAX];
    struct ccm_rules *r = NULL;
    int rc = ccm_rules_load_string(yaml, used, &r, err, sizeof err);
    if (slots == 1024) {
      assert_int_equal(rc, CCM_OK);
      struct ccm_retry_decision d;
      assert_int_equal(ccm_rules_decide(r, 1, AT(0, 10, 0), 1, 0, &d), CCM_OK);
      assert_true(d.retry);
      assert_int_equal(d.next_retry_at_ms, AT(6, 0, 0));
    } else {
      assert_int_equal(rc, CCM_EINVAL);
      assert_string_equal(err, "line 1028: too many time slots (at most 1024 in the file)");
    }
    ccm_rules_destroy(r);
  }
  free(yaml);

  /* A rule referenced 1000 times through an alias still counts 1000 rules. */
  char *big = malloc(64 * 1024);
  assert_non_null(big);
  size_t used = (size_t)snprintf(big, 64 * 1024,
                                 "global_rules:\n  - &r {days: [monday], time_slots: "
                                 "[{start_time: \"09:00\", end_time: \"10:00\", "
                                 "max_attempts: 3, retry_interval_minutes: 5}]}\n");
  for (int i = 0; i < 1100; i++) used += (size_t)snprintf(big + used, 64 * 1024 - used, "  - *r\n");
  char err[CCM_RULES_ERR_MAX];
  struct ccm_rules *r = NULL;
  assert_int_equal(ccm_rules_load_string(big, used, &r, err, sizeof err), CCM_EINVAL);
  assert_non_null(strstr(err, "too many"));
  free(big);
}

/* One rule set queried from several threads at once gives the same answers. */
struct thread_arg {
  const struct ccm_rules *rules;
  int failures;
};

static void *decide_many(void *p) {
  struct thread_arg *arg = p;
  for (int round = 0; round < 20; round++) {
    for (size_t i = 0; i < ARRAY_LEN(decide_cases); i++) {
      const struct decide_case *c = &decide_cases[i];
      if (c->yaml != NEW_YORK) continue; /* the fixture loaded by test_threads */
      struct ccm_retry_decision d;
      int rc =
          ccm_rules_decide(arg->rules, c->campaign_id, c->t_ms, c->attempt_count, c->override, &d);
      if (rc != CCM_OK || d.retry != c->retry || (c->retry && d.next_retry_at_ms != c->next_ms))
        arg->failures++;
    }
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  struct ccm_rules *r = load_ok(NEW_YORK);
  pthread_t th[4];
  struct thread_arg args[4];
  int started = 0;
  for (int i = 0; i < 4; i++) {
    args[i] = (struct thread_arg){r, 0};
    if (pthread_create(&th[i], NULL, decide_many, &args[i]) != 0) break;
    started++;
  }
  /* Join before any assertion: a failing assert must not unwind under running threads. */
  int failures = 0;
  for (int i = 0; i < started; i++) {
    pthread_join(th[i], NULL);
    failures += args[i].failures;
  }
  ccm_rules_destroy(r);
  assert_int_equal(started, 4);
  assert_int_equal(failures, 0);
}

int main(void) {
  struct CMUnitTest decide_tests[ARRAY_LEN(decide_cases)];
  for (size_t i = 0; i < ARRAY_LEN(decide_cases); i++) {
    decide_tests[i] =
        (struct CMUnitTest){decide_cases[i].name, run_decide, NULL, NULL, &decide_cases[i]};
  }
  struct CMUnitTest error_tests[ARRAY_LEN(error_cases)];
  for (size_t i = 0; i < ARRAY_LEN(error_cases); i++) {
    error_tests[i] =
        (struct CMUnitTest){error_cases[i].name, run_error, NULL, NULL, &error_cases[i]};
  }
  const struct CMUnitTest other_tests[] = {
      cmocka_unit_test(test_settings_seed),
      cmocka_unit_test(test_settings_custom),
      cmocka_unit_test(test_settings_builtin),
      cmocka_unit_test(test_timezone_names),
      cmocka_unit_test(test_warning_status_retry_rules),
      cmocka_unit_test(test_config_files),
      cmocka_unit_test(test_load_file_errors),
      cmocka_unit_test(test_arguments),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_threads),
  };
  int failed = cmocka_run_group_tests_name("rules_decide", decide_tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("rules_load_errors", error_tests, NULL, NULL);
  failed += cmocka_run_group_tests_name("rules_other", other_tests, NULL, NULL);
  return failed == 0 ? 0 : 1;
}
