-- Apply a batch of `messages.update` statuses: forward only, ERROR final, each idempotent (a
-- retried event changes nothing), a part's status_at never before the part was sent (a status
-- received before its part was recorded, or with a clock behind). Updates for parts not recorded
-- yet are kept in delivery_updates_early. The parts' messages get their roll-up. Returns how
-- many messages moved and how many times were moved up to their part's send.
-- Its result gained a column in 0019 (how many times were clamped); CREATE OR REPLACE cannot
-- change a result type, so a definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_delivery_statuses(text[], text[], text[], timestamptz[])'))
       <> 'TABLE(moved integer, clamped integer)' THEN
        DROP FUNCTION apply_delivery_statuses(text[], text[], text[], timestamptz[]);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_delivery_statuses(
    p_instances text[], p_ids text[], p_statuses text[], p_ats timestamptz[]
) RETURNS TABLE (moved integer, clamped integer)
LANGUAGE plpgsql AS $$
DECLARE
    moved_ids uuid[];
    before_send integer;
BEGIN
    WITH v AS (
        SELECT DISTINCT ON (u.instance, u.id) u.instance, u.id, u.status, u.at
          FROM unnest(p_instances, p_ids, p_statuses, p_ats) AS u(instance, id, status, at)
         WHERE delivery_rank(u.status) > 0
         ORDER BY u.instance, u.id, delivery_rank(u.status) DESC, u.at
    ), upd AS (
        UPDATE message_parts p
           SET status = v.status, status_at = GREATEST(v.at, p.sent_at)
          FROM v
         WHERE p.instance = v.instance AND p.provider_message_id = v.id
           AND p.status <> 'ERROR' AND delivery_rank(v.status) > delivery_rank(p.status)
        RETURNING p.message_id, v.at < p.sent_at AS early_time
    ), early AS (
        INSERT INTO delivery_updates_early AS e (instance, provider_message_id, status, status_at)
        SELECT v.instance, v.id, v.status, v.at
          FROM v
         WHERE NOT EXISTS (SELECT 1 FROM message_parts p
                            WHERE p.instance = v.instance AND p.provider_message_id = v.id)
        ON CONFLICT (instance, provider_message_id) DO UPDATE
           SET status = excluded.status, status_at = excluded.status_at
         WHERE e.status <> 'ERROR' AND delivery_rank(excluded.status) > delivery_rank(e.status)
    )
    SELECT array_agg(DISTINCT upd.message_id), count(*) FILTER (WHERE upd.early_time)
      INTO moved_ids, before_send
      FROM upd;
    IF moved_ids IS NOT NULL THEN
        PERFORM roll_up_delivery(moved_ids);
    END IF;
    RETURN QUERY SELECT COALESCE(cardinality(moved_ids), 0), COALESCE(before_send, 0);
END
$$;
