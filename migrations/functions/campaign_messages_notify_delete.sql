-- After a DELETE of queue rows (one call per statement): the rows' parts go with them (what
-- message_parts' foreign key did until 0018), and the runs' counts lose the rows.
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaign_messages_notify_delete()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    DELETE FROM message_parts p USING old_rows o WHERE p.message_id = o.id;
    FOR r IN
        SELECT run_id,
               count(*)::integer AS total,
               (count(*) FILTER (WHERE status = 'sent'))::integer AS sent,
               (count(*) FILTER (WHERE status = 'failed'))::integer AS failed,
               (count(*) FILTER (WHERE status = 'skipped'))::integer AS skipped
          FROM old_rows WHERE run_id IS NOT NULL GROUP BY run_id ORDER BY run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, -r.total, -r.sent, -r.failed, -r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;
