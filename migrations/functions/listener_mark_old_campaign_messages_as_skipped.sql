-- The listener's own name (`listener_`), which no user function has: the listener's sweep
-- calls this one, so it does what the README says whichever mark_old_campaign_messages_as_skipped
-- an adopted database has.
-- The sweep: pending messages due longer ago than max_age are skipped with that reason (never
-- deleted); returns how many rows it skipped. It spares a message that has begun (a part
-- already accepted: skipping it would leave the lead with half a message) and the messages of
-- a paused campaign (their age counts from the resume).
CREATE OR REPLACE FUNCTION listener_mark_old_campaign_messages_as_skipped(max_age interval DEFAULT interval '24 hours')
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
