/* Unit tests for lib/ccm_buf (growable buffer with a hard maximum) and
 * lib/ccm_arena (per-request arena with a hard limit, protobuf-c allocator). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <protobuf-c/protobuf-c.h>

#include "callmanager/v1/call_manager.pb-c.h"
#include "ccm_arena.h"
#include "ccm_buf.h"
#include "ccm_error.h"

/* Under AddressSanitizer a malloc that cannot be satisfied must return NULL
 * (as the C library does) instead of aborting, so that out-of-memory paths
 * can be tested. Ignored in builds without ASan. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* Runs fn in a child process so that a memory error found by the sanitizer
 * (or a crash) fails only this test. Returns true when the child exited 0. */
static bool in_child(int (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) _exit(fn());
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (!WIFEXITED(st)) {
    print_error("child killed by signal %d\n", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
    return false;
  }
  if (WEXITSTATUS(st) != 0) print_error("child exited with %d\n", WEXITSTATUS(st));
  return WEXITSTATUS(st) == 0;
}

/* ------------------------------------------------------------ ccm_buf --- */

static void test_buf_append_printf_take(void **state) {
  (void)state;
  struct ccm_buf b;
  ccm_buf_init(&b, 1024);
  assert_int_equal(b.len, 0);
  assert_int_equal(ccm_buf_append(&b, "abc", 3), CCM_OK);
  assert_int_equal(ccm_buf_append_str(&b, "def"), CCM_OK);
  assert_int_equal(ccm_buf_printf(&b, "%d-%s-%c", 42, "x", 'y'), CCM_OK);
  assert_int_equal(b.len, strlen("abcdef42-x-y"));
  assert_string_equal(b.data, "abcdef42-x-y");
  assert_int_equal(ccm_buf_append(&b, "", 0), CCM_OK);
  assert_int_equal(ccm_buf_printf(&b, "%s", ""), CCM_OK);
  assert_int_equal(b.len, 12);
  assert_true(b.cap >= b.len + 1);

  size_t len = 0;
  char *p = ccm_buf_take(&b, &len);
  assert_non_null(p);
  assert_int_equal(len, 12);
  assert_string_equal(p, "abcdef42-x-y");
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  free(p);

  /* The buffer is reusable after take, with the same maximum. */
  assert_int_equal(ccm_buf_append_str(&b, "again"), CCM_OK);
  assert_string_equal(b.data, "again");
  p = ccm_buf_take(&b, NULL);
  assert_string_equal(p, "again");
  free(p);
  ccm_buf_free(&b);
}

static void test_buf_take_empty(void **state) {
  (void)state;
  struct ccm_buf b;
  ccm_buf_init(&b, 16);
  size_t len = 99;
  char *p = ccm_buf_take(&b, &len);
  assert_null(p);
  assert_int_equal(len, 0);
  ccm_buf_free(&b);
  ccm_buf_free(&b); /* twice is fine */
}

static void test_buf_binary_and_reset(void **state) {
  (void)state;
  struct ccm_buf b;
  ccm_buf_init(&b, 64);
  assert_int_equal(ccm_buf_append(&b, "a\0b", 3), CCM_OK);
  assert_int_equal(b.len, 3);
  assert_memory_equal(b.data, "a\0b", 4); /* and NUL-terminated */
  char *before = b.data;
  ccm_buf_reset(&b);
  assert_int_equal(b.len, 0);
  assert_ptr_equal(b.data, before); /* allocation kept */
  assert_string_equal(b.data, "");
  assert_int_equal(ccm_buf_append_str(&b, "xy"), CCM_OK);
  assert_string_equal(b.data, "xy");
  ccm_buf_free(&b);
  assert_null(b.data);
  assert_int_equal(b.len, 0);
  /* Usable after free, still with its maximum. */
  assert_int_equal(ccm_buf_append_str(&b, "z"), CCM_OK);
  assert_string_equal(b.data, "z");
  char big[100];
  memset(big, 'q', sizeof big);
  assert_int_equal(ccm_buf_append(&b, big, sizeof big), CCM_ETOOLARGE);
  assert_string_equal(b.data, "z");
  ccm_buf_free(&b);
}

static void test_buf_max(void **state) {
  (void)state;
  struct ccm_buf b;
  ccm_buf_init(&b, 10);
  assert_int_equal(ccm_buf_append_str(&b, "12345"), CCM_OK);
  /* One past the maximum: refused, content unchanged. */
  assert_int_equal(ccm_buf_append_str(&b, "678901"), CCM_ETOOLARGE);
  assert_int_equal(b.len, 5);
  assert_string_equal(b.data, "12345");
  assert_int_equal(ccm_buf_printf(&b, "%s", "678901"), CCM_ETOOLARGE);
  assert_int_equal(b.len, 5);
  assert_string_equal(b.data, "12345");
  assert_int_equal(ccm_buf_printf(&b, "%d", 123456), CCM_ETOOLARGE);
  assert_string_equal(b.data, "12345");
  /* Huge lengths do not wrap around. */
  assert_int_equal(ccm_buf_append(&b, "x", SIZE_MAX), CCM_ETOOLARGE);
  assert_int_equal(ccm_buf_append(&b, "x", SIZE_MAX - 4), CCM_ETOOLARGE);
  assert_int_equal(ccm_buf_append(&b, "x", SIZE_MAX - 5), CCM_ETOOLARGE);
  assert_string_equal(b.data, "12345");
  /* Exactly the maximum is fine. */
  assert_int_equal(ccm_buf_printf(&b, "%s", "6789"), CCM_OK);
  assert_int_equal(ccm_buf_append_str(&b, "0"), CCM_OK);
  assert_int_equal(b.len, 10);
  assert_string_equal(b.data, "1234567890");
  assert_int_equal(ccm_buf_append(&b, "", 0), CCM_OK);
  assert_int_equal(ccm_buf_append_str(&b, "!"), CCM_ETOOLARGE);
  assert_int_equal(ccm_buf_printf(&b, "!"), CCM_ETOOLARGE);
  assert_string_equal(b.data, "1234567890");
  assert_true(b.cap <= 11); /* never allocates past max + 1 */
  ccm_buf_free(&b);

  /* A single append of exactly max bytes, and printf of exactly max. */
  ccm_buf_init(&b, 100);
  char block[100];
  memset(block, 'a', sizeof block);
  assert_int_equal(ccm_buf_append(&b, block, 100), CCM_OK);
  assert_int_equal(b.len, 100);
  assert_int_equal(b.data[100], '\0');
  ccm_buf_free(&b);
  ccm_buf_init(&b, 100);
  assert_int_equal(ccm_buf_printf(&b, "%0100d", 7), CCM_OK);
  assert_int_equal(b.len, 100);
  assert_int_equal(b.data[99], '7');
  assert_int_equal(b.data[100], '\0');
  ccm_buf_free(&b);
  ccm_buf_init(&b, 100);
  assert_int_equal(ccm_buf_printf(&b, "%0101d", 7), CCM_ETOOLARGE);
  assert_int_equal(b.len, 0);
  ccm_buf_free(&b);

  /* max 0: only empty appends. */
  ccm_buf_init(&b, 0);
  assert_int_equal(ccm_buf_append(&b, "", 0), CCM_OK);
  assert_int_equal(ccm_buf_append_str(&b, "x"), CCM_ETOOLARGE);
  assert_int_equal(b.len, 0);
  ccm_buf_free(&b);
}

static void test_buf_growth(void **state) {
  (void)state;
  struct ccm_buf b;
  ccm_buf_init(&b, 1 << 20);
  for (int i = 0; i < 100000; i++) {
    char c = (char)('a' + i % 26);
    assert_int_equal(ccm_buf_append(&b, &c, 1), CCM_OK);
  }
  for (int i = 0; i < 1000; i++) assert_int_equal(ccm_buf_printf(&b, "[%04d]", i), CCM_OK);
  assert_int_equal(b.len, 100000 + 6000);
  for (int i = 0; i < 100000; i++) assert_int_equal(b.data[i], 'a' + i % 26);
  assert_memory_equal(b.data + 100000, "[0000][0001]", 12);
  assert_string_equal(b.data + b.len - 6, "[0999]");
  ccm_buf_free(&b);
}

static int buf_unlimited_child(void) {
  struct ccm_buf b;
  ccm_buf_init(&b, SIZE_MAX);
  if (ccm_buf_append(&b, "hello", 5) != CCM_OK) return 2;
  if (b.cap < b.len + 1) return 3;
  if (ccm_buf_printf(&b, " %s", "world") != CCM_OK) return 4;
  if (strcmp(b.data, "hello world") != 0) return 5;
  ccm_buf_free(&b);
  return 0;
}

/* Regression (fixed): lib/ccm_buf.c line 35, reserve(): with max == SIZE_MAX ("no limit") the clamp
 * `if (cap > b->max + 1) cap = b->max + 1;` overflows to 0, so the buffer is
 * reallocated to 0 bytes and the following memcpy writes past it (heap
 * overflow on the very first append). A buffer with max SIZE_MAX must work. */
static void test_buf_max_size_max(void **state) {
  (void)state;
  assert_true(in_child(buf_unlimited_child));
}

/* ---------------------------------------------------------- ccm_arena --- */

static void test_arena_many_allocations(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, 64u << 20);
  enum { N = 50000 };
  unsigned char **ptrs = calloc(N, sizeof *ptrs);
  size_t *sizes = calloc(N, sizeof *sizes);
  assert_non_null(ptrs);
  assert_non_null(sizes);
  unsigned seed = 12345;
  for (int i = 0; i < N; i++) {
    seed = seed * 1103515245u + 12345u;
    size_t size = (seed >> 16) % 300; /* 0 included */
    if (i % 5000 == 0) size = 10000;  /* some bigger than a block */
    unsigned char *p = ccm_arena_alloc(&a, size);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    memset(p, i & 0xff, size);
    ptrs[i] = p;
    sizes[i] = size;
  }
  /* No allocation overlaps another: every pattern is intact. */
  for (int i = 0; i < N; i++) {
    for (size_t k = 0; k < sizes[i]; k++) {
      if (ptrs[i][k] != (unsigned char)(i & 0xff)) fail_msg("allocation %d overwritten", i);
    }
  }
  assert_true(a.total <= a.max);
  ccm_arena_free(&a);
  assert_null(a.head);
  assert_int_equal(a.total, 0);
  free(ptrs);
  free(sizes);
}

