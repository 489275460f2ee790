-- The name the contract gives the sweep, for callers of a database the listener made: the same
-- signature and answer as listener_mark_old_campaign_messages_as_skipped, which the listener's
-- sweep calls. On a database adopted from the Edge Function the user's function of this name
-- stays instead (this file is then recorded, not applied).
CREATE OR REPLACE FUNCTION mark_old_campaign_messages_as_skipped(max_age interval DEFAULT interval '24 hours')
RETURNS integer
LANGUAGE sql AS $$
    SELECT listener_mark_old_campaign_messages_as_skipped(max_age)
$$;
