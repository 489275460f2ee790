-- The listener's own name (`listener_`), which no user function has: a database adopted from
-- the Edge Function keeps its own get_lead_full_context for its callers (README, "Moving from
-- the Edge Function").
-- One call, one round trip: every lead's fields plus the last messages already sent to it
-- in any campaign, so the LLM does not repeat itself. Leads that do not exist return no row.
-- The history asks for `sent_at IS NOT NULL`, so it stays on idx_campaign_messages_lead_history.
CREATE OR REPLACE FUNCTION listener_get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5)
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
