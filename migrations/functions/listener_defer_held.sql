-- Move the due messages that cannot go because p_instance is held to p_backstop, in one
-- statement: called by listener_hold_sender (kept for listeners of the earlier release; the
-- listener now moves them in batches with listener_defer_held_batch).
CREATE OR REPLACE FUNCTION listener_defer_held(
    p_instance text, p_backstop timestamptz, p_default text, p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
BEGIN
    WITH affected AS (
        SELECT c.id, listener_pool_of(c, p_default) AS pool
          FROM campaigns c
         WHERE c.status <> 'archived' AND p_instance = ANY (listener_pool_of(c, p_default))
    ), blocked AS (
        -- Campaigns none of whose numbers can send.
        SELECT a.id, cardinality(a.pool) AS size
          FROM affected a
         WHERE NOT EXISTS (
             SELECT 1 FROM unnest(a.pool) AS n
              WHERE NOT EXISTS (SELECT 1 FROM sender_instances s
                                 WHERE s.name = n AND NOT s.enabled)
                AND NOT EXISTS (SELECT 1 FROM listener_instances h
                                 WHERE h.instance = n AND h.held_reason IS NOT NULL))
    ), moved_rows AS (
        UPDATE campaign_messages m
           SET scheduled_at = p_backstop,
               wait_reason = CASE
                   WHEN m.parts_sent > 0 OR b.size = 1 THEN
                       (SELECT h.held_reason FROM listener_instances h
                         WHERE h.instance = p_instance)
                   ELSE 'no sender' END,
               updated_at = now()
          FROM affected a LEFT JOIN blocked b ON b.id = a.id
         WHERE m.campaign_id = a.id AND m.status = 'pending'
           AND m.wait_reason IS DISTINCT FROM 'paused'
           AND m.scheduled_at <= p_at
           AND ((m.parts_sent > 0 AND COALESCE(m.instance, a.pool[1]) = p_instance)
                OR (m.parts_sent = 0 AND b.id IS NOT NULL))
        RETURNING 1
    )
    SELECT count(*) INTO moved FROM moved_rows;
    RETURN moved;
END
$$;
