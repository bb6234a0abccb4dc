#include "ccm_kafka.h"

#include <stdio.h>
#include <string.h>

#include "ccm_config.h"
#include "ccm_error.h"
#include "ccm_log.h"

/* librdkafka logs through this instead of stderr, into kafka.log. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  (void)rk;
  int lvl = level <= 3   ? CCM_LOG_ERROR
            : level <= 4 ? CCM_LOG_WARNING
            : level <= 6 ? CCM_LOG_INFO
                         : CCM_LOG_DEBUG;
  ccm_log_write(CCM_LOG_KAFKA, lvl, "kafka.rdkafka", "%s: %s", fac, buf);
}

rd_kafka_conf_t *ccm_kafka_conf_new(const struct ccm_config *cfg, char *err, size_t errlen) {
  if (cfg == NULL) return NULL;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (conf == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  rd_kafka_conf_set_log_cb(conf, log_cb);
  if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->kafka_bootstrap_servers, err, errlen) !=
      RD_KAFKA_CONF_OK) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  for (size_t i = 0; i < cfg->kafka_prop_count; i++) {
    const struct ccm_kafka_prop *p = &cfg->kafka_props[i];
    char why[256];
    if (rd_kafka_conf_set(conf, p->name, p->value, why, sizeof why) != RD_KAFKA_CONF_OK) {
      snprintf(err, errlen, "Kafka property %s: %s", p->name, why);
      rd_kafka_conf_destroy(conf);
      return NULL;
    }
  }
  return conf;
}

static rd_kafka_t *admin_client(const struct ccm_config *cfg, char *err, size_t errlen) {
  rd_kafka_conf_t *conf = ccm_kafka_conf_new(cfg, err, errlen);
  if (conf == NULL) return NULL;
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
  if (rk == NULL) rd_kafka_conf_destroy(conf);
  return rk;
}

int ccm_kafka_check(const struct ccm_config *cfg, int timeout_ms, char *err, size_t errlen) {
  rd_kafka_t *rk = admin_client(cfg, err, errlen);
  if (rk == NULL) return CCM_EUNAVAILABLE;
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms);
  int status = CCM_OK;
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    snprintf(err, errlen, "no answer from %s: %s", cfg->kafka_bootstrap_servers,
             rd_kafka_err2str(e));
    status = CCM_EUNAVAILABLE;
  } else if (md->broker_cnt == 0) {
    snprintf(err, errlen, "no broker known at %s", cfg->kafka_bootstrap_servers);
    status = CCM_EUNAVAILABLE;
  }
  if (md != NULL) rd_kafka_metadata_destroy(md);
  rd_kafka_destroy(rk);
  return status;
}

int ccm_kafka_ensure_topics(const struct ccm_config *cfg, int timeout_ms, char *err,
                            size_t errlen) {
  rd_kafka_t *rk = admin_client(cfg, err, errlen);
  if (rk == NULL) return CCM_EUNAVAILABLE;
  const char *names[3] = {cfg->topic_initiate, cfg->topic_callback, cfg->topic_dlq};
  const int partitions[3] = {3, 3, 1};
  rd_kafka_NewTopic_t *topics[3] = {NULL, NULL, NULL};
  int status = CCM_OK;
  for (int i = 0; i < 3 && status == CCM_OK; i++) {
    topics[i] = rd_kafka_NewTopic_new(names[i], partitions[i], 1, err, errlen);
    if (topics[i] == NULL) status = CCM_EINVAL;
  }
  rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
  if (status == CCM_OK) {
    rd_kafka_AdminOptions_set_operation_timeout(opts, timeout_ms, NULL, 0);
    rd_kafka_CreateTopics(rk, topics, 3, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 1000);
    if (ev == NULL) {
      snprintf(err, errlen, "timed out creating topics");
      status = CCM_EUNAVAILABLE;
    } else if (rd_kafka_event_error(ev) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      snprintf(err, errlen, "creating topics: %s", rd_kafka_event_error_string(ev));
      status = CCM_EUNAVAILABLE;
    } else {
      size_t n = 0;
      const rd_kafka_topic_result_t **res =
          rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
      for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
          snprintf(err, errlen, "topic %s: %s", rd_kafka_topic_result_name(res[i]),
                   rd_kafka_err2str(e));
          status = CCM_EUNAVAILABLE;
        }
      }
    }
    if (ev != NULL) rd_kafka_event_destroy(ev);
  }
  rd_kafka_AdminOptions_destroy(opts);
  rd_kafka_queue_destroy(q);
  for (int i = 0; i < 3; i++) {
    if (topics[i] != NULL) rd_kafka_NewTopic_destroy(topics[i]);
  }
  rd_kafka_destroy(rk);
  return status;
}
