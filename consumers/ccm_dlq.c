#include "ccm_dlq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_arena.h"
#include "ccm_consumer.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_log.h"
#include "ccm_metrics_sql.h"
#include "ccm_time.h"

#define REDRIVE_BATCH 100
#define DLQ_LOOP_MS 5000
#define ARENA_MAX (64u * 1024u * 1024u)

int ccm_dlq_retry_count(const rd_kafka_message_t *msg) {
  rd_kafka_headers_t *headers = NULL;
  if (rd_kafka_message_headers(msg, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR) return 0;
  const void *value = NULL;
  size_t size = 0;
  if (rd_kafka_header_get_last(headers, CCM_DLQ_RETRIES_HEADER, &value, &size) !=
          RD_KAFKA_RESP_ERR_NO_ERROR ||
      size == 0 || size > 8) {
    return 0;
  }
  char text[9];
  memcpy(text, value, size);
  text[size] = '\0';
  return atoi(text);
}

/* Produces one message and waits for its delivery. Returns CCM_OK or
 * CCM_EUNAVAILABLE. */
static int produce_sync(rd_kafka_t *producer, const char *topic, int32_t partition, const void *key,
                        size_t key_len, const void *value, size_t value_len, int retries_header) {
  char header[16];
  snprintf(header, sizeof header, "%d", retries_header);
  rd_kafka_headers_t *headers = rd_kafka_headers_new(1);
  rd_kafka_header_add(headers, CCM_DLQ_RETRIES_HEADER, -1, header, -1);
  struct ccm_delivery d = {.done = false};
  rd_kafka_resp_err_t e = rd_kafka_producev(
      producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
      RD_KAFKA_V_KEY((void *)key, key_len), RD_KAFKA_V_VALUE((void *)value, value_len),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_OPAQUE(&d),
      RD_KAFKA_V_END);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_headers_destroy(headers);
    return CCM_EUNAVAILABLE;
  }
  ccm_consumer_wait_deliveries(producer, &d, 1);
  return d.err == RD_KAFKA_RESP_ERR_NO_ERROR ? CCM_OK : CCM_EUNAVAILABLE;
}

int ccm_dlq_send(struct ccm_consumer_ctx *ctx, const rd_kafka_message_t *msg, const char *error,
                 int retry_count) {
  const char *topic = rd_kafka_topic_name(msg->rkt);
  Callmanager__Events__V1__DeadLetter dl = CALLMANAGER__EVENTS__V1__DEAD_LETTER__INIT;
  dl.original_topic = (char *)topic;
  dl.partition = msg->partition;
  dl.offset = msg->offset;
  dl.key.data = msg->key;
  dl.key.len = msg->key_len;
  dl.payload.data = msg->payload;
  dl.payload.len = msg->len;
  dl.error = (char *)(error != NULL ? error : "");
  dl.failed_at_ms = ccm_time_now_ms();
  dl.retry_count = retry_count;
  struct ccm_arena arena;
  ccm_arena_init(&arena, ARENA_MAX);
  size_t len = callmanager__events__v1__dead_letter__get_packed_size(&dl);
  unsigned char *bytes = ccm_arena_alloc(&arena, len + 1);
  if (bytes == NULL) {
    ccm_arena_free(&arena);
    return CCM_ENOMEM;
  }
  callmanager__events__v1__dead_letter__pack(&dl, bytes);
  int rc = produce_sync(ctx->producer, ctx->cfg->topic_dlq, RD_KAFKA_PARTITION_UA, msg->key,
                        msg->key_len, bytes, len, retry_count);
  if (rc == CCM_OK) {
    char partition[16], offset[32], retries[16];
    snprintf(partition, sizeof partition, "%d", (int)msg->partition);
    snprintf(offset, sizeof offset, "%lld", (long long)msg->offset);
    snprintf(retries, sizeof retries, "%d", retry_count);
    char *key = msg->key != NULL ? ccm_arena_strndup(&arena, msg->key, msg->key_len) : NULL;
    const char *params[] = {topic,
                            partition,
                            offset,
                            key,
                            ccm_db_bytea_hex(&arena, msg->payload, msg->len),
                            error != NULL ? error : "",
                            retries};
    /* A key or error that is not valid text must not block the entry. */
    PGresult *res = NULL;
    rc =
        ccm_db_exec(ctx->db,
                    "WITH e AS (INSERT INTO calls_dlqentry (original_topic, partition, \"offset\", "
                    "message_key, payload, error_message, retry_count, next_retry_at) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, "
                    "now() + CASE $7::int WHEN 0 THEN interval '1 minute' WHEN 1 THEN "
                    "interval '5 minutes' ELSE interval '30 minutes' END) "
                    "ON CONFLICT (original_topic, partition, \"offset\") DO NOTHING RETURNING 1) "
                    "INSERT INTO calls_callmetrics_shard (date, shard, dlq_entries_created) "
                    "SELECT " CCM_SQL_UTC_TODAY ", " CCM_SQL_METRICS_SHARD
                    ", 1 FROM e "
                    "ON CONFLICT (date, shard) DO UPDATE SET " CCM_SQL_METRICS_ADD(
                        "dlq_entries_created") ", updated_at = now()",
                    7, params, &res);
    PQclear(res);
    if (rc == CCM_EINVAL) {
      /* The key was not valid UTF-8: keep the entry without it. */
      params[3] = NULL;
      rc = ccm_db_exec(ctx->db,
                       "INSERT INTO calls_dlqentry (original_topic, partition, \"offset\", "
                       "message_key, payload, error_message, retry_count, next_retry_at) VALUES "
                       "($1, $2, $3, $4, $5, $6, $7, now() + interval '1 minute') "
                       "ON CONFLICT DO NOTHING",
                       7, params, NULL);
    }
    if (rc == CCM_OK) {
      ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.dlq",
                    "Dead letter: %s[%d]@%lld (retries %d): %s", topic, (int)msg->partition,
                    (long long)msg->offset, retry_count, error != NULL ? error : "");
    }
  }
  ccm_arena_free(&arena);
  return rc;
}