static void test_arena_alignment(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, 1 << 20);
  for (size_t size = 0; size <= 200; size++) {
    void *p = ccm_arena_alloc(&a, size);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    /* Any type fits at that address. */
    long double *ld = p;
    if (size >= sizeof *ld) *ld = 1.5L;
  }
  char *s = ccm_arena_strdup(&a, "x");
  assert_int_equal((uintptr_t)s % 16, 0);
  void *z = ccm_arena_calloc(&a, 3, 7);
  assert_int_equal((uintptr_t)z % 16, 0);
  ccm_arena_free(&a);
}

static void test_arena_limit(void **state) {
  (void)state;
  struct ccm_arena a;
  const size_t max = 10000;
  ccm_arena_init(&a, max);
  size_t got = 0;
  int n = 0;
  void *p;
  while ((p = ccm_arena_alloc(&a, 100)) != NULL) {
    memset(p, 0xab, 100);
    got += 100;
    n++;
    assert_true(a.total <= max);
    assert_true(n < 1000);
  }
  assert_true(got <= max);
  assert_true(got >= 4000); /* at least the first block was usable */
  assert_true(a.total <= max);
  /* Still refused, even for small sizes once the limit is reached. */
  assert_null(ccm_arena_alloc(&a, max));
  assert_null(ccm_arena_alloc(&a, SIZE_MAX));
  assert_null(ccm_arena_alloc(&a, SIZE_MAX - 15));
  assert_null(ccm_arena_strdup(
      &a,
      "this string is long enough to need more space than is left "
      "............................................................................"));
  ccm_arena_free(&a);

  /* More than the limit on a fresh arena: NULL. Exactly the limit: fine. */
  ccm_arena_init(&a, 8192);
  assert_null(ccm_arena_alloc(&a, 8193));
  assert_null(ccm_arena_calloc(&a, 8193, 1));
  p = ccm_arena_alloc(&a, 8192);
  assert_non_null(p);
  memset(p, 1, 8192);
  assert_null(ccm_arena_alloc(&a, 1));
  assert_int_equal(a.total, 8192);
  ccm_arena_free(&a);

  /* A zero limit gives nothing. */
  ccm_arena_init(&a, 0);
  assert_null(ccm_arena_alloc(&a, 1));
  assert_null(ccm_arena_alloc(&a, 0));
  ccm_arena_free(&a);
}

