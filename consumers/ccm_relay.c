/* The outbox relay: publishes committed calls_outbox rows to Kafka (key =
 * call_id, idempotent producer, acks=all) and marks them sent. Relays take
 * turns through an advisory lock, so rows go out in commit order and two
 * relays never publish the same row in normal operation. A broker outage
 * leaves the rows waiting; nothing is lost. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ccm_buf.h"
#include "ccm_consumer.h"
#include "ccm_db.h"
#include "ccm_error.h"
#include "ccm_handlers.h"
#include "ccm_log.h"
#include "ccm_time.h"

#define RELAY_BATCH 500
#define RELAY_LOCK_KEY "7320146"
#define IDLE_WAIT_MS 1000

/* Publishes one batch. Returns CCM_OK with the number of rows sent in *sent
 * (0 when there was nothing to do or another relay holds the turn), or a
 * status (the transaction is rolled back: the rows stay pending). */
static int relay_batch(const struct ccm_config *cfg, PGconn *db, rd_kafka_t *producer, int *sent) {
  *sent = 0;
  int rc = ccm_db_begin(db);
  if (rc != CCM_OK) return rc;
  PGresult *res = NULL;
  rc = ccm_db_exec(db, "SELECT pg_try_advisory_xact_lock(" RELAY_LOCK_KEY ")", 0, NULL, &res);
  bool turn = rc == CCM_OK && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
  PQclear(res);
  if (rc == CCM_OK && turn) {
    rc = ccm_db_exec(db,
                     "SELECT id, topic, message_key, payload FROM calls_outbox "
                     "WHERE sent_at IS NULL ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED",
                     0, NULL, &res);
  }
  if (rc != CCM_OK || !turn) {
    ccm_db_rollback(db);
    return rc;
  }
  int n = PQntuples(res);
  struct ccm_delivery *d = calloc((size_t)n + 1, sizeof *d);
  unsigned char **payloads = calloc((size_t)n + 1, sizeof *payloads);
  if (d == NULL || payloads == NULL) rc = CCM_ENOMEM;
  int produced = 0;
  for (int i = 0; rc == CCM_OK && i < n; i++) {
    size_t len = 0;
    payloads[i] = PQunescapeBytea((const unsigned char *)PQgetvalue(res, i, 3), &len);
    const char *key = PQgetvalue(res, i, 2);
    if (payloads[i] == NULL) {
      rc = CCM_ENOMEM;
      break;
    }
    rd_kafka_resp_err_t e = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(PQgetvalue(res, i, 1)), RD_KAFKA_V_KEY((void *)key, strlen(key)),
        RD_KAFKA_V_VALUE(payloads[i], len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(&d[i]), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      d[i].done = true;
      d[i].err = e;
      break; /* keep order: later rows wait for the next round */
    }
    produced++;
  }
  if (d != NULL) ccm_consumer_wait_deliveries(producer, d, (size_t)produced);
  /* Rows are marked sent in order up to the first failure, so a later row of
   * a call never goes out before an earlier one. */
  int ok = 0;
  while (ok < produced && d[ok].done && d[ok].err == RD_KAFKA_RESP_ERR_NO_ERROR) ok++;
  if (ok < n && rc == CCM_OK) {
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.relay",
                  "publishing stopped after %d of %d events: %s", ok, n,
                  ok < produced && d[ok].done ? rd_kafka_err2str(d[ok].err) : "broker unavailable");
  }
  if (ok > 0 && rc == CCM_OK) {
    /* The ids themselves, not a range: a row with a lower id may commit
     * later and must not be marked sent unpublished. */
    struct ccm_buf ids;
    ccm_buf_init(&ids, (size_t)ok * 24 + 8);
    rc = ccm_buf_append_str(&ids, "{");
    for (int i = 0; rc == CCM_OK && i < ok; i++) {
      rc = ccm_buf_printf(&ids, "%s%s", i > 0 ? "," : "", PQgetvalue(res, i, 0));
    }
    if (rc == CCM_OK) rc = ccm_buf_append_str(&ids, "}");
    const char *params[] = {ids.data, cfg->topic_initiate};
    /* Publication time of an initiate event is the attempt's start for the
     * stale-call sweep (SPEC 6). */
    if (rc == CCM_OK) {
      rc =
          ccm_db_exec(db,
                      "WITH s AS (UPDATE calls_outbox SET sent_at = now(), attempts = attempts + 1 "
                      "WHERE id = ANY($1::bigint[]) AND sent_at IS NULL "
                      "RETURNING topic, message_key) "
                      "UPDATE calls_calllog SET last_attempt_at = now() WHERE call_id IN "
                      "(SELECT message_key FROM s WHERE topic = $2)",
                      2, params, NULL);
    }
    ccm_buf_free(&ids);
  }
  for (int i = 0; payloads != NULL && i < n; i++) PQfreemem(payloads[i]);
  free(payloads);
  free(d);
  PQclear(res);
  if (rc != CCM_OK) {
    ccm_db_rollback(db);
    return rc;
  }
  rc = ccm_db_commit(db);
  if (rc == CCM_OK) *sent = ok;
  if (rc == CCM_OK && ok < n) return CCM_EUNAVAILABLE;
  return rc;
}

