/* Unit tests for consumers/ccm_offsets: the commit point of a partition whose
 * messages are handled out of order never passes a message that is not
 * done, including across the ring's wrap-around and after a reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "ccm_error.h"
#include "ccm_offsets.h"

static void test_in_order(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 4), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 10), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 11), CCM_OK);
  assert_int_equal(ccm_offsets_done(&t, 10, true), 11);
  assert_int_equal(ccm_offsets_done(&t, 11, true), 12);
  assert_int_equal(t.count, 0);
  ccm_offsets_free(&t);
}

static void test_out_of_order_waits_for_the_oldest(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 8), CCM_OK);
  for (int64_t o = 100; o < 105; o++) assert_int_equal(ccm_offsets_add(&t, o), CCM_OK);
  /* Later ones finish first: nothing may be committed past 100. */
  assert_int_equal(ccm_offsets_done(&t, 103, true), -1);
  assert_int_equal(ccm_offsets_done(&t, 101, true), -1);
  assert_int_equal(ccm_offsets_done(&t, 104, true), -1);
  /* 100 done: the prefix 100-101 leaves, the commit point is 102. */
  assert_int_equal(ccm_offsets_done(&t, 100, true), 102);
  /* 102 done: 102-104 leave at once. */
  assert_int_equal(ccm_offsets_done(&t, 102, true), 105);
  assert_int_equal(t.count, 0);
  ccm_offsets_free(&t);
}

static void test_given_up_blocks_the_commit_point(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 4), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 7), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 8), CCM_OK);
  /* 7 was given up while stopping: 8 done does not move the point. */
  assert_int_equal(ccm_offsets_done(&t, 7, false), -1);
  assert_int_equal(ccm_offsets_done(&t, 8, true), -1);
  assert_int_equal(t.count, 2);
  ccm_offsets_free(&t);
}

static void test_full_and_wrap_around(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 3), CCM_OK);
  int64_t next_add = 0;
  /* Many rounds through a ring of 3, always finishing the newest first. */
  for (int round = 0; round < 50; round++) {
    while (!ccm_offsets_full(&t)) assert_int_equal(ccm_offsets_add(&t, next_add++), CCM_OK);
    assert_int_equal(ccm_offsets_add(&t, next_add), CCM_EEXHAUSTED);
    int64_t oldest = next_add - 3;
    assert_int_equal(ccm_offsets_done(&t, oldest + 2, true), -1);
    assert_int_equal(ccm_offsets_done(&t, oldest + 1, true), -1);
    assert_int_equal(ccm_offsets_done(&t, oldest, true), oldest + 3);
  }
  ccm_offsets_free(&t);
}

static void test_gaps_and_unknown_offsets(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 4), CCM_OK);
  /* Offsets may skip (compacted topics, transaction markers). */
  assert_int_equal(ccm_offsets_add(&t, 5), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 9), CCM_OK);
  /* Not increasing: refused. */
  assert_int_equal(ccm_offsets_add(&t, 9), CCM_EINVAL);
  assert_int_equal(ccm_offsets_add(&t, 3), CCM_EINVAL);
  /* An offset not held changes nothing. */
  assert_int_equal(ccm_offsets_done(&t, 6, true), -1);
  assert_int_equal(ccm_offsets_done(&t, 9, true), -1);
  assert_int_equal(ccm_offsets_done(&t, 5, true), 10);
  ccm_offsets_free(&t);
}

static void test_reset(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 4), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 40), CCM_OK);
  assert_int_equal(ccm_offsets_add(&t, 41), CCM_OK);
  ccm_offsets_reset(&t);
  assert_int_equal(t.count, 0);
  /* After a reset (partition revoked and assigned again) older offsets are
   * accepted and a late done for a forgotten one changes nothing. */
  assert_int_equal(ccm_offsets_add(&t, 30), CCM_OK);
  assert_int_equal(ccm_offsets_done(&t, 41, true), -1);
  assert_int_equal(ccm_offsets_done(&t, 30, true), 31);
  ccm_offsets_free(&t);
}

/* Random completion orders against a simple model: the commit point is
 * always one past the longest done prefix of what was added. */
static void test_random_orders(void **state) {
  (void)state;
  srand(12345);
  for (int run = 0; run < 200; run++) {
    enum { N = 64, CAP = 16 };
    struct ccm_offsets t;
    assert_int_equal(ccm_offsets_init(&t, CAP), CCM_OK);
    bool done[N] = {false};
    int64_t added = 0, committed = 0;
    int in_tracker[CAP];
    int held = 0;
    while (committed < N) {
      bool can_add = added < N && !ccm_offsets_full(&t);
      if (can_add && (held == 0 || rand() % 2 == 0)) {
        assert_int_equal(ccm_offsets_add(&t, added), CCM_OK);
        in_tracker[held++] = (int)added;
        added++;
        continue;
      }
      assert_true(held > 0);
      int pick = rand() % held;
      int offset = in_tracker[pick];
      in_tracker[pick] = in_tracker[--held];
      done[offset] = true;
      int64_t expect = committed;
      while (expect < added && done[expect]) expect++;
      int64_t got = ccm_offsets_done(&t, offset, true);
      if (expect > committed) {
        assert_int_equal(got, expect);
        committed = expect;
      } else {
        assert_int_equal(got, -1);
      }
    }
    assert_int_equal(t.count, 0);
    ccm_offsets_free(&t);
  }
}

static void test_bad_arguments(void **state) {
  (void)state;
  struct ccm_offsets t;
  assert_int_equal(ccm_offsets_init(&t, 0), CCM_EINVAL);
  assert_int_equal(ccm_offsets_init(NULL, 4), CCM_EINVAL);
  ccm_offsets_free(NULL);
  struct ccm_offsets zero = {0};
  assert_int_equal(ccm_offsets_add(&zero, 1), CCM_EEXHAUSTED);
  ccm_offsets_free(&zero);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_in_order),
      cmocka_unit_test(test_out_of_order_waits_for_the_oldest),
      cmocka_unit_test(test_given_up_blocks_the_commit_point),
      cmocka_unit_test(test_full_and_wrap_around),
      cmocka_unit_test(test_gaps_and_unknown_offsets),
      cmocka_unit_test(test_reset),
      cmocka_unit_test(test_random_orders),
      cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
