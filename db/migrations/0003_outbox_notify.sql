-- Wake the outbox relays as soon as an event is committed, instead of
-- polling: NOTIFY is delivered at commit (and folded within a transaction).
CREATE FUNCTION ccm_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('ccm_outbox', '');
  RETURN NULL;
END;
$$;

CREATE TRIGGER calls_outbox_notify
  AFTER INSERT ON calls_outbox
  FOR EACH STATEMENT EXECUTE FUNCTION ccm_outbox_notify();
