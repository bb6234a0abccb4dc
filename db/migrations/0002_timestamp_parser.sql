-- Provider timestamps arrive as free text: parse what PostgreSQL can read
-- (a string without a zone is UTC: ccm sessions run in UTC), NULL otherwise,
-- so an unparsable timestamp is ignored instead of failing the callback.
CREATE FUNCTION ccm_try_timestamptz(value TEXT) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF value IS NULL OR length(value) > 64 THEN
    RETURN NULL;
  END IF;
  RETURN value::timestamptz;
EXCEPTION WHEN others THEN
  RETURN NULL;
END;
$$;
