#include "ccm_consumer.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ccm_db.h"
#include "ccm_dlq.h"
#include "ccm_error.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_offsets.h"
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

/* ---------------------------------------------------------------- pool ---
 * One thread polls Kafka and hands each message to one of cfg->consumer_workers
 * handler threads, chosen by the message key (call_id), so the messages of one
 * call are handled in order while different calls proceed in parallel (each
 * handler waits on PostgreSQL commits and the provider; running several lets
 * their commits share WAL flushes). An offset is stored for the auto-commit
 * only when every earlier message of its partition is done, so a crash
 * redelivers (handlers are idempotent) and never skips a message. */

#define QUEUE_PER_WORKER 32
#define PARTITIONS_MAX 4096

struct worker {
  struct pool *pool;
  pthread_t thread;
  bool started;
  struct ccm_consumer_ctx ctx;
  rd_kafka_message_t *queue[QUEUE_PER_WORKER]; /* ring, q_head first */
  int q_head, q_count;
};

struct pool {
  const struct ccm_consumer_spec *spec;
  rd_kafka_t *rk;
  atomic_bool *stop;
  pthread_mutex_t mu;
  pthread_cond_t work_cv;    /* a job queued, or stopping */
  pthread_cond_t done_cv;    /* a job finished (room in a queue, or drained) */
  int in_flight;             /* queued or being handled */
  struct ccm_offsets *parts; /* per partition number, allocated on first use */
  int nparts;
  struct worker *workers;
  int nworkers;
};

static uint32_t key_hash(const rd_kafka_message_t *msg) {
  uint32_t h = 2166136261u; /* FNV-1a over the key; no key: the partition */
  if (msg->key == NULL || msg->key_len == 0) return (uint32_t)msg->partition;
  const unsigned char *k = msg->key;
  for (size_t i = 0; i < msg->key_len; i++) {
    h ^= k[i];
    h *= 16777619u;
  }
  return h;
}

/* Returns the partition's tracker (grown on demand), or NULL when the
 * partition number is out of range or memory ran out; pool->mu held. */
static struct ccm_offsets *track_of(struct pool *p, int32_t partition) {
  if (partition < 0 || partition >= PARTITIONS_MAX) return NULL;
  if (partition >= p->nparts) {
    int n = partition + 1;
    struct ccm_offsets *grown = realloc(p->parts, (size_t)n * sizeof *grown);
    if (grown == NULL) return NULL;
    memset(grown + p->nparts, 0, (size_t)(n - p->nparts) * sizeof *grown);
    p->parts = grown;
    p->nparts = n;
  }
  struct ccm_offsets *t = &p->parts[partition];
  if (t->cap == 0 && ccm_offsets_init(t, p->nworkers * QUEUE_PER_WORKER) != CCM_OK) return NULL;
  return t;
}

/* Marks msg's offset done (or given up) and, when its partition's commit
 * point moved, stores it for the next commit; pool->mu held. */
static void track_done(struct pool *p, const rd_kafka_message_t *msg, bool done) {
  struct ccm_offsets *t = track_of(p, msg->partition);
  if (t == NULL) return;
  int64_t next = ccm_offsets_done(t, msg->offset, done);
  if (next < 0) return;
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(msg->rkt), msg->partition)->offset =
      next;
  rd_kafka_resp_err_t e = rd_kafka_offsets_store(p->rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    /* The partition was revoked meanwhile: its new owner redelivers. */
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer",
                  "%s: offset %lld of partition %d not stored (%s)", p->spec->name, (long long)next,
                  (int)msg->partition, rd_kafka_err2str(e));
  }
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct pool *p = w->pool;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (w->q_count == 0 && !atomic_load(p->stop)) pthread_cond_wait(&p->work_cv, &p->mu);
    if (w->q_count == 0) break; /* stopping with nothing queued */
    rd_kafka_message_t *msg = w->queue[w->q_head];
    w->q_head = (w->q_head + 1) % QUEUE_PER_WORKER;
    w->q_count--;
    /* Stopping: queued messages are left undone (redelivered later). */
    bool done = false;
    if (!atomic_load(p->stop)) {
      pthread_mutex_unlock(&p->mu);
      done = process(&w->ctx, p->spec, msg, p->stop);
      pthread_mutex_lock(&p->mu);
    }
    /* A message left undone blocks its partition's offset from moving past
     * it, so the later ones are redelivered too. */
    track_done(p, msg, done);
    rd_kafka_message_destroy(msg);
    p->in_flight--;
    pthread_cond_broadcast(&p->done_cv);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

