-- pgbench script for `make bench`: the database's ceiling for InitiateCall.
-- One transaction = exactly the statement that InitiateCall's insert_call
-- (server/ccm_svc_calls.c) sends: the call, its first attempt, its outbox
-- event (the AFTER INSERT trigger's NOTIFY included) and the day's metrics
-- upsert, in one CTE statement. Every transaction uses a distinct number and
-- call id: scripts/bench.sh runs it as
--   pgbench -n -M prepared -f bench/initiate_insert.sql -D base=<digits> -D seq=0 \
--           -c N -j 2 -T SECONDS
-- (-M prepared: parsed and planned once per connection, as ccm_db_exec
-- does since it prepares each statement once per connection).
-- The payload is a fixed 91-byte InitiateCallEvent of the same shape as the
-- server's.
-- to_char's format quotes its colons, and no comment sits inside a statement:
-- pgbench reads colon-name anywhere in a command as a variable.
\set seq :seq + 1
\set phone :base + :client_id * 100000000 + :seq
WITH c AS (INSERT INTO calls_calllog (call_id, campaign_id, phone_number, status,
                                      attempt_count, max_attempts)
           VALUES ('call_1_+' || :phone || '_20261126000000_' || lpad(to_hex((:client_id)::int), 8, '0'),
                   1, '+' || :phone, 'INITIATED', 1, 3)
           RETURNING call_id, created_at),
     a AS (INSERT INTO calls_callattempt (call_id, attempt, status)
           SELECT call_id, 1, 'INITIATED' FROM c),
     o AS (INSERT INTO calls_outbox (topic, message_key, payload)
           SELECT 'initiated_call_topic', call_id,
                  '\x0a2d63616c6c5f315f2b31323030303030303030303030305f32303236313132363030303030305f61626364313233341001220d42656e63682063616d706169676e2a0e2b31323030303030303030303030300130b0ddb9d2b833'::bytea
           FROM c),
     m AS (INSERT INTO calls_callmetrics_shard (date, shard, total_calls_initiated,
                                                peak_concurrent_calls)
           SELECT (created_at AT TIME ZONE 'UTC')::date, pg_backend_pid() % 32, 1, 1 FROM c
           ON CONFLICT (date, shard) DO UPDATE SET
             total_calls_initiated = calls_callmetrics_shard.total_calls_initiated
                                     + EXCLUDED.total_calls_initiated,
             peak_concurrent_calls = GREATEST(calls_callmetrics_shard.peak_concurrent_calls,
                                              EXCLUDED.peak_concurrent_calls),
             updated_at = now())
SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24":"MI":"SS"Z"') FROM c;
