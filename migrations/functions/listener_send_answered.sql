-- A first part through the number was answered p_ago seconds ago (accepted, or failed: it may
-- have arrived): the next one may start p_min seconds after that answer at the earliest, and
-- with p_max the number's next slot is at least a whole random gap after it.
CREATE OR REPLACE FUNCTION listener_send_answered(
    p_instance text, p_min numeric, p_max numeric, p_ago numeric)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO listener_instances AS i (instance, next_send_at, last_sent_at, updated_at)
    VALUES (p_instance,
            clock_timestamp() - make_interval(secs => p_ago)
                + make_interval(secs => p_min + random() * (COALESCE(p_max, p_min) - p_min)),
            clock_timestamp() - make_interval(secs => p_ago), now())
    ON CONFLICT (instance) DO UPDATE
       SET next_send_at = CASE WHEN p_max IS NULL THEN i.next_send_at
                               ELSE greatest(i.next_send_at, EXCLUDED.next_send_at) END,
           sending_since = NULL,
           last_sent_at = greatest(i.last_sent_at, EXCLUDED.last_sent_at),
           updated_at = now()
$$;
