-- Apply the kept updates whose part is now recorded; drop the ones older than 10 minutes.
-- Returns (applied, dropped, clamped): clamped, the times moved up to their part's send (an
-- update that outran its part's record was received before it).
-- Its result gained a column in 0019 (how many times were clamped); CREATE OR REPLACE cannot
-- change a result type, so a definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_early_delivery_statuses()'))
       <> 'TABLE(applied integer, dropped integer, clamped integer)' THEN
        DROP FUNCTION apply_early_delivery_statuses();
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_early_delivery_statuses()
RETURNS TABLE (applied integer, dropped integer, clamped integer)
LANGUAGE plpgsql AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH ready AS (
        DELETE FROM delivery_updates_early e
         USING message_parts p
         WHERE p.instance = e.instance AND p.provider_message_id = e.provider_message_id
        RETURNING e.instance, e.provider_message_id, e.status, e.status_at
    )
    SELECT array_agg(instance), array_agg(provider_message_id), array_agg(status),
           array_agg(status_at)
      INTO i, ids, s, ats
      FROM ready;
    applied := COALESCE(cardinality(i), 0);
    clamped := 0;
    IF applied > 0 THEN
        SELECT a.clamped INTO clamped FROM apply_delivery_statuses(i, ids, s, ats) a;
    END IF;
    DELETE FROM delivery_updates_early WHERE received_at < now() - interval '10 minutes';
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN NEXT;
END
$$;
