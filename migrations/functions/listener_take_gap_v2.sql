-- Take the instance's next send slot when it comes within p_horizon seconds (slot_at: when
-- to send), else say when to come back, spacing messages through one instance by a random gap
-- in [p_min, p_max] seconds (fractions allowed). No thundering herd: the k-th message refused
-- while the instance waits for one slot comes back at a random time within k-1 mean gaps after
-- that slot. Used when a message's first send is tried again after a rate-limit wait.
CREATE OR REPLACE FUNCTION listener_take_gap_v2(
    p_instance text, p_min numeric, p_max numeric, p_horizon numeric, p_at timestamptz)
RETURNS TABLE (go boolean, slot_at timestamptz, wait_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    next_at timestamptz;
    waiting integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT greatest(i.next_send_at, p_at) INTO next_at FROM listener_instances i
     WHERE i.instance = p_instance FOR UPDATE;
    IF next_at > p_at + make_interval(secs => p_horizon) THEN
        UPDATE listener_instances i
           SET refused = CASE WHEN i.refused_for = next_at THEN i.refused + 1 ELSE 1 END,
               refused_for = next_at
         WHERE i.instance = p_instance
        RETURNING i.refused INTO waiting;
        RETURN QUERY SELECT false, NULL::timestamptz,
            next_at + make_interval(
                secs => random() * (waiting - 1) * greatest((p_min + p_max) / 2.0, 1));
        RETURN;
    END IF;
    UPDATE listener_instances
       SET next_send_at = next_at + make_interval(secs => p_min + random() * (p_max - p_min)),
           last_booked_at = clock_timestamp(),
           updated_at = now()
     WHERE instance = p_instance;
    RETURN QUERY SELECT true, next_at, NULL::timestamptz;
END
$$;
