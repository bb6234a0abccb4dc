/* The consumer loop shared by the initiate and callback consumers: a Kafka
 * consumer group member that hands each message to a handler, commits the
 * offset only after the handler's effect is committed, pauses (retrying the
 * same message) while a dependency is down, retries other failures in
 * process (3 times from 0.5 s, doubling) and then dead-letters the message.
 * Messages are handled by a pool of threads, in order per key (call_id). */
#ifndef CCM_CONSUMER_H
#define CCM_CONSUMER_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "ccm_config.h"

/* What a handler may use; owned by the loop. */
struct ccm_consumer_ctx {
  const struct ccm_config *cfg;
  PGconn *db;           /* reconnected by the loop when it breaks */
  redisContext *redis;  /* may be NULL (Redis down); reconnected lazily */
  rd_kafka_t *producer; /* for dead letters */
  const char *name;     /* "initiate", "callback" */
  void *data;           /* the handler's own state */
};

/* Handles one message. Returns CCM_OK when its effect is committed (or when
 * there is nothing to do), CCM_EUNAVAILABLE when a dependency is down (the
 * message is retried until it comes back), CCM_EINVAL when the message can
 * never be processed (dead-lettered at once), any other status for failures
 * worth retrying. err receives a short reason. */
typedef int (*ccm_consumer_handler)(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg,
                                    char *err, size_t errlen);

struct ccm_consumer_spec {
  const char *name; /* for logs */
  const char *topic;
  const char *group;
  ccm_consumer_handler handle;
  void *data; /* shared by all handler threads: ctx->data starts as this */
  /* Optional: gives one handler thread its own state (may replace
   * ctx->data); returns CCM_OK or a status. worker_free undoes it. */
  int (*worker_init)(struct ccm_consumer_ctx *ctx);
  void (*worker_free)(struct ccm_consumer_ctx *ctx);
};

/* Runs the loop until *stop becomes true, with cfg->consumer_workers
 * handler threads (each with its own ctx). Returns CCM_OK, or a status when
 * the consumer cannot be created (message logged; *stop is then set). */
int ccm_consumer_run(const struct ccm_config *cfg, const struct ccm_consumer_spec *spec,
                     atomic_bool *stop);

/* Delivery outcome of one produced message: pass a pointer to one as the
 * message opaque (RD_KAFKA_V_OPAQUE) to a producer from
 * ccm_consumer_producer_new; its delivery report fills it in. */
struct ccm_delivery {
  rd_kafka_resp_err_t err;
  atomic_bool done; /* set by the delivery report, on whichever thread serves it */
};

/* Serves delivery reports until every one of the n deliveries is done (each
 * message is reported within message.timeout.ms, 30 s), so their memory may
 * be released afterwards. */
void ccm_consumer_wait_deliveries(rd_kafka_t *producer, const struct ccm_delivery *d, size_t n);

/* Returns a new idempotent producer (acks=all, 30 s message timeout,
 * delivery reports into struct ccm_delivery opaques) or NULL (reason in
 * err). The caller owns it (rd_kafka_destroy after rd_kafka_flush). */
rd_kafka_t *ccm_consumer_producer_new(const struct ccm_config *cfg, char *err, size_t errlen);

/* Makes sure ctx->redis is connected; returns it or NULL. */
redisContext *ccm_consumer_redis(struct ccm_consumer_ctx *ctx);

/* Releases the concurrency slot of that attempt of call_id, retrying
 * briefly; a failure is logged (the scheduler gives back leaked slots, and
 * they are reconciled from the database when Redis returns). */
void ccm_consumer_release_slot(struct ccm_consumer_ctx *ctx, const char *call_id, int attempt);

#endif
