-- listener 0009: a message that has begun is finished, and an unanswered send repeats once.
--
-- 1. The sweep skips only messages that have not begun. A message with a part already accepted
--    (parts_sent > 0), handed back by a stop or a hold, keeps its old scheduled_at; skipping it
--    would leave the lead with half a message.
--
-- 2. A send that got no answer (a timeout, a 504) may have been delivered. The part it carried
--    and how many times it went out unanswered are kept on the row, so that whichever listener
--    tries the message next never sends that part a third time (DESIGN.md: at most twice).

ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS uncertain_part integer,
    ADD COLUMN IF NOT EXISTS uncertain_sends integer NOT NULL DEFAULT 0
        CONSTRAINT campaign_messages_uncertain_sends_check CHECK (uncertain_sends >= 0);
COMMENT ON COLUMN campaign_messages.uncertain_part IS
    'index (from 0) of the part whose send last got no answer; it may have been delivered';
COMMENT ON COLUMN campaign_messages.uncertain_sends IS
    'how many sends of uncertain_part got no answer';

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