/* Queues msg on its key's worker, waiting for room in its queue and in
 * its partition's tracker (a slow message holds the done ones after it).
 * When stopping, msg is destroyed unhandled (its offset is not stored, so
 * it is redelivered); out of memory stops the consumer (restarted by the
 * supervisor; nothing is skipped because the offset stays behind msg). */
static void dispatch(struct pool *p, rd_kafka_message_t *msg) {
  struct worker *w = &p->workers[key_hash(msg) % (uint32_t)p->nworkers];
  pthread_mutex_lock(&p->mu);
  struct ccm_offsets *t = track_of(p, msg->partition);
  while (t != NULL && (w->q_count == QUEUE_PER_WORKER || ccm_offsets_full(t)) &&
         !atomic_load(p->stop)) {
    struct timespec until = ccm_time_deadline(CLOCK_REALTIME, 100);
    pthread_cond_timedwait(&p->done_cv, &p->mu, &until);
  }
  /* Offsets only grow within a partition's assignment; one that does not
   * (a reassigned partition redelivered from its committed offset) means
   * the old entries are stale. */
  if (t != NULL && !atomic_load(p->stop) && ccm_offsets_add(t, msg->offset) == CCM_EINVAL) {
    ccm_offsets_reset(t);
    ccm_offsets_add(t, msg->offset);
  }
  bool ok = t != NULL && !atomic_load(p->stop);
  if (ok) {
    w->queue[(w->q_head + w->q_count) % QUEUE_PER_WORKER] = msg;
    w->q_count++;
    p->in_flight++;
    pthread_cond_broadcast(&p->work_cv);
  }
  pthread_mutex_unlock(&p->mu);
  if (t == NULL) {
    ccm_error("kafka.consumer", "%s: cannot track partition %d; stopping", p->spec->name,
              (int)msg->partition);
    atomic_store(p->stop, true);
  }
  if (!ok) rd_kafka_message_destroy(msg);
}

/* Waits until every dispatched message is handled (or, when stopping,
 * dropped), then commits the stored offsets. */
static void drain_and_commit(struct pool *p) {
  pthread_mutex_lock(&p->mu);
  while (p->in_flight > 0) pthread_cond_wait(&p->done_cv, &p->mu);
  for (int i = 0; i < p->nparts; i++) ccm_offsets_reset(&p->parts[i]);
  pthread_mutex_unlock(&p->mu);
  rd_kafka_resp_err_t e = rd_kafka_commit(p->rk, NULL, 0);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR && e != RD_KAFKA_RESP_ERR__NO_OFFSET) {
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer",
                  "%s: offset commit failed (%s); messages may be redelivered", p->spec->name,
                  rd_kafka_err2str(e));
  }
}

/* Partitions move between group members: before giving any up, finish what
 * was handed out and commit it, so the next owner starts after it. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *partitions, void *opaque) {
  struct pool *p = opaque;
  /* KAFKA_PARTITION_ASSIGNMENT_STRATEGY may select the cooperative
   * protocol, which moves only some partitions at a time. */
  const char *protocol = rd_kafka_rebalance_protocol(rk);
  bool cooperative = protocol != NULL && strcmp(protocol, "COOPERATIVE") == 0;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (cooperative) {
      rd_kafka_error_t *e = rd_kafka_incremental_assign(rk, partitions);
      if (e != NULL) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, partitions);
    }
    ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_INFO, "kafka.consumer", "%s: %d partition(s) assigned",
                  p->spec->name, partitions->cnt);
    return;
  }
  drain_and_commit(p);
  if (cooperative) {
    rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, partitions);
    if (e != NULL) rd_kafka_error_destroy(e);
  } else {
    rd_kafka_assign(rk, NULL);
  }
}

