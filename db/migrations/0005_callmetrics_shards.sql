-- Daily counters split into shards. Every InitiateCall, callback, retry and
-- failure increments today's counters in its own transaction; with one row
-- per day all of them queued on that row's lock until commit, which capped
-- throughput at a few hundred calls per second whatever the concurrency. A
-- writer now updates the shard of its database session (backend pid modulo
-- 32), so concurrent sessions rarely meet. The view keeps the name and
-- columns of the one-row-per-date table for readers (the seed README's psql
-- queries, GetMetrics, dashboards).
CREATE TABLE calls_callmetrics_shard (
  date                     DATE NOT NULL,
  shard                    SMALLINT NOT NULL CHECK (shard >= 0 AND shard < 32),
  total_calls_initiated    INTEGER NOT NULL DEFAULT 0,
  total_calls_picked       INTEGER NOT NULL DEFAULT 0,
  total_calls_disconnected INTEGER NOT NULL DEFAULT 0,
  total_calls_rnr          INTEGER NOT NULL DEFAULT 0,
  total_calls_failed       INTEGER NOT NULL DEFAULT 0,
  total_retries            INTEGER NOT NULL DEFAULT 0,
  peak_concurrent_calls    INTEGER NOT NULL DEFAULT 0,
  total_call_duration      BIGINT NOT NULL DEFAULT 0,
  dlq_entries_created      INTEGER NOT NULL DEFAULT 0,
  created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (date, shard)
);

INSERT INTO calls_callmetrics_shard (date, shard, total_calls_initiated, total_calls_picked,
  total_calls_disconnected, total_calls_rnr, total_calls_failed, total_retries,
  peak_concurrent_calls, total_call_duration, dlq_entries_created, created_at, updated_at)
SELECT date, 0, total_calls_initiated, total_calls_picked, total_calls_disconnected,
  total_calls_rnr, total_calls_failed, total_retries, peak_concurrent_calls,
  total_call_duration, dlq_entries_created, created_at, updated_at
FROM calls_callmetrics;

DROP TABLE calls_callmetrics;

-- One row per UTC date; id is the day number (days since 1970-01-01).
CREATE VIEW calls_callmetrics AS
SELECT (date - DATE '1970-01-01')::bigint AS id,
       date,
       sum(total_calls_initiated)::integer AS total_calls_initiated,
       sum(total_calls_picked)::integer AS total_calls_picked,
       sum(total_calls_disconnected)::integer AS total_calls_disconnected,
       sum(total_calls_rnr)::integer AS total_calls_rnr,
       sum(total_calls_failed)::integer AS total_calls_failed,
       sum(total_retries)::integer AS total_retries,
       max(peak_concurrent_calls) AS peak_concurrent_calls,
       sum(total_call_duration)::bigint AS total_call_duration,
       CASE WHEN sum(total_calls_picked) > 0
            THEN sum(total_call_duration)::double precision / sum(total_calls_picked)
            ELSE 0 END AS avg_call_duration,
       sum(dlq_entries_created)::integer AS dlq_entries_created,
       min(created_at) AS created_at,
       max(updated_at) AS updated_at
FROM calls_callmetrics_shard
GROUP BY date;
