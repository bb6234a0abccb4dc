/* Provider callback signatures (SPEC 4.2): X-Signature is
 * "sha256=<hex HMAC-SHA256(secret, X-Timestamp + "." + raw body)>" and
 * X-Timestamp (Unix seconds) must be within CCM_SIGN_WINDOW_SECONDS of now.
 * One implementation for the mock (signs), the gateway and the server
 * (verify). */
#ifndef CCM_SIGN_H
#define CCM_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CCM_SIGN_WINDOW_SECONDS 300
#define CCM_SIGN_HEADER_MAX 80 /* "sha256=" + 64 hex digits + NUL, with room */
#define CCM_SIGN_BODY_MAX 4096 /* longest signed callback body the gateway forwards */

/* Writes the X-Signature value for (secret, ts, body) into out. Returns
 * CCM_OK, or CCM_EINVAL for bad arguments, CCM_ENOMEM/CCM_EINTERNAL when
 * the crypto library fails. */
int ccm_sign_compute(const char *secret, const char *ts, const void *body, size_t len,
                     char out[CCM_SIGN_HEADER_MAX]);

/* Returns true when signature (an X-Signature value; hex in any case) is
 * valid for (secret, ts, body) and ts is within the window around now
 * (Unix seconds). Compares in constant time. */
bool ccm_sign_verify(const char *secret, const char *ts, const char *signature, const void *body,
                     size_t len, int64_t now);

/* Writes the lower-case hex SHA-256 of body into out (65 bytes). */
void ccm_sign_sha256_hex(const void *body, size_t len, char out[65]);

#endif
