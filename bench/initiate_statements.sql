-- pgbench script for `make bench`: every database statement of one
-- InitiateCall, in its order (server/ccm_svc_calls.c): the campaign lookup,
-- the duplicate check, then insert_call's statement (as in
-- initiate_insert.sql). What it leaves out is Redis (duplicate lock and
-- concurrency slot), gRPC and the handler's own CPU. Run like
-- initiate_insert.sql.
-- to_char's format quotes its colons, and no comment sits inside a statement:
-- pgbench reads colon-name anywhere in a command as a variable.
\set seq :seq + 1
\set phone :base + :client_id * 100000000 + :seq
SELECT name FROM calls_campaign WHERE id = 1 AND is_active;
SELECT status IN ('PICKED', 'FAILED'),
       ceil(extract(epoch FROM created_at + make_interval(secs => 300) - now()))::bigint
  FROM calls_calllog
 WHERE phone_number = '+' || :phone
   AND (status NOT IN ('PICKED', 'FAILED') OR created_at > now() - make_interval(secs => 300))
 ORDER BY created_at DESC LIMIT 1;
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
