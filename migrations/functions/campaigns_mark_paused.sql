-- Paused campaigns. A paused campaign's messages wait, and go once it is active again: their
-- pending rows carry wait_reason = 'paused' (set when the campaign is paused, and on rows
-- inserted into it meanwhile; cleared when it leaves `paused`), so the claim's index leaves
-- them out. On resume their due time becomes the resume time if it was earlier, so the sweep
-- judges their age from then, and campaigns_notify_resume wakes the listeners.
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaigns_mark_paused()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
