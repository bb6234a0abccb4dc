#include "ccm_sign.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_error.h"

#define SIGN_PREFIX "sha256="
#define TS_MAX_DIGITS 12

static void hex_lower(const unsigned char *in, size_t len, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * len] = '\0';
}

void ccm_sign_sha256_hex(const void *body, size_t len, char out[65]) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(body != NULL ? body : (const void *)"", len, digest);
  hex_lower(digest, sizeof digest, out);
}

int ccm_sign_compute(const char *secret, const char *ts, const void *body, size_t len,
                     char out[CCM_SIGN_HEADER_MAX]) {
  if (secret == NULL || ts == NULL || out == NULL || (body == NULL && len > 0)) return CCM_EINVAL;
  size_t ts_len = strlen(ts);
  if (ts_len == 0 || ts_len > TS_MAX_DIGITS) return CCM_EINVAL;
  /* One-shot HMAC() over ts "." body (the streaming API is deprecated in
   * OpenSSL 3). */
  unsigned char *msg = malloc(ts_len + 1 + len + 1);
  if (msg == NULL) return CCM_ENOMEM;
  memcpy(msg, ts, ts_len);
  msg[ts_len] = '.';
  if (len > 0) memcpy(msg + ts_len + 1, body, len);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  bool ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, ts_len + 1 + len, mac, &mac_len) !=
                NULL &&
            mac_len == SHA256_DIGEST_LENGTH;
  free(msg);
  if (!ok) return CCM_EINTERNAL;
  memcpy(out, SIGN_PREFIX, sizeof SIGN_PREFIX - 1);
  hex_lower(mac, mac_len, out + sizeof SIGN_PREFIX - 1);
  return CCM_OK;
}

bool ccm_sign_verify(const char *secret, const char *ts, const char *signature, const void *body,
                     size_t len, int64_t now) {
  if (secret == NULL || ts == NULL || signature == NULL) return false;
  size_t ts_len = strlen(ts);
  if (ts_len == 0 || ts_len > TS_MAX_DIGITS || strspn(ts, "0123456789") != ts_len) return false;
  long long when = strtoll(ts, NULL, 10);
  if (when < now - CCM_SIGN_WINDOW_SECONDS || when > now + CCM_SIGN_WINDOW_SECONDS) return false;
  size_t sig_len = strlen(signature);
  if (sig_len != sizeof SIGN_PREFIX - 1 + 2 * SHA256_DIGEST_LENGTH ||
      strncmp(signature, SIGN_PREFIX, sizeof SIGN_PREFIX - 1) != 0) {
    return false;
  }
  char expected[CCM_SIGN_HEADER_MAX];
  if (ccm_sign_compute(secret, ts, body, len, expected) != CCM_OK) return false;
  char given[CCM_SIGN_HEADER_MAX];
  for (size_t i = 0; i <= sig_len; i++) {
    char c = signature[i];
    given[i] = c >= 'A' && c <= 'F' ? (char)(c - 'A' + 'a') : c;
  }
  return CRYPTO_memcmp(expected, given, sig_len) == 0;
}
