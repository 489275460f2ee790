-- The name the contract gives the lead context, for callers of a database the listener made: the
-- same signature and answer as listener_get_lead_full_context, which the listener itself calls.
-- On a database adopted from the Edge Function the user's function of this name stays instead
-- (this file is then recorded, not applied).
CREATE OR REPLACE FUNCTION get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5)
RETURNS TABLE (lead_id uuid, context jsonb)
LANGUAGE sql STABLE AS $$
    SELECT * FROM listener_get_lead_full_context(lead_ids, history_limit)
$$;
