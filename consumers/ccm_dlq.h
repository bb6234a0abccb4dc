/* Dead letters (SPEC section 7): a message that cannot be processed goes to
 * dlq_topic as a DeadLetter and to table calls_dlqentry; the DLQ consumer and
 * `ccm cleanup-dlq` re-drive entries to their original topic (at most 3
 * times, after 1, 5 and 30 minutes) and purge old processed ones. */
#ifndef CCM_DLQ_H
#define CCM_DLQ_H

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "ccm_config.h"

struct ccm_consumer_ctx;

#define CCM_DLQ_MAX_REDRIVES 3
#define CCM_DLQ_RETRIES_HEADER "ccm-dlq-retries"

/* Returns how many times msg was already re-driven (its header), 0 if none. */
int ccm_dlq_retry_count(const rd_kafka_message_t *msg);

/* Writes the dead letter to dlq_topic and calls_dlqentry (counting it in the
 * day's metrics). Returns CCM_OK when both are durable, else a status (the
 * caller retries: nothing is lost). */
int ccm_dlq_send(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, const char *error,
                 int retry_count);

/* Re-drives unprocessed entries with fewer than 3 re-drives whose backoff has
 * passed (or all of them when ignore_backoff). Stores the number re-driven in
 * *count. Returns CCM_OK or a status. */
int ccm_dlq_redrive(const struct ccm_config *cfg, PGconn *db, rd_kafka_t *producer,
                    bool ignore_backoff, int *count);

/* Deletes processed entries older than retention_days. Stores the number
 * deleted in *count. Returns CCM_OK or a database status. */
int ccm_dlq_purge(PGconn *db, int retention_days, int *count);

/* The DLQ consumer: re-drives due entries every few seconds until *stop.
 * Returns CCM_OK, or a status when it cannot start. */
int ccm_dlq_run(const struct ccm_config *cfg, atomic_bool *stop);

#endif
