/* Phone numbers in E.164 form (SPEC 4.2): ASCII space, '-', '.', '(' and ')'
 * are removed; what is left must be '+' and 7 to 15 ASCII digits, the first
 * not 0. Nothing else is accepted: no Unicode digits, no letters. */
#ifndef CCM_PHONE_H
#define CCM_PHONE_H

#include <stddef.h>

#define CCM_PHONE_MAX_INPUT 64 /* bytes of raw input accepted */
#define CCM_PHONE_MIN_DIGITS 7
#define CCM_PHONE_MAX_DIGITS 15
#define CCM_PHONE_BUF (CCM_PHONE_MAX_DIGITS + 2) /* '+', digits, NUL */

/* Normalises len bytes of input into out (always NUL-terminated on success).
 * Returns CCM_OK, or CCM_EINVAL when the input is not a valid number (out is
 * then the empty string). */
int ccm_phone_normalize(const char *input, size_t len, char out[CCM_PHONE_BUF]);

#endif
