/* UTF-8 validation (protobuf-c does not check string fields). */
#ifndef CCM_UTF8_H
#define CCM_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Returns true when s[0..len) is well-formed UTF-8 (no overlongs, no
 * surrogates, no NUL); stores the number of code points in *count when
 * count is not NULL. */
bool ccm_utf8_valid(const char *s, size_t len, size_t *count);

#endif