static void test_arena_strings(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, 1 << 20);
  char *s = ccm_arena_strdup(&a, "hello");
  assert_string_equal(s, "hello");
  assert_null(ccm_arena_strdup(&a, NULL));
  assert_null(ccm_arena_strndup(&a, NULL, 3));
  char *n = ccm_arena_strndup(&a, "hello world", 5);
  assert_string_equal(n, "hello");
  char *e = ccm_arena_strdup(&a, "");
  assert_string_equal(e, "");
  char *bin = ccm_arena_strndup(&a, "a\0b", 3);
  assert_memory_equal(bin, "a\0b\0", 4);
  char *f = ccm_arena_printf(&a, "%d-%s-%.2f", 42, "x", 1.5);
  assert_string_equal(f, "42-x-1.50");
  char *empty = ccm_arena_printf(&a, "%s", "");
  assert_string_equal(empty, "");
  /* Longer than a block. */
  char *big = ccm_arena_printf(&a, "%020000d", 5);
  assert_non_null(big);
  assert_int_equal(strlen(big), 20000);
  assert_int_equal(big[19999], '5');
  /* Earlier strings are untouched. */
  assert_string_equal(s, "hello");
  assert_string_equal(n, "hello");
  assert_string_equal(f, "42-x-1.50");
  ccm_arena_free(&a);

  /* printf past the limit: NULL. */
  ccm_arena_init(&a, 1000);
  assert_null(ccm_arena_printf(&a, "%02000d", 1));
  assert_non_null(ccm_arena_printf(&a, "%0500d", 1));
  ccm_arena_free(&a);
}

