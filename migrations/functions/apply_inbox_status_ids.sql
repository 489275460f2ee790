-- Apply these statuses of the inbox (those another listener is applying are left to it) and
-- delete them, in the caller's transaction: the oldest fresh ones (apply_inbox_statuses), a
-- half of a batch that failed, or one suspect alone; each at its receipt at the latest. Returns
-- how many were taken, the instances that reported an ERROR among them (their restriction
-- check comes next), and how many times were later than their receipt or before their part's
-- send (both clamped).
-- Its result gained the clamped counts in 0019; CREATE OR REPLACE cannot change a result type,
-- so a definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_inbox_status_ids(bigint[])'))
       <> 'TABLE(taken integer, error_instances text[], clamped_future integer, '
          'clamped_before_send integer)' THEN
        DROP FUNCTION apply_inbox_status_ids(bigint[]);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_inbox_status_ids(p_ids bigint[])
RETURNS TABLE (taken integer, error_instances text[], clamped_future integer,
               clamped_before_send integer)
LANGUAGE plpgsql AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH batch AS (
        DELETE FROM webhook_inbox w
         WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                         WHERE b.id = ANY (p_ids) AND b.kind = 'status'
                           FOR UPDATE SKIP LOCKED)
        RETURNING w.id, w.instance, w.provider_message_id, w.status,
                  LEAST(w.at, w.received_at) AS true_at, w.at > w.received_at AS ahead
    )
    SELECT array_agg(b.instance ORDER BY b.id), array_agg(b.provider_message_id ORDER BY b.id),
           array_agg(b.status ORDER BY b.id), array_agg(b.true_at ORDER BY b.id),
           array_agg(DISTINCT b.instance) FILTER (WHERE b.status = 'ERROR'),
           count(*) FILTER (WHERE b.ahead)
      INTO i, ids, s, ats, error_instances, clamped_future
      FROM batch b;
    taken := COALESCE(cardinality(i), 0);
    clamped_before_send := 0;
    IF taken > 0 THEN
        SELECT a.clamped INTO clamped_before_send FROM apply_delivery_statuses(i, ids, s, ats) a;
    END IF;
    RETURN NEXT;
END
$$;
