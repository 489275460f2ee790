-- Hold a number (p_reason: instance down, instance restricted) until p_until, when a listener
-- asks its state again, and file the move of its waiting messages aside to p_backstop (those
-- due by p_at) in listener_sender_holds, for listener_defer_held_batch to do in batches. The
-- move is taken by p_runner for p_lease unless one is under way, this listener's own included
-- (its runner then moves these too: a hold found by several messages at once is moved once). A state read before the number was last released (p_seen_at) is stale: nothing
-- is held and no row is returned. Else: whether this began the hold (it was not held), and
-- whether p_runner runs the move. (listener_hold_sender, which moved them in the same
-- statement, is kept for listeners of an earlier release.)
CREATE OR REPLACE FUNCTION listener_hold_sender_v2(
    p_instance text, p_reason text, p_until timestamptz, p_backstop timestamptz,
    p_seen_at timestamptz, p_at timestamptz, p_runner text, p_lease interval)
RETURNS TABLE (began boolean, runner boolean)
LANGUAGE plpgsql AS $$
DECLARE
    i listener_instances;
    mine boolean;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.held_reason IS NULL AND i.released_at IS NOT NULL AND i.released_at > p_seen_at THEN
        RETURN;
    END IF;
    UPDATE listener_instances
       SET held_reason = p_reason,
           held_since = COALESCE(held_since, p_at),
           held_until = CASE WHEN held_reason IS NULL THEN p_until
                             ELSE greatest(held_until, p_until) END,
           updated_at = now()
     WHERE instance = p_instance;
    INSERT INTO listener_sender_holds AS h (instance, at, backstop, runner, runner_until)
    VALUES (p_instance, p_at, p_backstop, p_runner, now() + p_lease)
    ON CONFLICT (instance) DO UPDATE
       SET at = greatest(h.at, EXCLUDED.at),
           backstop = greatest(h.backstop, EXCLUDED.backstop),
           started_moved = false,
           runner = CASE WHEN h.runner_until < now() THEN EXCLUDED.runner ELSE h.runner END,
           runner_until = CASE WHEN h.runner_until < now() THEN EXCLUDED.runner_until
                               ELSE h.runner_until END
    RETURNING h.runner = p_runner AND h.runner_until = now() + p_lease INTO mine;
    RETURN QUERY SELECT i.held_reason IS NULL, mine;
END
$$;
