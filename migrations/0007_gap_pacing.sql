-- listener 0007: gaps between messages through one instance.
--
-- 1. The gap counts from the real send. listener_take_gap books the instance's next slot right
--    before a message's first part; a rate-limit wait or a quick retry after the booking could
--    push the real send towards the next booking. Once the first part is accepted,
--    listener_gap_sent pushes the instance's next slot to a whole random gap after that send.
--
-- 2. No thundering herd. Every message refused a slot used to be told to come back at the same
--    time, the instance's next slot: with 20,000 of them, each gap woke all 20,000, only one
--    could go, and the claims that turned the rest away (in due order, ahead of newer rows)
--    held up every other instance for 20-30 s. Now the k-th message refused while the instance
--    waits for one slot comes back at a random time within k-1 mean gaps after that slot, so
--    the waiters spread over the time they will need (about ln k wake per gap, not all k).

ALTER TABLE listener_instances
    ADD COLUMN IF NOT EXISTS refused integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS refused_for timestamptz;
COMMENT ON COLUMN listener_instances.refused IS
    'messages refused a slot while the instance waits for the slot at refused_for';

CREATE OR REPLACE FUNCTION listener_take_gap(
    p_instance text, p_min integer, p_max integer, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    next_at timestamptz;
    waiting integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT i.next_send_at INTO next_at FROM listener_instances i
     WHERE i.instance = p_instance FOR UPDATE;
    IF next_at > p_at THEN
        UPDATE listener_instances i
           SET refused = CASE WHEN i.refused_for = next_at THEN i.refused + 1 ELSE 1 END,
               refused_for = next_at
         WHERE i.instance = p_instance
        RETURNING i.refused INTO waiting;
        RETURN QUERY SELECT false,
            next_at + make_interval(
                secs => random() * (waiting - 1) * greatest((p_min + p_max) / 2.0, 1));
        RETURN;
    END IF;
    UPDATE listener_instances
       SET next_send_at = p_at + make_interval(secs => p_min + random() * (p_max - p_min)),
           updated_at = now()
     WHERE instance = p_instance;
    RETURN QUERY SELECT true, NULL::timestamptz;
END
$$;

CREATE OR REPLACE FUNCTION listener_gap_sent(
    p_instance text, p_min integer, p_max integer, p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO listener_instances AS i (instance, next_send_at, updated_at)
    VALUES (p_instance, p_at + make_interval(secs => p_min + random() * (p_max - p_min)), now())
    ON CONFLICT (instance) DO UPDATE
       SET next_send_at = greatest(i.next_send_at, EXCLUDED.next_send_at),
           updated_at = now()
$$;
