/* Unit tests for lib/ccm_phone: E.164 normalisation (SPEC 4.2 "Add phone
 * numbers"): ASCII space, '-', '.', '(' and ')' are removed, nothing else;
 * the result must be '+' and 7..15 ASCII digits, the first not 0; raw input
 * over 64 bytes is invalid. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ccm_error.h"
#include "ccm_phone.h"

struct phone_case {
  const char *input;
  const char *expected; /* NULL: invalid */
};

static const struct phone_case good[] = {
    {"+1234567890", "+1234567890"},
    {"+1 (234) 567-8900", "+12345678900"},
    {"+1.234.567.8900", "+12345678900"},
    {"+1-234-567-8900", "+12345678900"},
    {"+44 20 7946 0958", "+442079460958"},
    {"+1234567", "+1234567"},                 /* 7 digits: the minimum */
    {"+123456789012345", "+123456789012345"}, /* 15 digits: the maximum */
    {"+1 234 567 890 123 45", "+123456789012345"},
    {" +1234567 ", "+1234567"},   /* separators anywhere */
    {"(+1) 234-567", "+1234567"}, /* removed before the check */
    {"+-.() 1234567", "+1234567"},
    {"+9876543210", "+9876543210"},
    {"+1555000001", "+1555000001"},
};

static const struct phone_case bad[] = {
    {"+123456", NULL},           /* 6 digits */
    {"+1234567890123456", NULL}, /* 16 digits */
    {"+1 234 567 890 123 456", NULL},
    {"+0123456789", NULL},  /* leading 0 after + */
    {"+ 0123456789", NULL}, /* ... also behind a separator */
    {"1234567890", NULL},   /* no + */
    {"001234567890", NULL},
    {"++1234567", NULL},
    {"+12345+67", NULL},
    {"+1234567+", NULL},
    {"+", NULL},
    {"+ ", NULL},
    {"   ", NULL},
    {"()-.", NULL},
    {"abc", NULL},
    {"+1234567abc", NULL},
    {"+1-800-FLOWERS", NULL},
    {"+12e4567890", NULL},
    {"+1234567890x12", NULL},
    {"+1234567890;ext=1", NULL},
    {"+1/234/5678", NULL},
    {"+1_234_5678", NULL},
    {"+1,234,5678", NULL},
    {"tel:+1234567890", NULL},
    {"+\xd9\xa1\xd9\xa2\xd9\xa3\xd9\xa4\xd9\xa5\xd9\xa6\xd9\xa7\xd9\xa8", NULL}, /* +١٢٣٤٥٦٧٨ */
    {"\xef\xbc\x8b\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93\xef\xbc\x94\xef\xbc\x95\xef\xbc\x96"
     "\xef\xbc\x97\xef\xbc\x98",
     NULL}, /* ＋１２３４５６７８ */
    {"+\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93\xef\xbc\x94\xef\xbc\x95\xef\xbc\x96\xef\xbc\x97", NULL},
    {"+1234\xd9\xa5"
     "67",
     NULL},               /* one Arabic-Indic digit */
    {"+1\t234567", NULL}, /* tab */
    {"+1\n234567", NULL},
    {"+1\r234567", NULL},
    {"+1\v234567", NULL},
    {"+1\xc2\xa0"
     "234567",
     NULL}, /* NBSP */
    {"+1\xe2\x80\x8b"
     "234567",
     NULL}, /* zero-width space */
    {"+1\xe2\x80\x93"
     "234567",
     NULL}, /* en dash */
    {"\xef\xbc\x8b"
     "1234567",
     NULL}, /* fullwidth plus */
    {"+1234567\xff", NULL},
    {"", NULL},
};

static void check(const char *input, size_t len, const char *expected) {
  char out[CCM_PHONE_BUF];
  memset(out, 'Z', sizeof out);
  int rc = ccm_phone_normalize(input, len, out);
  if (expected != NULL) {
    if (rc != CCM_OK) print_error("expected \"%s\" to be valid\n", input);
    assert_int_equal(rc, CCM_OK);
    assert_string_equal(out, expected);
  } else {
    if (rc == CCM_OK) print_error("expected \"%s\" to be invalid, got \"%s\"\n", input, out);
    assert_int_equal(rc, CCM_EINVAL);
    assert_string_equal(out, ""); /* out is the empty string on failure */
  }
}

static void test_good_numbers(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    check(good[i].input, strlen(good[i].input), good[i].expected);
  }
}

static void test_bad_numbers(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    check(bad[i].input, strlen(bad[i].input), NULL);
  }
}

