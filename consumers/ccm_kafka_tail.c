/* `ccm kafka-tail`: prints a topic's messages decoded from protobuf, one JSON
 * object per line ({"partition", "offset", "key", "value"}), without joining
 * a consumer group (nothing is committed). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callmanager/events/v1/events.pb-c.h"
#include "ccm_cli.h"
#include "ccm_commands.h"
#include "ccm_error.h"
#include "ccm_json_map.h"
#include "ccm_kafka.h"
#include "ccm_log.h"
#include "ccm_signals.h"

#define IDLE_EXIT_MS 5000 /* with --max: give up after this long without news */

/* Picks the event type of a topic by the configured topic names. */
static const ProtobufCMessageDescriptor *descriptor_for(const struct ccm_config *cfg,
                                                        const char *topic) {
  if (strcmp(topic, cfg->topic_initiate) == 0) {
    return &callmanager__events__v1__initiate_call_event__descriptor;
  }
  if (strcmp(topic, cfg->topic_callback) == 0) {
    return &callmanager__events__v1__callback_event__descriptor;
  }
  if (strcmp(topic, cfg->topic_dlq) == 0) return &callmanager__events__v1__dead_letter__descriptor;
  return NULL;
}

static void print_message(const ProtobufCMessageDescriptor *desc, const rd_kafka_message_t *m) {
  json_t *line = json_object();
  json_object_set_new(line, "partition", json_integer(m->partition));
  json_object_set_new(line, "offset", json_integer(m->offset));
  json_object_set_new(line, "key", m->key != NULL ? json_stringn(m->key, m->key_len) : json_null());
  ProtobufCMessage *msg =
      desc != NULL ? protobuf_c_message_unpack(desc, NULL, m->len, m->payload) : NULL;
  if (msg != NULL) {
    json_object_set_new(line, "value", ccm_json_from_message(msg));
    protobuf_c_message_free_unpacked(msg, NULL);
  } else {
    json_object_set_new(line, "value", json_null());
    json_object_set_new(line, "error", json_string("undecodable payload"));
    json_object_set_new(line, "size", json_integer((json_int_t)m->len));
  }
  char *text = json_dumps(line, JSON_COMPACT);
  if (text != NULL) puts(text);
  fflush(stdout);
  free(text);
  json_decref(line);
}

int ccm_cmd_kafka_tail(int argc, char **argv) {
  const char *topic = NULL;
  bool from_beginning = false;
  long max = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
      topic = argv[++i];
    } else if (strcmp(argv[i], "--from-beginning") == 0) {
      from_beginning = true;
    } else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc) {
      char *end = NULL;
      max = strtol(argv[++i], &end, 10);
      if (*end != '\0' || max < 1) {
        fprintf(stderr, "ccm kafka-tail: --max must be a positive number\n");
        return CCM_EXIT_USAGE;
      }
    } else {
      fprintf(stderr, "ccm kafka-tail: unknown option '%s'\n", argv[i]);
      return CCM_EXIT_USAGE;
    }
  }
  if (topic == NULL) {
    fprintf(stderr, "ccm kafka-tail: --topic is required\n");
    return CCM_EXIT_USAGE;
  }
  if (ccm_signals_block() != CCM_OK) return CCM_EXIT_FAILURE;
  struct ccm_config cfg;
  int exit_code = ccm_cli_setup(&cfg, "kafka-tail");
  char err[512];
  rd_kafka_conf_t *conf =
      exit_code == CCM_EXIT_OK ? ccm_kafka_conf_new(&cfg, err, sizeof err) : NULL;
  rd_kafka_t *rk = NULL;
  if (conf != NULL) {
    /* A throwaway group: assign() below does not use it, librdkafka wants one. */
    rd_kafka_conf_set(conf, "group.id", "ccm-kafka-tail", NULL, 0);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", NULL, 0);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == NULL) rd_kafka_conf_destroy(conf);
  }
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rk != NULL ? rd_kafka_topic_new(rk, topic, NULL) : NULL;
  if (rkt != NULL && rd_kafka_metadata(rk, 0, rkt, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    md = NULL;
  }
  if (exit_code == CCM_EXIT_OK && (md == NULL || md->topic_cnt != 1 || md->topics[0].err != 0)) {
    fprintf(stderr, "ccm kafka-tail: topic %s not available%s%s\n", topic, rk == NULL ? ": " : "",
            rk == NULL ? err : "");
    exit_code = CCM_EXIT_FAILURE;
  }
  if (exit_code == CCM_EXIT_OK) {
    rd_kafka_topic_partition_list_t *parts =
        rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (int p = 0; p < md->topics[0].partition_cnt; p++) {
      rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[p].id)->offset =
          from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
    }
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    const ProtobufCMessageDescriptor *desc = descriptor_for(&cfg, topic);
    long printed = 0;
    int idle_ms = 0;
    while (max < 0 || printed < max) {
      if (ccm_signals_wait(0) != 0) break;
      rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
      if (m == NULL || m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (m != NULL) rd_kafka_message_destroy(m);
        idle_ms += 200;
        if (max > 0 && idle_ms >= IDLE_EXIT_MS) break;
        continue;
      }
      idle_ms = 0;
      print_message(desc, m);
      printed++;
      rd_kafka_message_destroy(m);
    }
  }
  if (md != NULL) rd_kafka_metadata_destroy(md);
  if (rkt != NULL) rd_kafka_topic_destroy(rkt);
  if (rk != NULL) {
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
  ccm_config_free(&cfg);
  return exit_code;
}
