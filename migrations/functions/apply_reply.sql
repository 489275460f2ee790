-- A lead wrote to us (`messages.upsert`, fromMe false). `p_phones`: the digits the reply came
-- from, in every form that may be stored (Brazilian numbers with and without the ninth digit).
-- Sets last_reply_at, the latest sent message's replied_at, and skips pending messages: in
-- every campaign on an opt-out, in the stop_on_reply campaigns otherwise. Messages that have
-- begun sending finish. Idempotent for a retried event. Returns the lead and how many it
-- skipped (no row: no such lead).
CREATE OR REPLACE FUNCTION apply_reply(p_phones text[], p_opt_out boolean, p_at timestamptz)
RETURNS TABLE (lead_id uuid, skipped integer)
LANGUAGE plpgsql AS $$
DECLARE
    found uuid[];
    n integer;
BEGIN
    SELECT array_agg(l.id) INTO found
      FROM leads l
     WHERE regexp_replace(l.phone, '[^0-9]', '', 'g') = ANY (p_phones);
    IF found IS NULL THEN
        RETURN;
    END IF;
    UPDATE leads l
       SET last_reply_at = GREATEST(l.last_reply_at, p_at),
           opted_out = l.opted_out OR p_opt_out,
           opted_out_at = CASE WHEN p_opt_out AND NOT l.opted_out THEN p_at
                               ELSE l.opted_out_at END,
           updated_at = now()
     WHERE l.id = ANY (found);
    UPDATE campaign_messages m
       SET replied_at = p_at
      FROM (SELECT DISTINCT ON (c.lead_id) c.id
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
    RETURN QUERY SELECT unnest(found), n;
END
$$;