int ccm_dlq_redrive(const struct ccm_config *cfg, PGconn *db, rd_kafka_t *producer,
                    bool ignore_backoff, int *count) {
  (void)cfg;
  *count = 0;
  int rc = ccm_db_begin(db);
  if (rc != CCM_OK) return rc;
  PGresult *res = NULL;
  const char *params[] = {ignore_backoff ? "true" : "false"};
  rc = ccm_db_exec(db,
                   "SELECT id, original_topic, message_key, payload, retry_count "
                   "FROM calls_dlqentry WHERE NOT is_processed AND retry_count < 3 "
                   "AND ($1::boolean OR next_retry_at <= now()) "
                   "ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED",
                   1, params, &res);
  for (int i = 0; rc == CCM_OK && i < PQntuples(res); i++) {
    size_t len = 0;
    unsigned char *payload = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 3), &len);
    const char *key = ccm_db_is_null(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
    int retries = (int)ccm_db_get_ll(res, i, 4) + 1;
    if (payload == NULL) {
      rc = CCM_ENOMEM;
      break;
    }
    rc = produce_sync(producer, PQgetvalue(res, i, 1), RD_KAFKA_PARTITION_UA, key,
                      key != NULL ? strlen(key) : 0, payload, len, retries);
    PQfreemem(payload);
    if (rc != CCM_OK) break;
    const char *upd[] = {PQgetvalue(res, i, 0)};
    rc = ccm_db_exec(db,
                     "UPDATE calls_dlqentry SET is_processed = true, processed_at = now(), "
                     "retry_count = retry_count + 1 WHERE id = $1",
                     1, upd, NULL);
    if (rc == CCM_OK) {
      (*count)++;
      ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_INFO, "kafka.dlq",
                    "Re-drove dead letter %s to %s (re-drive %d of %d)", PQgetvalue(res, i, 0),
                    PQgetvalue(res, i, 1), retries, CCM_DLQ_MAX_REDRIVES);
    }
  }
  PQclear(res);
  if (rc != CCM_OK) {
    ccm_db_rollback(db);
    return rc;
  }
  return ccm_db_commit(db);
}

int ccm_dlq_purge(PGconn *db, int retention_days, int *count) {
  char days[16];
  snprintf(days, sizeof days, "%d", retention_days);
  const char *params[] = {days};
  PGresult *res = NULL;
  int rc =
      ccm_db_exec(db,
                  "WITH d AS (DELETE FROM calls_dlqentry WHERE is_processed AND "
                  "coalesce(processed_at, created_at) < now() - make_interval(days => $1::int) "
                  "RETURNING 1) SELECT count(*) FROM d",
                  1, params, &res);
  if (rc != CCM_OK) return rc;
  *count = (int)ccm_db_get_ll(res, 0, 0);
  PQclear(res);
  return CCM_OK;
}

int ccm_dlq_run(const struct ccm_config *cfg, atomic_bool *stop) {
  char err[512];
  rd_kafka_t *producer = ccm_consumer_producer_new(cfg, err, sizeof err);
  if (producer == NULL) {
    ccm_error("kafka.dlq", "DLQ consumer cannot start: %s", err);
    return CCM_EUNAVAILABLE;
  }
  PGconn *db = NULL;
  ccm_info("kafka.dlq", "DLQ consumer started");
  while (!atomic_load(stop)) {
    if (db == NULL && ccm_db_connect(cfg, &db, err, sizeof err) != CCM_OK) db = NULL;
    int count = 0;
    if (db != NULL && ccm_dlq_redrive(cfg, db, producer, false, &count) != CCM_OK &&
        ccm_db_ensure(db) != CCM_OK) {
      ccm_db_close(db);
      db = NULL;
    }
    for (int waited = 0; waited < DLQ_LOOP_MS && !atomic_load(stop); waited += 200) {
      ccm_time_sleep_ms(200);
    }
  }
  if (db != NULL) ccm_db_close(db);
  rd_kafka_flush(producer, 5000);
  rd_kafka_destroy(producer);
  ccm_info("kafka.dlq", "DLQ consumer stopped");
  return CCM_OK;
}
