-- listener 0006: the sweep spares the messages of paused campaigns.
-- A paused campaign's messages wait and go once it is active again (DESIGN.md); the sweep used
-- to skip them anyway once they were older than the age limit, so a pause longer than a day
-- quietly lost the whole campaign. Their age is now judged only while the campaign is active:
-- when it resumes, its messages are claimed at once (the resume sends a NOTIFY).
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
       AND NOT EXISTS (SELECT 1 FROM campaigns c
                        WHERE c.id = m.campaign_id AND c.status = 'paused');
    GET DIAGNOSTICS skipped = ROW_COUNT;
    RETURN skipped;
END
$$;
