-- One notification per statement, not per row, carrying the earliest due time (epoch
-- seconds), so a bulk insert of 100,000 rows sends one NOTIFY. Rows inserted into a paused
-- campaign are marked 'paused'; the join runs only when some campaign is paused.
--
-- Rows due further ahead than the wake horizon send none: every listener reads the next due
-- time at least once per poll interval (LISTENER_POLL_INTERVAL, at most the horizon) and arms
-- its wake-up timer for it, so such a row is woken at its time without one. A follow-up step,
-- created days ahead by the record of every sent message, would otherwise send a NOTIFY per
-- record batch to every listener for nothing. The horizon is 1 hour, or the session's (or the
-- database's) `listener.notify_horizon` setting.
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaign_messages_notify_insert()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    due timestamptz;
    r record;
BEGIN
    IF EXISTS (SELECT 1 FROM campaigns WHERE status = 'paused') THEN
        UPDATE campaign_messages m
           SET wait_reason = 'paused'
          FROM new_rows n JOIN campaigns c ON c.id = n.campaign_id
         WHERE m.id = n.id AND c.status = 'paused' AND n.status = 'pending';
    END IF;
    SELECT min(scheduled_at) INTO due FROM new_rows WHERE status = 'pending';
    IF due IS NOT NULL
       AND due <= now() + COALESCE(NULLIF(current_setting('listener.notify_horizon', true), '')
                                       ::interval, interval '1 hour') THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM due)::text);
    END IF;
    -- Locks on runs are taken in id order so concurrent statements cannot deadlock.
    FOR r IN
        SELECT run_id,
               count(*)::integer AS total,
               (count(*) FILTER (WHERE status = 'sent'))::integer AS sent,
               (count(*) FILTER (WHERE status = 'failed'))::integer AS failed,
               (count(*) FILTER (WHERE status = 'skipped'))::integer AS skipped
          FROM new_rows WHERE run_id IS NOT NULL GROUP BY run_id ORDER BY run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, r.total, r.sent, r.failed, r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;
