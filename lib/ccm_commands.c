#include "ccm_commands.h"

#define NO_ALIAS \
  { NULL, NULL }

const struct ccm_command ccm_commands[] = {
    {"server", NO_ALIAS, ccm_cmd_server, "run the gRPC server (GRPC_PORT, default 50051)",
     "Usage: ccm server\n\n"
     "Runs the CallManager gRPC service, grpc.health.v1.Health and server reflection on\n"
     "0.0.0.0:GRPC_PORT. SIGTERM or Ctrl+C stops accepting, finishes in-flight calls\n"
     "(up to 10 s) and exits 0.\n"},
    {"gateway", NO_ALIAS, ccm_cmd_gateway, "run the REST gateway (HTTP_PORT, default 8000)",
     "Usage: ccm gateway\n\n"
     "Serves the REST API on 0.0.0.0:HTTP_PORT and forwards each request to the gRPC\n"
     "server at GRPC_TARGET.\n"},
    {"consumers",
     {"run_consumers", NULL},
     ccm_cmd_consumers,
     "run the Kafka consumers and the outbox relay",
     "Usage: ccm consumers [--consumer initiate|callback|dlq|relay|all]\n\n"
     "Runs the chosen consumer (default all). Several instances may run at once.\n"},
    {"scheduler",
     {"run_scheduler", NULL},
     ccm_cmd_scheduler,
     "run the retry scheduler and housekeeping",
     "Usage: ccm scheduler [--once]\n\n"
     "Claims due retries every SCHEDULER_INTERVAL_MINUTES and fails stale calls.\n"
     "--once runs one pass and exits 0 on success, 1 otherwise.\n"},
    {"mock-provider", NO_ALIAS, ccm_cmd_mock_provider,
     "run the simulated telephony provider (MOCK_PORT, default 8001)",
     "Usage: ccm mock-provider\n\n"
     "Simulates the provider: POST /api/initiate-call, callbacks to CALLBACK_URL.\n"},
    {"start-all",
     {"start_all", NULL},
     ccm_cmd_start_all,
     "start every process and restart crashed ones",
     "Usage: ccm start-all [--no-mock]\n\n"
     "Starts server, gateway, consumers, scheduler and mock provider as child\n"
     "processes; Ctrl+C or SIGTERM stops all of them.\n"},
    {"migrate", NO_ALIAS, ccm_cmd_migrate, "apply database migrations (idempotent)",
     "Usage: ccm migrate\n\n"
     "Applies the migrations of db/migrations not yet recorded in schema_migrations,\n"
     "in one transaction.\n"},
    {"showmigrations", NO_ALIAS, ccm_cmd_showmigrations, "list migrations and whether applied",
     "Usage: ccm showmigrations\n\nLists every migration: [X] applied, [ ] pending.\n"},
    {"check", NO_ALIAS, ccm_cmd_check,
     "check configuration, PostgreSQL, Redis, Kafka and the retry rules",
     "Usage: ccm check\n\n"
     "Prints one line per dependency; exits 1 naming what failed.\n"},
    {"generate-metrics",
     {"generate_metrics", NULL},
     ccm_cmd_generate_metrics,
     "recompute daily metrics from the call history",
     "Usage: ccm generate-metrics [--date YYYY-MM-DD] [--days N]\n\n"
     "Recomputes calls_callmetrics for the given UTC date, or the last N days\n"
     "(default 1: today), idempotently. --date D --days N covers D and the N-1 days\n"
     "before it. peak_concurrent_calls cannot be rebuilt from history and keeps its\n"
     "stored value.\n"},
    {"cleanup-dlq",
     {"cleanup_dlq", NULL},
     ccm_cmd_cleanup_dlq,
     "re-drive or purge dead-letter entries",
     "Usage: ccm cleanup-dlq [--process-unprocessed] [--cleanup-old] [--retention-days N]\n\n"
     "Re-drives unprocessed entries to their original topic and/or purges processed\n"
     "entries older than N days (default DLQ_RETENTION_DAYS). Without options: both.\n"},
    {"kafka-tail", NO_ALIAS, ccm_cmd_kafka_tail, "print a topic's messages as JSON lines",
     "Usage: ccm kafka-tail --topic T [--from-beginning] [--max N]\n\n"
     "Prints each message decoded from protobuf as one JSON object per line.\n"},
};

const size_t ccm_commands_count = sizeof ccm_commands / sizeof ccm_commands[0];
