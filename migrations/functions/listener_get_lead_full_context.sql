-- The listener's own name (`listener_`), which no user function has: a database adopted from
-- the Edge Function keeps its own get_lead_full_context for its callers (README, "Moving from
-- the Edge Function").
-- One call, one round trip: every lead's fields plus the last messages already sent to it
-- in any campaign, so the LLM does not repeat itself. Leads that do not exist return no row.
-- The history asks for `sent_at IS NOT NULL`, so it stays on idx_campaign_messages_lead_history.
-- Built once, in listener_lead_contexts (the claim's `json` form, keys in jsonb's order), and
-- cast: the two never answer differently.
CREATE OR REPLACE FUNCTION listener_get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5)
RETURNS TABLE (lead_id uuid, context jsonb)
LANGUAGE sql STABLE AS $$
    SELECT c.lead_id, c.context::jsonb
      FROM listener_lead_contexts(lead_ids, history_limit) c
$$;