static void test_arena_calloc(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, 1 << 20);
  /* Overflowing count * size: NULL, no allocation. */
  assert_null(ccm_arena_calloc(&a, SIZE_MAX / 2, 4));
  assert_null(ccm_arena_calloc(&a, SIZE_MAX, SIZE_MAX));
  assert_null(ccm_arena_calloc(&a, (SIZE_MAX >> 4) + 2, 16));
  assert_null(ccm_arena_calloc(&a, 2, SIZE_MAX / 2 + 1));
  assert_int_equal(a.total, 0);
  /* Zero elements is a valid, empty allocation. */
  assert_non_null(ccm_arena_calloc(&a, 0, 16));
  assert_non_null(ccm_arena_calloc(&a, 16, 0));
  /* Memory is zeroed, also when it is reused after dirty use. */
  for (int round = 0; round < 3; round++) {
    unsigned char *p = ccm_arena_alloc(&a, 2048);
    assert_non_null(p);
    memset(p, 0xff, 2048);
    ccm_arena_free(&a);
    int *z = ccm_arena_calloc(&a, 512, sizeof(int));
    assert_non_null(z);
    for (int i = 0; i < 512; i++) assert_int_equal(z[i], 0);
    ccm_arena_free(&a);
  }
  ccm_arena_free(&a);
}

static void test_arena_reuse_after_free(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, 20000);
  for (int round = 0; round < 20; round++) {
    size_t got = 0;
    void *p;
    while ((p = ccm_arena_alloc(&a, 1000)) != NULL) {
      memset(p, round, 1000);
      got += 1000;
    }
    assert_true(got >= 10000);
    assert_true(got <= 20000);
    ccm_arena_free(&a);
    assert_int_equal(a.total, 0);
    assert_null(a.head);
    assert_int_equal(a.max, 20000);
  }
  ccm_arena_free(&a);
  ccm_arena_free(&a); /* freeing an empty arena is fine */
}

static int arena_huge_child(void) {
  struct ccm_arena a;
  ccm_arena_init(&a, SIZE_MAX);
  /* Must be NULL (no memory of that size exists), never a tiny block. */
  void *p = ccm_arena_alloc(&a, SIZE_MAX - 20);
  if (p != NULL) return 2;
  p = ccm_arena_calloc(&a, 1, SIZE_MAX - 20);
  if (p != NULL) return 3;
  p = ccm_arena_alloc(&a, 100);
  if (p == NULL) return 4;
  memset(p, 0, 100);
  ccm_arena_free(&a);
  return 0;
}

/* Regression (fixed): lib/ccm_arena.c line 47, ccm_arena_alloc(): with a limit near SIZE_MAX, a
 * request of SIZE_MAX - 20 rounds to SIZE_MAX - 15 (= 2^64 - 16) and
 * `malloc(sizeof *b + block)` wraps around to malloc(16): the block header
 * is written past that 16-byte allocation and a pointer into it is returned
 * as if it had SIZE_MAX - 15 usable bytes. It must return NULL. */
static void test_arena_huge_request_unlimited(void **state) {
  (void)state;
  assert_true(in_child(arena_huge_child));
}

/* A request that malloc cannot satisfy (limit not reached) is NULL too. */
static void test_arena_malloc_failure(void **state) {
  (void)state;
  struct ccm_arena a;
  ccm_arena_init(&a, (size_t)1 << 62);
  assert_null(ccm_arena_alloc(&a, (size_t)1 << 61));
  void *p = ccm_arena_alloc(&a, 64);
  assert_non_null(p);
  ccm_arena_free(&a);
}

