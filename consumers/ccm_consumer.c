#include "ccm_consumer.h"

#include <stdio.h>
#include <string.h>

#include "ccm_db.h"
#include "ccm_dlq.h"
#include "ccm_error.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_redis.h"
#include "ccm_slots.h"
#include "ccm_time.h"

#define POLL_MS 200
#define RETRIES 3
#define RETRY_FIRST_MS 500
#define OUTAGE_BACKOFF_MAX_MS 5000
#define REDIS_TIMEOUT_MS 1000

static bool conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                     size_t errlen) {
  return rd_kafka_conf_set(conf, name, value, err, errlen) == RD_KAFKA_CONF_OK;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) {
  (void)rk;
  (void)opaque;
  struct ccm_delivery *d = msg->_private;
  if (d == NULL) return;
  d->err = msg->err;
  d->done = true;
}

void ccm_consumer_wait_deliveries(rd_kafka_t *producer, const struct ccm_delivery *d, size_t n) {
  for (size_t i = 0; i < n; i++) {
    while (!d[i].done) rd_kafka_flush(producer, 1000);
  }
}

rd_kafka_t *ccm_consumer_producer_new(const struct ccm_config *cfg, char *err, size_t errlen) {
  rd_kafka_conf_t *conf = ccm_kafka_conf_new(cfg, err, errlen);
  if (conf == NULL) return NULL;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  if (!conf_set(conf, "enable.idempotence", "true", err, errlen) ||
      !conf_set(conf, "acks", "all", err, errlen) ||
      !conf_set(conf, "linger.ms", "2", err, errlen) ||
      !conf_set(conf, "message.timeout.ms", "30000", err, errlen)) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
  if (rk == NULL) rd_kafka_conf_destroy(conf);
  return rk;
}

redisContext *ccm_consumer_redis(struct ccm_consumer_ctx *ctx) {
  if (ctx->redis != NULL && ctx->redis->err != 0) {
    redisFree(ctx->redis);
    ctx->redis = NULL;
  }
  if (ctx->redis == NULL) {
    ccm_redis_connect(ctx->cfg, REDIS_TIMEOUT_MS, &ctx->redis, NULL, 0);
  }
  return ctx->redis;
}

void ccm_consumer_release_slot(struct ccm_consumer_ctx *ctx, const char *call_id, int attempt) {
  for (int i = 0; i < 3; i++) {
    redisContext *r = ccm_consumer_redis(ctx);
    if (r != NULL && ccm_slots_release(r, ctx->cfg, call_id, attempt) == CCM_OK) return;
    if (ctx->redis != NULL) {
      redisFree(ctx->redis);
      ctx->redis = NULL;
    }
    ccm_time_sleep_ms(100);
  }
  ccm_warn("kafka.consumer", "could not release the slot of %s (Redis down): reconciled later",
           call_id);
}

static rd_kafka_t *consumer_new(const struct ccm_config *cfg, const struct ccm_consumer_spec *spec,
                                char *err, size_t errlen) {
  rd_kafka_conf_t *conf = ccm_kafka_conf_new(cfg, err, errlen);
  if (conf == NULL) return NULL;
  if (!conf_set(conf, "group.id", spec->group, err, errlen) ||
      !conf_set(conf, "enable.auto.commit", "false", err, errlen) ||
      !conf_set(conf, "auto.offset.reset", "earliest", err, errlen) ||
      !conf_set(conf, "max.poll.interval.ms", "600000", err, errlen) ||
      !conf_set(conf, "session.timeout.ms", "10000", err, errlen)) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
  if (rk == NULL) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, spec->topic, RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    snprintf(err, errlen, "subscribe to %s: %s", spec->topic, rd_kafka_err2str(e));
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return NULL;
  }
  return rk;
}

/* Makes sure ctx->db is connected; returns CCM_OK or CCM_EUNAVAILABLE. */
static int ensure_db(struct ccm_consumer_ctx *ctx) {
  if (ctx->db == NULL) {
    char err[256];
    if (ccm_db_connect(ctx->cfg, &ctx->db, err, sizeof err) != CCM_OK) return CCM_EUNAVAILABLE;
  }
  return ccm_db_ensure(ctx->db);
}

