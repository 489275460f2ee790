-- listener 0014: adopting the Edge Function's database.
--
-- The listener's own functions of the two names of the contract are `listener_` ones now
-- (functions/listener_get_lead_full_context.sql, listener_mark_old_campaign_messages_as_
-- skipped.sql), so a database whose functions of those names are the seed's keeps them.

-- A row the old system left `processing` may have gone out: before anything is sent, the
-- listener looks for a message to that number on Evolution since this time.
ALTER TABLE campaign_messages ADD COLUMN IF NOT EXISTS look_up_since timestamptz;
COMMENT ON COLUMN campaign_messages.look_up_since IS
    'left processing by the system before the listener: looked up on Evolution (a message to'
    ' the lead since this time) before it is sent';
