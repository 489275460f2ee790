-- listener 0004: keep get_lead_full_context on a per-lead index whatever the statistics say.
-- With `status = 'sent'` in the history query, the planner could also use
-- idx_campaign_messages_sent_at (partial on that status) and, with stale statistics, walked it
-- backwards filtering on the lead: O(every sent row) per lead. The history now asks for
-- `sent_at IS NOT NULL` (only sent rows have one), which only the index below can serve.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_lead_history
    ON campaign_messages (lead_id, sent_at DESC)
    WHERE sent_at IS NOT NULL;
DROP INDEX IF EXISTS idx_campaign_messages_lead_sent;

CREATE OR REPLACE FUNCTION get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5)
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
