/* libFuzzer target: the E.164 phone normaliser (lib/ccm_phone.h, SPEC 4.2).
 * The whole input is the raw phone_number text. Besides memory safety it
 * checks the result against an independent reading of the rule: on CCM_OK
 * the output matches ^\+[1-9][0-9]{6,14}$ and is the input without ASCII
 * space, '-', '.', '(' and ')'; on an error the output is "". */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"
#include "ccm_phone.h"

#define CHECK(cond)                                                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "fuzz_phone: invariant failed: %s (line %d)\n", #cond, __LINE__); \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

static bool is_separator(uint8_t c) {
  return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

/* The rule of SPEC 4.2 written independently: writes the expected E.164
 * form into want and returns true when input is a valid number. */
static bool reference(const uint8_t *data, size_t size, char want[CCM_PHONE_BUF]) {
  want[0] = '\0';
  if (size == 0 || size > CCM_PHONE_MAX_INPUT) return false;
  char kept[CCM_PHONE_MAX_INPUT + 1];
  size_t n = 0;
  for (size_t i = 0; i < size; i++) {
    if (!is_separator(data[i])) kept[n++] = (char)data[i];
  }
  if (n < 1 + CCM_PHONE_MIN_DIGITS || n > 1 + CCM_PHONE_MAX_DIGITS) return false;
  if (kept[0] != '+' || kept[1] < '1' || kept[1] > '9') return false;
  for (size_t i = 2; i < n; i++) {
    if (kept[i] < '0' || kept[i] > '9') return false;
  }
  memcpy(want, kept, n);
  want[n] = '\0';
  return true;
}

/* ^\+[1-9][0-9]{6,14}$ */
static bool is_e164(const char *s) {
  size_t len = strlen(s);
  if (len < 8 || len > 16 || s[0] != '+' || s[1] < '1' || s[1] > '9') return false;
  for (size_t i = 2; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Exactly sized heap buffers, so ASan sees any read or write past them. */
  char *out = malloc(CCM_PHONE_BUF);
  CHECK(out != NULL);
  memset(out, 'x', CCM_PHONE_BUF);
  int rc = ccm_phone_normalize((const char *)data, size, out);
  char want[CCM_PHONE_BUF];
  bool valid = reference(data, size, want);
  if (rc == CCM_OK) {
    CHECK(valid);
    CHECK(memchr(out, '\0', CCM_PHONE_BUF) != NULL);
    CHECK(is_e164(out));
    CHECK(strcmp(out, want) == 0);
  } else {
    CHECK(rc == CCM_EINVAL);
    CHECK(!valid);
    CHECK(out[0] == '\0');
  }
  /* NULL output and NULL input with a length are refused, not crashed on. */
  CHECK(ccm_phone_normalize((const char *)data, size, NULL) == CCM_EINVAL);
  free(out);
  return 0;
}
