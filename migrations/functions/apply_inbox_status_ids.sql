-- Apply these statuses of the inbox (those another listener is applying are left to it) and
-- delete them, in the caller's transaction: the oldest fresh ones (apply_inbox_statuses), a
-- half of a batch that failed, or one suspect alone. Returns how many were taken and the
-- instances that reported an ERROR among them (their restriction check comes next).
CREATE OR REPLACE FUNCTION apply_inbox_status_ids(p_ids bigint[])
RETURNS TABLE (taken integer, error_instances text[])
LANGUAGE plpgsql AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH batch AS (
        DELETE FROM webhook_inbox w
         WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                         WHERE b.id = ANY (p_ids) AND b.kind = 'status'
                           FOR UPDATE SKIP LOCKED)
        RETURNING w.id, w.instance, w.provider_message_id, w.status, w.at
    )
    SELECT array_agg(b.instance ORDER BY b.id), array_agg(b.provider_message_id ORDER BY b.id),
           array_agg(b.status ORDER BY b.id), array_agg(b.at ORDER BY b.id),
           array_agg(DISTINCT b.instance) FILTER (WHERE b.status = 'ERROR')
      INTO i, ids, s, ats, error_instances
      FROM batch b;
    taken := COALESCE(cardinality(i), 0);
    IF taken > 0 THEN
        PERFORM apply_delivery_statuses(i, ids, s, ats);
    END IF;
    RETURN NEXT;
END
$$;
