-- listener 0006: paused campaigns.
-- A paused campaign's messages wait, and go once it is active again (DESIGN.md). Until now they
-- waited in the claim's index like any due row, so every claim walked past all of them one by
-- one (200,000 of them: 59 ms per claim), they counted as due backlog, and the sweep skipped
-- them once they were older than its age limit, so a pause of a day lost the campaign.
--
-- Now the pending messages of a paused campaign carry wait_reason = 'paused': set when the
-- campaign is paused (and on rows inserted into it while paused), cleared when it leaves
-- `paused`. The claim's index leaves them out. On resume their due time becomes the resume
-- time if it was earlier, so the sweep judges their age from then, and the listeners are woken
-- (campaigns_notify_resume, 0002).

-- The claim's index, without the rows of paused campaigns (the claim names the same predicate).
DROP INDEX IF EXISTS idx_campaign_messages_due;
CREATE INDEX IF NOT EXISTS idx_campaign_messages_due
    ON campaign_messages (scheduled_at)
    WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused';

UPDATE campaign_messages m
   SET wait_reason = 'paused'
  FROM campaigns c
 WHERE c.id = m.campaign_id AND c.status = 'paused' AND m.status = 'pending'
   AND m.wait_reason IS DISTINCT FROM 'paused';

CREATE OR REPLACE FUNCTION campaigns_mark_paused()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'paused' THEN
        UPDATE campaign_messages
           SET wait_reason = 'paused', updated_at = now()
         WHERE campaign_id = NEW.id AND status = 'pending'
           AND wait_reason IS DISTINCT FROM 'paused';
    ELSIF OLD.status = 'paused' THEN
        -- Every pending row, marked or not: rows can come back to `pending` during the pause
        -- (a replay, a retry, a hand-back, a rescued lease) without the mark.
        UPDATE campaign_messages
           SET wait_reason = CASE WHEN wait_reason = 'paused' THEN NULL ELSE wait_reason END,
               scheduled_at = greatest(scheduled_at, now()),
               updated_at = now()
         WHERE campaign_id = NEW.id AND status = 'pending';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS campaigns_mark_paused ON campaigns;
CREATE TRIGGER campaigns_mark_paused
    AFTER UPDATE OF status ON campaigns
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION campaigns_mark_paused();

-- Rows inserted into a paused campaign are marked too. The insert trigger of 0002, plus one
-- cheap look at the campaigns table; the join runs only when some campaign is paused.
CREATE OR REPLACE FUNCTION campaign_messages_notify_insert()
RETURNS trigger
LANGUAGE plpgsql AS $$
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
    IF due IS NOT NULL THEN
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

-- The sweep spares paused campaigns: their age counts from the resume.
CREATE OR REPLACE FUNCTION mark_old_campaign_messages_as_skipped(max_age interval DEFAULT interval '24 hours')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    skipped integer;
BEGIN
    UPDATE campaign_messages m
       SET status = 'skipped',
           last_error = format('skipped by the sweep: due since %s, longer than the age limit of %s',
                               m.scheduled_at, max_age),
           updated_at = now()
     WHERE m.status = 'pending'
       AND m.scheduled_at < now() - max_age
       AND m.wait_reason IS DISTINCT FROM 'paused'
       AND NOT EXISTS (SELECT 1 FROM campaigns c
                        WHERE c.id = m.campaign_id AND c.status = 'paused');
    GET DIAGNOSTICS skipped = ROW_COUNT;
    RETURN skipped;
END
$$;