/* ------------------------------------------- protobuf-c allocator --- */

static void test_arena_protobuf_get_campaign(void **state) {
  (void)state;
  Callmanager__V1__GetCampaignRequest req = CALLMANAGER__V1__GET_CAMPAIGN_REQUEST__INIT;
  req.id = 1234567890123LL;
  uint8_t wire[32];
  size_t n = callmanager__v1__get_campaign_request__pack(&req, wire);
  assert_true(n > 0 && n < sizeof wire);

  struct ccm_arena a;
  ccm_arena_init(&a, 1 << 16);
  ProtobufCAllocator alloc;
  ccm_arena_protobuf_allocator(&a, &alloc);
  assert_ptr_equal(alloc.allocator_data, &a);
  Callmanager__V1__GetCampaignRequest *got =
      callmanager__v1__get_campaign_request__unpack(&alloc, n, wire);
  assert_non_null(got);
  assert_int_equal(got->id, 1234567890123LL);
  assert_true(a.total > 0); /* the message lives in the arena */
  /* free_unpacked through the arena allocator is harmless. */
  callmanager__v1__get_campaign_request__free_unpacked(got, &alloc);
  /* Garbage input fails cleanly. */
  static const uint8_t junk[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  assert_null(callmanager__v1__get_campaign_request__unpack(&alloc, sizeof junk, junk));
  ccm_arena_free(&a);
}

static void test_arena_protobuf_repeated_strings(void **state) {
  (void)state;
  enum { COUNT = 2000 };
  char **numbers = calloc(COUNT, sizeof *numbers);
  assert_non_null(numbers);
  for (int i = 0; i < COUNT; i++) {
    numbers[i] = malloc(20);
    assert_non_null(numbers[i]);
    snprintf(numbers[i], 20, "+1555%07d", i);
  }
  Callmanager__V1__AddPhoneNumbersRequest req = CALLMANAGER__V1__ADD_PHONE_NUMBERS_REQUEST__INIT;
  req.campaign_id = 7;
  req.n_phone_numbers = COUNT;
  req.phone_numbers = numbers;
  size_t n = callmanager__v1__add_phone_numbers_request__get_packed_size(&req);
  uint8_t *wire = malloc(n);
  assert_non_null(wire);
  assert_int_equal(callmanager__v1__add_phone_numbers_request__pack(&req, wire), n);

  struct ccm_arena a;
  ccm_arena_init(&a, 1 << 20);
  ProtobufCAllocator alloc;
  ccm_arena_protobuf_allocator(&a, &alloc);
  Callmanager__V1__AddPhoneNumbersRequest *got =
      callmanager__v1__add_phone_numbers_request__unpack(&alloc, n, wire);
  assert_non_null(got);
  assert_int_equal(got->campaign_id, 7);
  assert_int_equal(got->n_phone_numbers, COUNT);
  for (int i = 0; i < COUNT; i++) assert_string_equal(got->phone_numbers[i], numbers[i]);
  assert_true(a.total <= a.max);
  ccm_arena_free(&a); /* releases the whole message: no leak reported */

  /* An arena too small for the message: unpack fails cleanly, no leak. */
  ccm_arena_init(&a, 4096);
  ccm_arena_protobuf_allocator(&a, &alloc);
  assert_null(callmanager__v1__add_phone_numbers_request__unpack(&alloc, n, wire));
  ccm_arena_free(&a);

  free(wire);
  for (int i = 0; i < COUNT; i++) free(numbers[i]);
  free(numbers);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buf_append_printf_take),
      cmocka_unit_test(test_buf_take_empty),
      cmocka_unit_test(test_buf_binary_and_reset),
      cmocka_unit_test(test_buf_max),
      cmocka_unit_test(test_buf_growth),
      cmocka_unit_test(test_buf_max_size_max),
      cmocka_unit_test(test_arena_many_allocations),
      cmocka_unit_test(test_arena_alignment),
      cmocka_unit_test(test_arena_limit),
      cmocka_unit_test(test_arena_strings),
      cmocka_unit_test(test_arena_calloc),
      cmocka_unit_test(test_arena_reuse_after_free),
      cmocka_unit_test(test_arena_huge_request_unlimited),
      cmocka_unit_test(test_arena_malloc_failure),
      cmocka_unit_test(test_arena_protobuf_get_campaign),
      cmocka_unit_test(test_arena_protobuf_repeated_strings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
