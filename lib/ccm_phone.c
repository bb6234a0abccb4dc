#include "ccm_phone.h"

#include <stdbool.h>

#include "ccm_error.h"

static bool is_separator(char c) {
  return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}

int ccm_phone_normalize(const char *input, size_t len, char out[CCM_PHONE_BUF]) {
  if (out == NULL) return CCM_EINVAL;
  out[0] = '\0';
  if (input == NULL || len == 0 || len > CCM_PHONE_MAX_INPUT) return CCM_EINVAL;

  size_t digits = 0;
  bool seen_plus = false;
  for (size_t i = 0; i < len; i++) {
    char c = input[i];
    if (is_separator(c)) continue;
    if (c == '+') {
      if (seen_plus || digits > 0) return CCM_EINVAL; /* only one, leading */
      seen_plus = true;
      continue;
    }
    if (c < '0' || c > '9' || !seen_plus) return CCM_EINVAL;
    if (digits == 0 && c == '0') return CCM_EINVAL;
    if (digits == CCM_PHONE_MAX_DIGITS) return CCM_EINVAL;
    out[1 + digits++] = c;
  }
  if (!seen_plus || digits < CCM_PHONE_MIN_DIGITS) {
    out[0] = '\0';
    return CCM_EINVAL;
  }
  out[0] = '+';
  out[1 + digits] = '\0';
  return CCM_OK;
}