static rd_kafka_t *consumer_new(const struct ccm_config *cfg, struct pool *pool, char *err,
                                size_t errlen) {
  const struct ccm_consumer_spec *spec = pool->spec;
  rd_kafka_conf_t *conf = ccm_kafka_conf_new(cfg, err, errlen);
  if (conf == NULL) return NULL;
  /* Offsets are stored by the pool once handled and committed by
   * librdkafka every second, on rebalance and on close. */
  if (!conf_set(conf, "group.id", spec->group, err, errlen) ||
      !conf_set(conf, "enable.auto.commit", "true", err, errlen) ||
      !conf_set(conf, "enable.auto.offset.store", "false", err, errlen) ||
      !conf_set(conf, "auto.commit.interval.ms", "1000", err, errlen) ||
      !conf_set(conf, "auto.offset.reset", "earliest", err, errlen) ||
      !conf_set(conf, "max.poll.interval.ms", "600000", err, errlen) ||
      !conf_set(conf, "session.timeout.ms", "10000", err, errlen)) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  rd_kafka_conf_set_opaque(conf, pool);
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

static void pool_free(struct pool *p) {
  for (int i = 0; i < p->nworkers; i++) {
    struct worker *w = &p->workers[i];
    if (p->spec->worker_free != NULL) p->spec->worker_free(&w->ctx);
    if (w->ctx.db != NULL) ccm_db_close(w->ctx.db);
    if (w->ctx.redis != NULL) redisFree(w->ctx.redis);
  }
  for (int i = 0; i < p->nparts; i++) ccm_offsets_free(&p->parts[i]);
  free(p->parts);
  free(p->workers);
  pthread_cond_destroy(&p->work_cv);
  pthread_cond_destroy(&p->done_cv);
  pthread_mutex_destroy(&p->mu);
}

/* Creates the workers' contexts and threads. Returns CCM_OK or a status
 * (reason in err); on failure the threads already started are stopped by
 * the caller through *stop. */
static int pool_start(struct pool *p, const struct ccm_config *cfg, rd_kafka_t *producer, char *err,
                      size_t errlen) {
  for (int i = 0; i < p->nworkers; i++) {
    struct worker *w = &p->workers[i];
    w->pool = p;
    w->ctx = (struct ccm_consumer_ctx){
        .cfg = cfg, .name = p->spec->name, .data = p->spec->data, .producer = producer};
    if (p->spec->worker_init != NULL && p->spec->worker_init(&w->ctx) != CCM_OK) {
      snprintf(err, errlen, "out of memory for handler %d", i);
      return CCM_ENOMEM;
    }
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      snprintf(err, errlen, "cannot start handler thread %d", i);
      return CCM_ENOMEM;
    }
    w->started = true;
  }
  return CCM_OK;
}

static void pool_join(struct pool *p) {
  pthread_mutex_lock(&p->mu);
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nworkers; i++)
    if (p->workers[i].started) pthread_join(p->workers[i].thread, NULL);
}

int ccm_consumer_run(const struct ccm_config *cfg, const struct ccm_consumer_spec *spec,
                     atomic_bool *stop) {
  char err[512] = "";
  struct pool pool = {.spec = spec, .stop = stop, .nworkers = cfg->consumer_workers};
  if (pool.nworkers < 1) pool.nworkers = 1;
  pthread_mutex_init(&pool.mu, NULL);
  pthread_cond_init(&pool.work_cv, NULL);
  pthread_cond_init(&pool.done_cv, NULL);
  pool.workers = calloc((size_t)pool.nworkers, sizeof *pool.workers);
  rd_kafka_t *producer =
      pool.workers != NULL ? ccm_consumer_producer_new(cfg, err, sizeof err) : NULL;
  pool.rk = producer != NULL ? consumer_new(cfg, &pool, err, sizeof err) : NULL;
  int rc = pool.rk != NULL ? pool_start(&pool, cfg, producer, err, sizeof err) : CCM_EUNAVAILABLE;
  if (rc != CCM_OK) {
    ccm_error("kafka.consumer", "%s consumer cannot start: %s", spec->name,
              err[0] != '\0' ? err : "out of memory");
    atomic_store(stop, true);
    pool_join(&pool);
    if (pool.rk != NULL) {
      rd_kafka_consumer_close(pool.rk);
      rd_kafka_destroy(pool.rk);
    }
    if (producer != NULL) rd_kafka_destroy(producer);
    pool_free(&pool);
    return rc;
  }
  ccm_info("kafka.consumer", "%s consumer started (topic %s, group %s, %d handlers)", spec->name,
           spec->topic, spec->group, pool.nworkers);
  while (!atomic_load(stop)) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(pool.rk, POLL_MS);
    rd_kafka_poll(producer, 0);
    if (msg == NULL) continue;
    if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        ccm_log_write(CCM_LOG_KAFKA, CCM_LOG_WARNING, "kafka.consumer", "%s: %s", spec->name,
                      rd_kafka_message_errstr(msg));
      }
      rd_kafka_message_destroy(msg);
      continue;
    }
    dispatch(&pool, msg);
  }
  /* Handlers finish the message in hand; what is queued stays undone. */
  pool_join(&pool);
  drain_and_commit(&pool);
  rd_kafka_consumer_close(pool.rk);
  rd_kafka_destroy(pool.rk);
  rd_kafka_flush(producer, 5000);
  rd_kafka_destroy(producer);
  pool_free(&pool);
  ccm_info("kafka.consumer", "%s consumer stopped", spec->name);
  return CCM_OK;
}
