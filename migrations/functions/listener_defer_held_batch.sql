-- One batch of a number's hold (listener_sender_holds, filed by listener_hold_sender_v2): up to
-- p_limit of the messages due by the hold's `at` that cannot go while p_instance is held are
-- moved to its backstop: first the messages that started through it (waiting for this very
-- number), then the unstarted ones of campaigns none of whose numbers can send ('no sender',
-- or the hold's reason for a campaign of this one number). Rows another statement holds are
-- skipped (the claim's own pick of a sender defers them), so a batch waits for no lock but the
-- hold's own row and holds its locks only for its short time; the number's row is not locked.
-- Messages aside already (not due by `at`) that wait for this number under another of its
-- reasons (held as restricted, then found unknown to Evolution) take its reason now, in the
-- same batches, after the started ones: the reason a number's messages wait for follows the
-- number's; their time is left alone ('no sender' names the pool, not the number: kept).
-- `moved`: rows moved or relabelled by this batch (the hold's own count is of those moved).
-- `mine`: false when the hold is not p_runner's any more (taken over, or the number released:
-- nothing is moved then). p_runner's lease on the move is pushed on with each batch.
CREATE OR REPLACE FUNCTION listener_defer_held_batch(
    p_instance text, p_default text, p_runner text, p_lease interval, p_limit integer)
RETURNS TABLE (moved integer, mine boolean)
LANGUAGE plpgsql AS $$
DECLARE
    -- (the hold's row as columns, not its row type: this folder also applies over a database
    -- whose numbered files stop before the table's)
    h_at timestamptz;
    h_backstop timestamptz;
    h_started_moved boolean;
    reason text;
    -- The number's other reasons, which its messages aside may still say.
    stale text[];
    affected uuid[];
    blocked uuid[];
    alone uuid[];
    started integer := 0;
    relabelled integer := 0;
    unstarted integer := 0;
    campaign uuid;
    taken integer;
BEGIN
    SELECT x.at, x.backstop, x.started_moved INTO h_at, h_backstop, h_started_moved
      FROM listener_sender_holds x
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
    stale := array_remove(listener_number_holds(), reason);
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
    IF NOT h_started_moved THEN
        UPDATE campaign_messages m
           SET scheduled_at = h_backstop, wait_reason = reason, updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b JOIN campaigns c ON c.id = b.campaign_id
                    WHERE b.campaign_id = ANY (affected) AND b.status = 'pending'
                      -- (not `IS DISTINCT FROM`: the campaign's own due rows, see 0016)
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h_at AND b.scheduled_at < h_backstop
                      AND b.parts_sent > 0
                      AND COALESCE(b.instance, (listener_pool_of(c, p_default))[1]) = p_instance
                    LIMIT p_limit
                      FOR UPDATE OF b SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent > 0;
        GET DIAGNOSTICS started = ROW_COUNT;
        IF started < p_limit THEN
            UPDATE campaign_messages m
               SET wait_reason = reason, updated_at = now()
             WHERE m.id = ANY (ARRAY(
                       SELECT b.id FROM campaign_messages b JOIN campaigns c ON c.id = b.campaign_id
                        WHERE b.campaign_id = ANY (affected) AND b.status = 'pending'
                          -- (idx_campaign_messages_open_pending: only the rows to change)
                          AND b.wait_reason = ANY (stale) AND b.scheduled_at > h_at
                          AND CASE WHEN b.parts_sent > 0
                                   THEN COALESCE(b.instance, (listener_pool_of(c, p_default))[1])
                                        = p_instance
                                   ELSE b.campaign_id = ANY (alone) END
                        LIMIT p_limit - started
                          FOR UPDATE OF b SKIP LOCKED))
               AND m.status = 'pending' AND m.wait_reason = ANY (stale);
            GET DIAGNOSTICS relabelled = ROW_COUNT;
        END IF;
    END IF;
    -- Campaign by campaign, each a short range scan of its own due rows in order
    -- (idx_campaign_messages_campaign_due, as a campaign's hold; over several campaigns at once
    -- the planner walked the whole table, passing every row moved already, each batch).
    FOREACH campaign IN ARRAY blocked LOOP
        EXIT WHEN started + relabelled + unstarted >= p_limit;
        UPDATE campaign_messages m
           SET scheduled_at = h_backstop,
               wait_reason = CASE WHEN campaign = ANY (alone) THEN reason ELSE 'no sender' END,
               updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b
                    WHERE b.campaign_id = campaign AND b.status = 'pending'
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h_at AND b.scheduled_at < h_backstop
                      AND b.parts_sent = 0
                    ORDER BY b.scheduled_at
                    LIMIT p_limit - started - relabelled - unstarted
                      FOR UPDATE SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS taken = ROW_COUNT;
        unstarted := unstarted + taken;
    END LOOP;
    UPDATE listener_sender_holds x
       SET moved = x.moved + started + unstarted,
           started_moved = x.started_moved OR started + relabelled < p_limit,
           runner_until = now() + p_lease
     WHERE x.instance = p_instance;
    RETURN QUERY SELECT started + relabelled + unstarted, true;
END
$$;
