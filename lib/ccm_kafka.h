/* Kafka (librdkafka) set-up shared by every process: client configuration
 * from the environment (KAFKA_BOOTSTRAP_SERVERS plus KAFKA_* pass-through
 * properties), a reachability check and topic creation. */
#ifndef CCM_KAFKA_H
#define CCM_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

struct ccm_config;

/* Returns a new librdkafka configuration with the bootstrap servers and the
 * pass-through properties applied, or NULL with the reason in err. The
 * caller owns it (rd_kafka_conf_destroy, or hands it to rd_kafka_new). */
rd_kafka_conf_t *ccm_kafka_conf_new(const struct ccm_config *cfg, char *err, size_t errlen);

/* Asks the cluster for its metadata within timeout_ms. Returns CCM_OK, or
 * CCM_EUNAVAILABLE with the reason in err. */
int ccm_kafka_check(const struct ccm_config *cfg, int timeout_ms, char *err, size_t errlen);

/* Creates the three topics of SPEC 7 when missing (initiate and callback with
 * 3 partitions, dlq with 1). Returns CCM_OK or CCM_EUNAVAILABLE with err. */
int ccm_kafka_ensure_topics(const struct ccm_config *cfg, int timeout_ms, char *err, size_t errlen);

#endif