/* Processes one message to the end: success, or dead letter. Returns false
 * only when asked to stop while a dependency was down (offset not
 * committed: the message is redelivered). */
static bool process(struct ccm_consumer_ctx *ctx, const struct ccm_consumer_spec *spec,
                    const rd_kafka_message_t *msg, atomic_bool *stop) {
  char err[512] = "";
  int failures = 0;
  int64_t outage_backoff = RETRY_FIRST_MS;
  int retry_count = ccm_dlq_retry_count(msg);
  for (;;) {
    int rc = ensure_db(ctx);
    if (rc == CCM_OK) rc = spec->handle(ctx, msg, err, sizeof err);
    if (rc == CCM_OK) return true;
    if (rc == CCM_EUNAVAILABLE) {
      /* Pause instead of dead-lettering everything during an outage. */
      ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer",
                    "%s: dependency unavailable (%s); retrying offset %lld in %lld ms", spec->name,
                    err[0] != '\0' ? err : "database", (long long)msg->offset,
                    (long long)outage_backoff);
      if (atomic_load(stop)) return false;
      ccm_time_sleep_ms(outage_backoff);
      outage_backoff =
          outage_backoff * 2 > OUTAGE_BACKOFF_MAX_MS ? OUTAGE_BACKOFF_MAX_MS : outage_backoff * 2;
      continue;
    }
    if (rc != CCM_EINVAL && failures < RETRIES) {
      ccm_time_sleep_ms((int64_t)RETRY_FIRST_MS << failures);
      failures++;
      continue;
    }
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_ERROR, "kafka.consumer",
                  "%s: message at %s[%d]@%lld dead-lettered after %d retries: %s", spec->name,
                  spec->topic, (int)msg->partition, (long long)msg->offset, failures, err);
    while (ccm_dlq_send(ctx, msg, err, retry_count) != CCM_OK) {
      if (atomic_load(stop)) return false;
      ccm_time_sleep_ms(1000);
    }
    return true;
  }
}

int ccm_consumer_run(const struct ccm_config *cfg, const struct ccm_consumer_spec *spec,
                     atomic_bool *stop) {
  char err[512];
  struct ccm_consumer_ctx ctx = {.cfg = cfg, .name = spec->name, .data = spec->data};
  ctx.producer = ccm_consumer_producer_new(cfg, err, sizeof err);
  rd_kafka_t *rk = ctx.producer != NULL ? consumer_new(cfg, spec, err, sizeof err) : NULL;
  if (rk == NULL) {
    ccm_error("kafka.consumer", "%s consumer cannot start: %s", spec->name, err);
    if (ctx.producer != NULL) rd_kafka_destroy(ctx.producer);
    return CCM_EUNAVAILABLE;
  }
  ccm_info("kafka.consumer", "%s consumer started (topic %s, group %s)", spec->name, spec->topic,
           spec->group);
  while (!atomic_load(stop)) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, POLL_MS);
    rd_kafka_poll(ctx.producer, 0);
    if (msg == NULL) continue;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer", "%s: %s", spec->name,
                      rd_kafka_message_errstr(msg));
      }
      rd_kafka_message_destroy(msg);
      continue;
    }
    bool done = process(&ctx, spec, msg, stop);
    if (done) {
      rd_kafka_resp_err_t e = rd_kafka_commit_message(rk, msg, 0);
      if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer",
                      "%s: offset commit failed (%s); the message may be redelivered", spec->name,
                      rd_kafka_err2str(e));
      }
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  rd_kafka_flush(ctx.producer, 5000);
  rd_kafka_destroy(ctx.producer);
  if (ctx.db != NULL) PQfinish(ctx.db);
  if (ctx.redis != NULL) redisFree(ctx.redis);
  ccm_info("kafka.consumer", "%s consumer stopped", spec->name);
  return CCM_OK;
}
