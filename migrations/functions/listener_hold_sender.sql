-- Hold a number (p_reason: instance down, instance restricted) until p_until, when a listener
-- asks its state again. Its waiting messages are moved out of the claim's way to p_backstop
-- (a listener makes them due as soon as the number is back): the messages that started
-- through it, and the unstarted ones of campaigns whose whole pool is now unavailable. A
-- state read before the number was last released (p_seen_at) is stale and holds nothing.
-- Returns whether this began the hold (else it was held already) and how many messages moved.
-- Kept for listeners of the earlier release only: this one holds the number's row and every
-- moved message for the whole move; listeners now call listener_hold_sender_v2 and move the
-- messages in batches (listener_defer_held_batch).
CREATE OR REPLACE FUNCTION listener_hold_sender(
    p_instance text, p_reason text, p_until timestamptz, p_backstop timestamptz,
    p_seen_at timestamptz, p_default text, p_at timestamptz)
RETURNS TABLE (began boolean, deferred integer)
LANGUAGE plpgsql AS $$
DECLARE
    i listener_instances;
    moved integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.held_reason IS NULL AND i.released_at IS NOT NULL AND i.released_at > p_seen_at THEN
        RETURN QUERY SELECT false, 0;
        RETURN;
    END IF;
    UPDATE listener_instances
       SET held_reason = p_reason,
           held_since = COALESCE(held_since, p_at),
           held_until = CASE WHEN held_reason IS NULL THEN p_until
                             ELSE greatest(held_until, p_until) END,
           updated_at = now()
     WHERE instance = p_instance;
    moved := listener_defer_held(p_instance, p_backstop, p_default, p_at);
    RETURN QUERY SELECT i.held_reason IS NULL, moved;
END
$$;
