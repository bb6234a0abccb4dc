/* The telephony provider client (libcurl): POST EXTERNAL_SERVICE_URL with
 * Idempotency-Key <call_id>:<attempt>. A 4xx fails the attempt at once; a
 * 5xx, timeout or connection error is retried 3 times after 1, 2 and 4 s
 * with the same key, so the provider dials at most once. */
#ifndef CCM_PROVIDER_H
#define CCM_PROVIDER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ccm_config.h"

#define CCM_PROVIDER_ID_MAX 128

struct ccm_provider;

struct ccm_provider_request {
  const char *call_id;
  const char *phone_number;
  int64_t campaign_id;
  const char *campaign_name;
  int attempt;
};

/* Returns a client for cfg's provider URL, or NULL when out of memory. The
 * caller owns it (ccm_provider_destroy). Not shared between threads. */
struct ccm_provider *ccm_provider_create(const struct ccm_config *cfg);

/* Releases the client; NULL is accepted. */
void ccm_provider_destroy(struct ccm_provider *p);

/* Asks the provider to place the call. Returns CCM_OK with the provider's id
 * in external_id, CCM_EPRECOND when the provider refused it (4xx, or a 200
 * without an id), CCM_EUNAVAILABLE when it stayed unreachable or failing
 * after the retries, CCM_ECONFLICT when *stop became true while waiting. A
 * short reason goes to err. */
int ccm_provider_initiate(struct ccm_provider *p, const struct ccm_provider_request *req,
                          atomic_bool *stop, char external_id[CCM_PROVIDER_ID_MAX + 1], char *err,
                          size_t errlen);

#endif
