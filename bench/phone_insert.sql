-- pgbench script for `make bench`: the database's ceiling for
-- AddPhoneNumbers. One transaction = the statement that
-- ccm_svc_add_phone_numbers (server/ccm_svc_campaigns.c) sends for one batch:
-- insert :batch numbers of a campaign, skip those already there, return the
-- ones added. The numbers come from generate_series here instead of a text[]
-- parameter. scripts/bench.sh runs it as
--   pgbench -n -M prepared -f bench/phone_insert.sql -D campaign=<id> -D base=<digits> \
--           -D seq=0 -D batch=10000 -c N -j 2 -t <batches per client>
\set seq :seq + 1
\set first :base + (:client_id * 1000 + :seq) * :batch
INSERT INTO calls_phonenumber (campaign_id, phone_number)
SELECT (:campaign)::bigint, '+' || g
  FROM generate_series((:first)::bigint, (:first)::bigint + (:batch)::bigint - 1) g
ON CONFLICT DO NOTHING RETURNING phone_number;
