/* The message handlers and loops that `ccm consumers` runs. */
#ifndef CCM_HANDLERS_H
#define CCM_HANDLERS_H

#include <pthread.h>
#include <stdatomic.h>

#include "ccm_consumer.h"

struct ccm_provider;
struct ccm_rules;

/* State of one initiate handler thread (ccm_consumer_ctx.data). The
 * consumer spec's data is a template with provider NULL. */
struct ccm_initiate_state {
  struct ccm_provider *provider;
  atomic_bool *stop;
};

/* Gives an initiate handler thread its own provider client (libcurl
 * handles are not shared between threads). Returns CCM_OK or CCM_ENOMEM. */
int ccm_initiate_worker_init(struct ccm_consumer_ctx *ctx);

/* Releases what ccm_initiate_worker_init made. */
void ccm_initiate_worker_free(struct ccm_consumer_ctx *ctx);

/* Retry rules shared by callback consumers; replaced on reload. */
struct ccm_rules_holder {
  pthread_rwlock_t lock;
  struct ccm_rules *rules;
  int max_attempts_override; /* MAX_RETRY_ATTEMPTS when set, else 0 */
};

/* Handles one InitiateCallEvent (see ccm_consumer_handler). */
int ccm_initiate_handle(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, char *err,
                        size_t errlen);

/* Handles one CallbackEvent: applies the outcome through the state machine
 * exactly once (data: struct ccm_rules_holder). */
int ccm_callback_handle(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, char *err,
                        size_t errlen);

/* The outbox relay: publishes committed outbox rows until *stop. Returns
 * CCM_OK, or a status when it cannot start. */
int ccm_relay_run(const struct ccm_config *cfg, atomic_bool *stop);

#endif
