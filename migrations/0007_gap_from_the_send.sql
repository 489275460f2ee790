-- listener 0007: the gap between messages through one instance counts from the real send.
-- listener_take_gap books the instance's next slot right before a message's first part; a
-- rate-limit wait or a quick retry after the booking could push the real send towards the next
-- booking. Once the first part is accepted, this pushes the instance's next slot to a whole
-- random gap after that send (never earlier than it already is).
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
