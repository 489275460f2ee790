-- After an UPDATE of queue rows (one call per statement): a NOTIFY with the earliest due time
-- of the rows that became due (a retry, a replay, a resume), and the runs' counts moved by the
-- rows whose outcome changed. One look at the rows says whether either is needed: most updates
-- (a claim, stored parts, a part before the last) make nothing due and change no run's counts
-- (a status that is none of the counted ones, on the same run), and stop there.
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaign_messages_notify_update()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    due timestamptz;
    counted boolean;
    r record;
BEGIN
    SELECT min(n.scheduled_at) FILTER (WHERE n.status = 'pending'
                                         AND (o.status <> 'pending'
                                              OR o.scheduled_at <> n.scheduled_at)),
           bool_or(n.run_id IS DISTINCT FROM o.run_id
                   OR (n.run_id IS NOT NULL AND n.status IS DISTINCT FROM o.status
                       AND (n.status IN ('sent', 'failed', 'skipped')
                            OR o.status IN ('sent', 'failed', 'skipped'))))
      INTO due, counted
      FROM new_rows n JOIN old_rows o ON o.id = n.id;
    IF due IS NOT NULL THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM due)::text);
    END IF;
    IF NOT coalesce(counted, false) THEN
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT d.run_id,
               sum(d.total)::integer AS total, sum(d.sent)::integer AS sent,
               sum(d.failed)::integer AS failed, sum(d.skipped)::integer AS skipped
          FROM (
              SELECT n.run_id, 1 AS total,
                     (n.status = 'sent')::integer AS sent,
                     (n.status = 'failed')::integer AS failed,
                     (n.status = 'skipped')::integer AS skipped
                FROM new_rows n JOIN old_rows o ON o.id = n.id
               WHERE n.run_id IS NOT NULL
                 AND (n.status IS DISTINCT FROM o.status OR n.run_id IS DISTINCT FROM o.run_id)
              UNION ALL
              SELECT o.run_id, -1,
                     -(o.status = 'sent')::integer,
                     -(o.status = 'failed')::integer,
                     -(o.status = 'skipped')::integer
                FROM new_rows n JOIN old_rows o ON o.id = n.id
               WHERE o.run_id IS NOT NULL
                 AND (n.status IS DISTINCT FROM o.status OR n.run_id IS DISTINCT FROM o.run_id)
          ) d
         GROUP BY d.run_id
        HAVING sum(d.total) <> 0 OR sum(d.sent) <> 0 OR sum(d.failed) <> 0 OR sum(d.skipped) <> 0
         ORDER BY d.run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, r.total, r.sent, r.failed, r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;
