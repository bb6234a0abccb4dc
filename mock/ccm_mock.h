/* The simulated telephony provider of SPEC section 11, as a library so that
 * `ccm mock-provider` and the unit tests run the same code in-process.
 *
 * A mock is one libmicrohttpd daemon (epoll thread pool, suspend/resume for
 * MOCK_RESPONSE_DELAY_MS), one thread that resumes delayed answers, and a
 * small pool of sender threads that deliver callbacks from a time-ordered
 * queue. Dial state lives in a bounded hash table keyed by Idempotency-Key. */
#ifndef CCM_MOCK_H
#define CCM_MOCK_H

#include <stddef.h>

#include "ccm_config.h"

#define CCM_MOCK_MAX_KEYS 2000000u      /* idempotency keys remembered */
#define CCM_MOCK_MAX_CALLBACKS 1000000u /* callbacks queued or in flight */

struct ccm_mock;

/* Knobs the configuration does not expose; zero fields take the defaults
 * shown (SPEC 11: callback retries after 1 s doubling to 60 s, for 1 h). */
struct ccm_mock_options {
  int retry_initial_ms; /* 1000 */
  int retry_max_ms;     /* 60000 */
  int give_up_ms;       /* 3600000 */
  int senders;          /* 16 callback sender threads */
  int http_threads;     /* 4 MHD pool threads */
};

/* Parses and validates an outcome list such as
 * "PICKED:0.60,DISCONNECTED:0.25,RNR:0.15". Returns CCM_OK, or CCM_EINVAL
 * with a one-line message naming MOCK_OUTCOMES in err. */
int ccm_mock_check_outcomes(const char *text, char *err, size_t errlen);

/* Starts a mock listening on 0.0.0.0:cfg->mock_port (0: an ephemeral port,
 * see ccm_mock_port) with cfg's MOCK_* settings, CALLBACK_URL,
 * MOCK_CALLBACK_TOKEN and CALLBACK_SIGNING_SECRET; opts may be NULL. The mock
 * copies what it needs, so cfg may be freed afterwards. Returns CCM_OK and
 * the mock in *out (owned by the caller, released with ccm_mock_stop), or
 * CCM_EINVAL (bad setting, message naming the variable in err), CCM_EIO
 * (cannot listen) or CCM_ENOMEM/CCM_EINTERNAL; on error *out is NULL. */
int ccm_mock_start(const struct ccm_config *cfg, const struct ccm_mock_options *opts,
                   struct ccm_mock **out, char *err, size_t errlen);

/* Returns the TCP port the mock listens on, or 0 for a NULL mock. */
int ccm_mock_port(const struct ccm_mock *m);

/* Stops accepting requests (delayed answers are sent at once), stops the
 * senders (callbacks still pending are dropped with a log line) and frees
 * the mock. Safe on NULL. */
void ccm_mock_stop(struct ccm_mock *m);

#endif
