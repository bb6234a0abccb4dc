-- Initial schema. Table and column names follow the original Django
-- implementation (calls_*), so existing psql monitoring queries keep working.

CREATE TABLE calls_campaign (
  id          BIGSERIAL PRIMARY KEY,
  name        VARCHAR(200) NOT NULL,
  description TEXT NULL,
  is_active   BOOLEAN NOT NULL DEFAULT TRUE,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX calls_campaign_active_idx ON calls_campaign (id) WHERE is_active;

CREATE TABLE calls_phonenumber (
  id           BIGSERIAL PRIMARY KEY,
  campaign_id  BIGINT NOT NULL REFERENCES calls_campaign (id) ON DELETE CASCADE,
  phone_number VARCHAR(16) NOT NULL,
  is_active    BOOLEAN NOT NULL DEFAULT TRUE,
  created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT calls_phonenumber_campaign_phone_uniq UNIQUE (campaign_id, phone_number)
);

CREATE TABLE calls_calllog (
  id               BIGSERIAL PRIMARY KEY,
  call_id          VARCHAR(128) NOT NULL,
  campaign_id      BIGINT NOT NULL REFERENCES calls_campaign (id),
  phone_number     VARCHAR(16) NOT NULL,
  status           VARCHAR(16) NOT NULL,
  attempt_count    INTEGER NOT NULL DEFAULT 1,
  max_attempts     INTEGER NOT NULL DEFAULT 3,
  created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_attempt_at  TIMESTAMPTZ NULL,
  next_retry_at    TIMESTAMPTZ NULL,
  total_call_time  INTEGER NOT NULL DEFAULT 0,
  external_call_id VARCHAR(128) NULL,
  error_message    TEXT NULL,
  CONSTRAINT calls_calllog_call_id_uniq UNIQUE (call_id),
  CONSTRAINT calls_calllog_status_check CHECK (status IN
    ('INITIATED', 'PROCESSING', 'RETRYING', 'PICKED', 'DISCONNECTED', 'RNR', 'FAILED')),
  CONSTRAINT calls_calllog_attempts_check CHECK (attempt_count >= 1 AND max_attempts >= 1)
);
-- At most one non-terminal call per number, whatever Redis says.
CREATE UNIQUE INDEX calls_calllog_one_active_per_phone
  ON calls_calllog (phone_number) WHERE status NOT IN ('PICKED', 'FAILED');
-- Scheduler: due retries.
CREATE INDEX calls_calllog_status_next_retry_idx ON calls_calllog (status, next_retry_at);
-- Duplicate window and per-number history.
CREATE INDEX calls_calllog_phone_created_idx ON calls_calllog (phone_number, created_at DESC);
CREATE INDEX calls_calllog_created_at_idx ON calls_calllog (created_at);
CREATE INDEX calls_calllog_campaign_idx ON calls_calllog (campaign_id);
-- Stale sweeper and slot reconciliation: attempts in flight.
CREATE INDEX calls_calllog_in_flight_idx ON calls_calllog (last_attempt_at)
  WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING');

-- One row per attempt of a call.
CREATE TABLE calls_callattempt (
  id               BIGSERIAL PRIMARY KEY,
  call_id          VARCHAR(128) NOT NULL REFERENCES calls_calllog (call_id) ON DELETE CASCADE,
  attempt          INTEGER NOT NULL,
  status           VARCHAR(16) NOT NULL,
  external_call_id VARCHAR(128) NULL,
  dispatched_at    TIMESTAMPTZ NULL,
  outcome_at       TIMESTAMPTZ NULL,
  call_duration    INTEGER NULL,
  created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT calls_callattempt_call_attempt_uniq UNIQUE (call_id, attempt)
);
CREATE INDEX calls_callattempt_external_idx ON calls_callattempt (external_call_id);

-- Every provider callback as received, recorded before it is acknowledged.
CREATE TABLE calls_callback (
  id                 BIGSERIAL PRIMARY KEY,
  call_id            VARCHAR(128) NOT NULL,
  status             VARCHAR(16) NOT NULL,
  call_duration      INTEGER NULL,
  external_call_id   VARCHAR(128) NULL,
  provider_timestamp TEXT NULL,
  outcome_at         TIMESTAMPTZ NULL,
  received_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
  applied_at         TIMESTAMPTZ NULL,
  result             VARCHAR(32) NULL
);
CREATE INDEX calls_callback_call_idx ON calls_callback (call_id);

-- Transactional outbox: events committed with the state change that caused
-- them, published to Kafka by the relay.
CREATE TABLE calls_outbox (
  id          BIGSERIAL PRIMARY KEY,
  topic       VARCHAR(255) NOT NULL,
  message_key VARCHAR(255) NOT NULL,
  payload     BYTEA NOT NULL,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  sent_at     TIMESTAMPTZ NULL,
  attempts    INTEGER NOT NULL DEFAULT 0,
  last_error  TEXT NULL
);
CREATE INDEX calls_outbox_pending_idx ON calls_outbox (id) WHERE sent_at IS NULL;

-- Idempotency-Key of InitiateCall: the first successful response, 24 h.
CREATE TABLE calls_idempotencykey (
  key          VARCHAR(255) PRIMARY KEY,
  method       VARCHAR(64) NOT NULL,
  request_hash CHAR(64) NOT NULL,
  response     BYTEA NULL,
  created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
  expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX calls_idempotencykey_expires_idx ON calls_idempotencykey (expires_at);

-- Daily counters, one row per UTC date.
CREATE TABLE calls_callmetrics (
  id                       BIGSERIAL PRIMARY KEY,
  date                     DATE NOT NULL,
  total_calls_initiated    INTEGER NOT NULL DEFAULT 0,
  total_calls_picked       INTEGER NOT NULL DEFAULT 0,
  total_calls_disconnected INTEGER NOT NULL DEFAULT 0,
  total_calls_rnr          INTEGER NOT NULL DEFAULT 0,
  total_calls_failed       INTEGER NOT NULL DEFAULT 0,
  total_retries            INTEGER NOT NULL DEFAULT 0,
  peak_concurrent_calls    INTEGER NOT NULL DEFAULT 0,
  total_call_duration      BIGINT NOT NULL DEFAULT 0,
  avg_call_duration        DOUBLE PRECISION GENERATED ALWAYS AS (
    CASE WHEN total_calls_picked > 0
         THEN total_call_duration::double precision / total_calls_picked
         ELSE 0 END) STORED,
  dlq_entries_created      INTEGER NOT NULL DEFAULT 0,
  created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT calls_callmetrics_date_uniq UNIQUE (date)
);

-- Messages that could not be processed.
CREATE TABLE calls_dlqentry (
  id             BIGSERIAL PRIMARY KEY,
  original_topic VARCHAR(255) NOT NULL,
  partition      INTEGER NOT NULL,
  "offset"       BIGINT NOT NULL,
  message_key    TEXT NULL,
  payload        BYTEA NOT NULL,
  error_message  TEXT NOT NULL,
  retry_count    INTEGER NOT NULL DEFAULT 0,
  is_processed   BOOLEAN NOT NULL DEFAULT FALSE,
  next_retry_at  TIMESTAMPTZ NULL,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  processed_at   TIMESTAMPTZ NULL,
  CONSTRAINT calls_dlqentry_origin_uniq UNIQUE (original_topic, partition, "offset")
);
CREATE INDEX calls_dlqentry_pending_idx ON calls_dlqentry (next_retry_at) WHERE NOT is_processed;

-- Attempts in flight, for scripts written against the original's table.
CREATE VIEW calls_concurrencycontrol AS
  SELECT id, call_id, phone_number, campaign_id,
         COALESCE(last_attempt_at, created_at) AS started_at
    FROM calls_calllog
   WHERE status IN ('INITIATED', 'PROCESSING', 'RETRYING');
