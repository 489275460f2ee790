-- An inbox row failed alone (applying it raised an error about its own data): count the attempt
-- and keep the error; at `p_max` attempts move it to webhook_dead_letters, out of everyone's
-- way. No row: it was applied or set aside meanwhile (by another listener). Returns whether it
-- is dead now, its kind and its instance.
CREATE OR REPLACE FUNCTION webhook_inbox_failed(p_id bigint, p_error text, p_max integer)
RETURNS TABLE (dead boolean, kind text, instance text)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    UPDATE webhook_inbox w
       SET attempts = w.attempts + 1, last_error = p_error
     WHERE w.id = p_id
    RETURNING w.attempts, w.kind, w.instance INTO n, kind, instance;
    IF n IS NULL THEN
        RETURN;
    END IF;
    dead := n >= p_max;
    IF dead THEN
        WITH moved AS (DELETE FROM webhook_inbox w WHERE w.id = p_id RETURNING w.*)
        INSERT INTO webhook_dead_letters (id, kind, instance, provider_message_id, status, phone,
                                          opt_out, at, received_at, attempts, error)
        SELECT m.id, m.kind, m.instance, m.provider_message_id, m.status, m.phone, m.opt_out,
               m.at::text, m.received_at, m.attempts, p_error
          FROM moved m
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NEXT;
END
$$;
