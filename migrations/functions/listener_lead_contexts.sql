-- What the claim loads for its batch's leads: listener_get_lead_full_context's answer, built as
-- `json` rather than `jsonb`, which costs Postgres less a lead (no sorted binary object to build
-- and print again as text; about 19,000 instructions a message of a sandbox drain, 2 % of the
-- hot path's statements: docs/BENCHMARKS.md). The keys are written in the order `jsonb` gives
-- them (shorter first, then bytewise), so the listener reads the same dict, in the same key
-- order, as from listener_get_lead_full_context, which is this answer cast to `jsonb` (the
-- LLM's prompt is that dict as JSON; a test holds the two to the same answer). Leads that do not
-- exist return no row.
CREATE OR REPLACE FUNCTION listener_lead_contexts(lead_ids uuid[], history_limit integer DEFAULT 5)
RETURNS TABLE (lead_id uuid, context json)
LANGUAGE sql STABLE AS $$
    SELECT l.id,
           json_build_object(
               'id', l.id,
               'city', l.city,
               'name', l.name,
               'notes', l.notes,
               'phone', l.phone,
               'company', l.company,
               'segment', l.segment,
               'metadata', l.metadata,
               'opted_out', l.opted_out,
               'recent_messages', COALESCE((
                   SELECT json_agg(json_build_object(
                              'text', h.text,
                              'sent_at', h.sent_at,
                              'campaign_id', h.campaign_id) ORDER BY h.sent_at DESC)
                   FROM (
                       SELECT m.campaign_id, m.sent_at, COALESCE(m.generated_text, m.content) AS text
                       FROM campaign_messages m
                       WHERE m.lead_id = l.id AND m.sent_at IS NOT NULL
                       ORDER BY m.sent_at DESC
                       LIMIT history_limit
                   ) h
               ), '[]'::json)
           )
    FROM leads l
    WHERE l.id = ANY (lead_ids)
$$;
