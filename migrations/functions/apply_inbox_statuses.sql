-- Apply the oldest `p_limit` fresh statuses of the inbox (rows another listener is applying are
-- left to it; suspects, rows that failed before, are tried alone apart) and delete them, in the
-- caller's transaction; each at its receipt at the latest. Returns how many were taken, the
-- instances that reported an ERROR among them (their restriction check comes next), and how
-- many times were later than their receipt or before their part's send (both clamped).
-- Its result gained a column in 0019 (how many times were clamped); CREATE OR REPLACE cannot
-- change a result type, so a definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_inbox_statuses(integer)'))
       <> 'TABLE(taken integer, error_instances text[], clamped_future integer, '
          'clamped_before_send integer)' THEN
        DROP FUNCTION apply_inbox_statuses(integer);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_inbox_statuses(p_limit integer)
RETURNS TABLE (taken integer, error_instances text[], clamped_future integer,
               clamped_before_send integer)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT a.taken, a.error_instances, a.clamped_future, a.clamped_before_send
      FROM apply_inbox_status_ids(ARRAY(SELECT b.id FROM webhook_inbox b
                                         WHERE b.kind = 'status' AND b.attempts = 0
                                         ORDER BY b.id
                                         LIMIT p_limit
                                           FOR UPDATE SKIP LOCKED)) a;
END
$$;
