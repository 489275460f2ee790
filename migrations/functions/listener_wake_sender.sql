-- Make due the messages of the campaigns whose pool holds p_instance that wait for one of
-- p_reasons (a started message only when it waits for this very number).
CREATE OR REPLACE FUNCTION listener_wake_sender(
    p_instance text, p_default text, p_reasons text[], p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    woken integer;
BEGIN
    WITH affected AS (
        SELECT c.id, listener_pool_of(c, p_default) AS pool
          FROM campaigns c
         WHERE c.status <> 'archived'
           AND (p_instance = ANY (listener_pool_of(c, p_default))
                OR (p_default IS NULL AND c.instances IS NULL AND c.instance IS NULL))
    ), woken_rows AS (
        UPDATE campaign_messages m
           SET scheduled_at = p_at, wait_reason = NULL, updated_at = now()
          FROM affected a
         WHERE m.campaign_id = a.id AND m.status = 'pending'
           AND m.wait_reason = ANY (p_reasons)
           AND m.scheduled_at > p_at
           AND (m.parts_sent = 0 OR COALESCE(m.instance, a.pool[1]) = p_instance)
        RETURNING 1
    )
    SELECT count(*) INTO woken FROM woken_rows;
    RETURN woken;
END
$$;
