-- The attempt a callback was applied to, so that a redelivered callback can
-- give back that attempt's concurrency slot if a crash kept it.
ALTER TABLE calls_callback ADD COLUMN attempt INTEGER NULL;