static void test_digit_count_bounds(void **state) {
  (void)state;
  char in[64];
  char want[64];
  for (int n = 1; n <= 20; n++) {
    in[0] = '+';
    for (int i = 0; i < n; i++) in[1 + i] = (char)('1' + i % 9);
    in[1 + n] = '\0';
    memcpy(want, in, (size_t)n + 2);
    check(in, strlen(in), n >= 7 && n <= 15 ? want : NULL);
  }
}

/* The raw input limit is 64 bytes, separators included. */
static void test_input_length_limit(void **state) {
  (void)state;
  char in[128];
  /* "+12345678900" padded with spaces up to exactly 64 bytes: valid. */
  memset(in, ' ', sizeof in);
  memcpy(in, "+12345678900", 12);
  in[64] = '\0';
  assert_int_equal(strlen(in), 64);
  check(in, 64, "+12345678900");
  /* The same padded to 65 bytes: invalid although it would normalise. */
  in[64] = ' ';
  in[65] = '\0';
  assert_int_equal(strlen(in), 65);
  check(in, 65, NULL);
  /* Separators inside the number, 64 and 65 bytes. */
  memset(in, '-', sizeof in);
  in[0] = '+';
  memcpy(in + 56, "12345678", 8);
  check(in, 64, "+12345678");
  memset(in, '-', sizeof in);
  in[0] = '+';
  memcpy(in + 57, "12345678", 8);
  check(in, 65, NULL);
  /* A huge length never reads past what it needs. */
  check("+1234567", SIZE_MAX, NULL);
  check("+1234567", 100000, NULL);
}

static void test_null_and_explicit_length(void **state) {
  (void)state;
  char out[CCM_PHONE_BUF] = "junk";
  assert_int_equal(ccm_phone_normalize(NULL, 0, out), CCM_EINVAL);
  assert_string_equal(out, "");
  strcpy(out, "junk");
  assert_int_equal(ccm_phone_normalize(NULL, 11, out), CCM_EINVAL);
  assert_string_equal(out, "");
  assert_int_equal(ccm_phone_normalize("+1234567890", 11, NULL), CCM_EINVAL);
  /* Empty with a non-NULL pointer. */
  check("+1234567890", 0, NULL);
  /* Only the given length is read: a prefix of a longer string. */
  check("+1234567890", 8, "+1234567");
  check("+1234567890", 7, NULL); /* "+123456": 6 digits */
  /* An embedded NUL within the length is invalid, not a terminator. */
  static const char nul_mid[] =
      "+1234567\0"
      "890";
  check(nul_mid, sizeof nul_mid - 1, NULL);
  static const char nul_end[] = "+1234567890\0";
  check(nul_end, sizeof nul_end - 1, NULL);
  static const char nul_start[] = "\0+1234567890";
  check(nul_start, sizeof nul_start - 1, NULL);
  /* Input not NUL-terminated at all (exact-size buffer). */
  const char exact[11] = {'+', '1', '2', '3', '4', '5', '6', '7', '8', '9', '0'};
  check(exact, sizeof exact, "+1234567890");
}

/* Normalising a normalised number gives itself. */
static void test_idempotent(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    check(good[i].expected, strlen(good[i].expected), good[i].expected);
  }
}

/* Every single byte value as the 5th character of "+1234x5678": only
 * digits and the five separators are accepted. */
static void test_every_byte(void **state) {
  (void)state;
  for (int c = 0; c < 256; c++) {
    char in[10] = {'+', '1', '2', '3', '4', (char)c, '5', '6', '7', '8'};
    char out[CCM_PHONE_BUF];
    int rc = ccm_phone_normalize(in, sizeof in, out);
    bool sep = c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
    bool digit = c >= '0' && c <= '9';
    if (sep) {
      assert_int_equal(rc, CCM_OK);
      assert_string_equal(out, "+12345678");
    } else if (digit) {
      assert_int_equal(rc, CCM_OK);
      char want[CCM_PHONE_BUF] = "+1234";
      want[5] = (char)c;
      strcpy(want + 6, "5678");
      assert_string_equal(out, want);
    } else {
      if (rc == CCM_OK) print_error("byte 0x%02x accepted\n", c);
      assert_int_equal(rc, CCM_EINVAL);
      assert_string_equal(out, "");
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_numbers),
      cmocka_unit_test(test_bad_numbers),
      cmocka_unit_test(test_digit_count_bounds),
      cmocka_unit_test(test_input_length_limit),
      cmocka_unit_test(test_null_and_explicit_length),
      cmocka_unit_test(test_idempotent),
      cmocka_unit_test(test_every_byte),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
