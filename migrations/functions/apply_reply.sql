-- A lead wrote to us (`messages.upsert`, fromMe false). `p_phones`: the digits the reply came
-- from, in every form that may be stored (Brazilian numbers with and without the ninth digit).
-- Sets last_reply_at, the latest sent message's replied_at, and skips pending messages: in
-- every campaign on an opt-out, in the stop_on_reply campaigns otherwise. Messages that have
-- begun sending finish. Idempotent for a retried event. The times it sets (last_reply_at,
-- replied_at, opted_out_at) are never before the lead's latest message was sent. Returns the
-- lead, how many it skipped, and whether `p_at` was before that send (no row: no such lead).
-- Its result gained a column in 0019 (how many times were clamped); CREATE OR REPLACE cannot
-- change a result type, so a definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_reply(text[], boolean, timestamptz)'))
       <> 'TABLE(lead_id uuid, skipped integer, clamped boolean)' THEN
        DROP FUNCTION apply_reply(text[], boolean, timestamptz);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_reply(p_phones text[], p_opt_out boolean, p_at timestamptz)
RETURNS TABLE (lead_id uuid, skipped integer, clamped boolean)
LANGUAGE plpgsql AS $$
DECLARE
    found uuid[];
    n integer;
    last_sent timestamptz;
BEGIN
    SELECT array_agg(l.id) INTO found
      FROM leads l
     WHERE regexp_replace(l.phone, '[^0-9]', '', 'g') = ANY (p_phones);
    IF found IS NULL THEN
        RETURN;
    END IF;
    SELECT max(c.sent_at) INTO last_sent
      FROM campaign_messages c
     WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL;
    UPDATE leads l
       SET last_reply_at = GREATEST(l.last_reply_at, p_at, s.sent_at),
           opted_out = l.opted_out OR p_opt_out,
           opted_out_at = CASE WHEN p_opt_out AND NOT l.opted_out THEN GREATEST(p_at, s.sent_at)
                               ELSE l.opted_out_at END,
           updated_at = now()
      FROM (SELECT f.id,
                   (SELECT max(c.sent_at) FROM campaign_messages c
                     WHERE c.lead_id = f.id AND c.sent_at IS NOT NULL) AS sent_at
              FROM unnest(found) AS f(id)) s
     WHERE l.id = s.id;
    UPDATE campaign_messages m
       SET replied_at = GREATEST(p_at, latest.sent_at)
      FROM (SELECT DISTINCT ON (c.lead_id) c.id, c.sent_at
              FROM campaign_messages c
             WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL
             ORDER BY c.lead_id, c.sent_at DESC) latest
     WHERE m.id = latest.id AND m.replied_at IS NULL;
    UPDATE campaign_messages m
       SET status = 'skipped',
           last_error = CASE WHEN p_opt_out THEN 'skipped: the lead opted out'
                             ELSE 'skipped: the lead replied' END,
           wait_reason = NULL,
           updated_at = now()
     WHERE m.lead_id = ANY (found) AND m.status = 'pending' AND m.parts_sent = 0
       AND (p_opt_out OR EXISTS (SELECT 1 FROM campaigns c
                                  WHERE c.id = m.campaign_id AND c.stop_on_reply));
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Counted as clamped beyond a second: messageTimestamp has whole seconds, so a reply in the
    -- second of the send reads as up to a second before it.
    RETURN QUERY SELECT unnest(found), n, COALESCE(p_at < last_sent - interval '1 second', false);
END
$$;