/* Waits for a NOTIFY on ccm_outbox or the timeout. */
static void wait_for_work(PGconn *db, int timeout_ms) {
  /* libpq may already hold notifications, read along with earlier results
   * (or by ccm_db_ensure's check of the idle connection): then there is
   * work now, whatever the socket says. */
  bool pending = false;
  for (PGnotify *n = PQnotifies(db); n != NULL; n = PQnotifies(db)) {
    PQfreemem(n);
    pending = true;
  }
  if (pending) return;
  int fd = PQsocket(db);
  if (fd < 0) {
    ccm_time_sleep_ms(timeout_ms);
    return;
  }
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) > 0) {
    PQconsumeInput(db);
    PGnotify *n = NULL;
    while ((n = PQnotifies(db)) != NULL) PQfreemem(n);
  }
}

int ccm_relay_run(const struct ccm_config *cfg, atomic_bool *stop) {
  char err[512];
  rd_kafka_t *producer = ccm_consumer_producer_new(cfg, err, sizeof err);
  if (producer == NULL) {
    ccm_error("kafka.relay", "outbox relay cannot start: %s", err);
    return CCM_EUNAVAILABLE;
  }
  PGconn *db = NULL;
  int64_t backoff = 500;
  ccm_info("kafka.relay", "outbox relay started");
  while (!atomic_load(stop)) {
    if (db == NULL) {
      if (ccm_db_connect(cfg, &db, err, sizeof err) != CCM_OK ||
          ccm_db_exec_simple(db, "LISTEN ccm_outbox") != CCM_OK) {
        if (db != NULL) ccm_db_close(db);
        db = NULL;
        ccm_time_sleep_ms(1000);
        continue;
      }
    }
    int sent = 0;
    int rc = relay_batch(cfg, db, producer, &sent);
    if (sent > 0) {
      ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_DEBUG, "kafka.relay", "published %d events", sent);
      backoff = 500;
      if (sent == RELAY_BATCH) continue;
    }
    if (rc == CCM_EUNAVAILABLE && ccm_db_ensure(db) != CCM_OK) {
      ccm_db_close(db);
      db = NULL;
      continue;
    }
    if (rc != CCM_OK) {
      /* Broker (or database) trouble: wait, then try the same rows again. */
      ccm_time_sleep_ms(backoff);
      backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
      continue;
    }
    wait_for_work(db, IDLE_WAIT_MS);
  }
  if (db != NULL) ccm_db_close(db);
  rd_kafka_flush(producer, 5000);
  rd_kafka_destroy(producer);
  ccm_info("kafka.relay", "outbox relay stopped");
  return CCM_OK;
}
