-- One batch of a number's hold (listener_sender_holds, filed by listener_hold_sender_v2): up to
-- p_limit of the messages due by the hold's `at` that cannot go while p_instance is held are
-- moved to its backstop: first the messages that started through it (waiting for this very
-- number), then the unstarted ones of campaigns none of whose numbers can send ('no sender',
-- or the hold's reason for a campaign of this one number). Rows another statement holds are
-- skipped (the claim's own pick of a sender defers them), so a batch waits for no lock but the
-- hold's own row and holds its locks only for its short time; the number's row is not locked.
-- `mine`: false when the hold is not p_runner's any more (taken over, or the number released:
-- nothing is moved then). p_runner's lease on the move is pushed on with each batch.
CREATE OR REPLACE FUNCTION listener_defer_held_batch(
    p_instance text, p_default text, p_runner text, p_lease interval, p_limit integer)
RETURNS TABLE (moved integer, mine boolean)
LANGUAGE plpgsql AS $$
DECLARE
    h listener_sender_holds;
    reason text;
    affected uuid[];
    blocked uuid[];
    alone uuid[];
    started integer := 0;
    unstarted integer := 0;
BEGIN
    SELECT * INTO h FROM listener_sender_holds x
     WHERE x.instance = p_instance AND x.runner = p_runner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0, false;
        RETURN;
    END IF;
    SELECT i.held_reason INTO reason FROM listener_instances i WHERE i.instance = p_instance;
    IF reason IS NULL THEN  -- released meanwhile (listener_release_sender drops the row too)
        DELETE FROM listener_sender_holds x WHERE x.instance = p_instance;
        RETURN QUERY SELECT 0, false;
        RETURN;
    END IF;
    SELECT COALESCE(array_agg(a.id), '{}'),
           COALESCE(array_agg(a.id) FILTER (WHERE a.blocked), '{}'),
           COALESCE(array_agg(a.id) FILTER (WHERE a.blocked AND cardinality(a.pool) = 1), '{}')
      INTO affected, blocked, alone
      FROM (SELECT c.id, p.pool,
                   NOT EXISTS (
                       SELECT 1 FROM unnest(p.pool) AS n
                        WHERE NOT EXISTS (SELECT 1 FROM sender_instances s
                                           WHERE s.name = n AND NOT s.enabled)
                          AND NOT EXISTS (SELECT 1 FROM listener_instances x
                                           WHERE x.instance = n AND x.held_reason IS NOT NULL))
                       AS blocked
              FROM campaigns c CROSS JOIN LATERAL (SELECT listener_pool_of(c, p_default)) p(pool)
             WHERE c.status <> 'archived' AND p_instance = ANY (p.pool)) a;
    IF NOT h.started_moved THEN
        UPDATE campaign_messages m
           SET scheduled_at = h.backstop, wait_reason = reason, updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b JOIN campaigns c ON c.id = b.campaign_id
                    WHERE b.campaign_id = ANY (affected) AND b.status = 'pending'
                      -- (not `IS DISTINCT FROM`: the campaign's own due rows, see 0016)
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h.at AND b.scheduled_at < h.backstop
                      AND b.parts_sent > 0
                      AND COALESCE(b.instance, (listener_pool_of(c, p_default))[1]) = p_instance
                    LIMIT p_limit
                      FOR UPDATE OF b SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent > 0;
        GET DIAGNOSTICS started = ROW_COUNT;
    END IF;
    IF started < p_limit AND cardinality(blocked) > 0 THEN
        UPDATE campaign_messages m
           SET scheduled_at = h.backstop,
               wait_reason = CASE WHEN m.campaign_id = ANY (alone) THEN reason
                                  ELSE 'no sender' END,
               updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b
                    WHERE b.campaign_id = ANY (blocked) AND b.status = 'pending'
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h.at AND b.scheduled_at < h.backstop
                      AND b.parts_sent = 0
                    LIMIT p_limit - started
                      FOR UPDATE SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS unstarted = ROW_COUNT;
    END IF;
    UPDATE listener_sender_holds x
       SET moved = x.moved + started + unstarted,
           started_moved = x.started_moved OR started < p_limit,
           runner_until = now() + p_lease
     WHERE x.instance = p_instance;
    RETURN QUERY SELECT started + unstarted, true;
END
$$;
