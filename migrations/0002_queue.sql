-- listener 0002: the queue's functions and triggers: the lead context and the sweep the seed
-- relies on, run bookkeeping, NOTIFY on new due work, and paused campaigns. Part of the
-- baseline (see 0001). Every function appears once here, in its current definition; a change
-- to one is a new migration file (README, "Upgrades and retention").

-- One call, one round trip: every lead's fields plus the last messages already sent to it
-- in any campaign, so the LLM does not repeat itself. Leads that do not exist return no row.
-- The history asks for `sent_at IS NOT NULL`, so it stays on idx_campaign_messages_lead_history.
CREATE OR REPLACE FUNCTION get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5)
RETURNS TABLE (lead_id uuid, context jsonb)
LANGUAGE sql STABLE AS $$
    SELECT l.id,
           jsonb_build_object(
               'id', l.id,
               'name', l.name,
               'phone', l.phone,
               'opted_out', l.opted_out,
               'company', l.company,
               'city', l.city,
               'segment', l.segment,
               'notes', l.notes,
               'metadata', l.metadata,
               'recent_messages', COALESCE((
                   SELECT jsonb_agg(jsonb_build_object(
                              'campaign_id', h.campaign_id,
                              'sent_at', h.sent_at,
                              'text', h.text) ORDER BY h.sent_at DESC)
                   FROM (
                       SELECT m.campaign_id, m.sent_at, COALESCE(m.generated_text, m.content) AS text
                       FROM campaign_messages m
                       WHERE m.lead_id = l.id AND m.sent_at IS NOT NULL
                       ORDER BY m.sent_at DESC
                       LIMIT history_limit
                   ) h
               ), '[]'::jsonb)
           )
    FROM leads l
    WHERE l.id = ANY (lead_ids)
$$;

-- The sweep: pending messages due longer ago than max_age are skipped with that reason (never
-- deleted); returns how many rows it skipped. It spares a message that has begun (a part
-- already accepted: skipping it would leave the lead with half a message) and the messages of
-- a paused campaign (their age counts from the resume).
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
       AND m.parts_sent = 0
       AND m.wait_reason IS DISTINCT FROM 'paused'
       AND NOT EXISTS (SELECT 1 FROM campaigns c
                        WHERE c.id = m.campaign_id AND c.status = 'paused');
    GET DIAGNOSTICS skipped = ROW_COUNT;
    RETURN skipped;
END
$$;

-- Apply count changes to one run, completing it when every message has an outcome and
-- reopening it when a message goes back to the queue (replay).
CREATE OR REPLACE FUNCTION campaign_runs_apply(
    p_run_id uuid, d_total integer, d_sent integer, d_failed integer, d_skipped integer)
RETURNS void
LANGUAGE sql AS $$
    UPDATE campaign_runs r
       SET total_count = r.total_count + d_total,
           sent_count = r.sent_count + d_sent,
           failed_count = r.failed_count + d_failed,
           skipped_count = r.skipped_count + d_skipped,
           status = CASE
               WHEN r.status = 'cancelled' THEN r.status
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN 'completed'
               ELSE 'running' END,
           finished_at = CASE
               WHEN r.status = 'cancelled' THEN r.finished_at
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN COALESCE(r.finished_at, now())
               ELSE NULL END,
           updated_at = now()
     WHERE r.id = p_run_id
$$;

-- One notification per statement, not per row, carrying the earliest due time (epoch
-- seconds), so a bulk insert of 100,000 rows sends one NOTIFY. Rows inserted into a paused
-- campaign are marked 'paused'; the join runs only when some campaign is paused.
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

CREATE OR REPLACE FUNCTION campaign_messages_notify_update()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    due timestamptz;
    r record;
BEGIN
    SELECT min(n.scheduled_at) INTO due
      FROM new_rows n JOIN old_rows o ON o.id = n.id
     WHERE n.status = 'pending'
       AND (o.status <> 'pending' OR o.scheduled_at <> n.scheduled_at);
    IF due IS NOT NULL THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM due)::text);
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

CREATE OR REPLACE FUNCTION campaign_messages_notify_delete()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
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

DROP TRIGGER IF EXISTS campaign_messages_after_insert ON campaign_messages;
CREATE TRIGGER campaign_messages_after_insert
    AFTER INSERT ON campaign_messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_messages_notify_insert();

DROP TRIGGER IF EXISTS campaign_messages_after_update ON campaign_messages;
CREATE TRIGGER campaign_messages_after_update
    AFTER UPDATE ON campaign_messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_messages_notify_update();

DROP TRIGGER IF EXISTS campaign_messages_after_delete ON campaign_messages;
CREATE TRIGGER campaign_messages_after_delete
    AFTER DELETE ON campaign_messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_messages_notify_delete();

-- A paused campaign's messages wait in the queue; when it becomes active again, wake the
-- listeners so they go at once.
CREATE OR REPLACE FUNCTION campaigns_notify_resume()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.status = 'active' AND o.status <> 'active') THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM now())::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS campaigns_after_update ON campaigns;
CREATE TRIGGER campaigns_after_update
    AFTER UPDATE ON campaigns
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_notify_resume();

-- Paused campaigns. A paused campaign's messages wait, and go once it is active again: their
-- pending rows carry wait_reason = 'paused' (set when the campaign is paused, and on rows
-- inserted into it meanwhile; cleared when it leaves `paused`), so the claim's index leaves
-- them out. On resume their due time becomes the resume time if it was earlier, so the sweep
-- judges their age from then, and campaigns_notify_resume wakes the listeners.
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
