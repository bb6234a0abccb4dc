/* Unit tests for lib/ccm_time: ISO formatting and condition-wait deadlines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ccm_time.h"

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec; }

static void test_deadline(void **state) {
  (void)state;
  static const int64_t cases[] = {0, 1, 50, 999, 1000, 1001, 2500, 86400000};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct timespec before;
    clock_gettime(CLOCK_MONOTONIC, &before);
    struct timespec d = ccm_time_deadline(CLOCK_MONOTONIC, cases[i]);
    struct timespec after;
    clock_gettime(CLOCK_MONOTONIC, &after);
    assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
    assert_true(ns_of(d) >= ns_of(before) + cases[i] * 1000000LL);
    assert_true(ns_of(d) <= ns_of(after) + cases[i] * 1000000LL);
  }
  /* A negative wait is now. */
  struct timespec before;
  clock_gettime(CLOCK_REALTIME, &before);
  struct timespec d = ccm_time_deadline(CLOCK_REALTIME, -5000);
  assert_true(ns_of(d) >= ns_of(before));
  assert_true(ns_of(d) < ns_of(before) + 1000000000LL);
}

static void test_format(void **state) {
  (void)state;
  char out[CCM_TIME_ISO_BUF];
  assert_string_equal(ccm_time_format_iso(1737715500123LL, out), "2025-01-24T10:45:00Z");
  assert_string_equal(ccm_time_format_compact(1737715500123LL, out), "20250124104500");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deadline),
      cmocka_unit_test(test_format),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
