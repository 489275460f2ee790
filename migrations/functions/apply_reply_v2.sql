-- A lead wrote to us (`messages.upsert`, fromMe false): the reply is kept in lead_replies,
-- with the message it answers (the lead's latest sent message) and that message's campaign.
-- `p_phones`: the digits it came from in every form that may be stored; `p_phone`: as it came.
-- Sets last_reply_at and the latest sent message's replied_at. An opt-out (the opt-out words,
-- the free first filter) is classified at once (kind opt_out) and skips the lead's pending
-- messages in every campaign; any other reply waits for its kind (reply_classified), which
-- decides what it stops. Messages that have begun sending finish. The times it sets
-- (last_reply_at, replied_at, opted_out_at, the reply's received_at) are never before the
-- lead's latest message was sent (`p_at` comes at its receipt at the latest). Returns, per
-- lead, the reply, how many messages it skipped, and whether `p_at` was before that send (no
-- row: no such lead).
-- Its result gained `clamped` in 0019; CREATE OR REPLACE cannot change a result type, so a
-- definition with another one is dropped first.
DO $$
BEGIN
    IF pg_get_function_result(
           to_regprocedure('apply_reply_v2(text[], text, boolean, timestamptz, text, text)'))
       <> 'TABLE(lead_id uuid, reply_id uuid, skipped integer, clamped boolean)' THEN
        DROP FUNCTION apply_reply_v2(text[], text, boolean, timestamptz, text, text);
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION apply_reply_v2(
    p_phones text[], p_phone text, p_opt_out boolean, p_at timestamptz, p_instance text,
    p_text text)
RETURNS TABLE (lead_id uuid, reply_id uuid, skipped integer, clamped boolean)
LANGUAGE plpgsql AS $$
DECLARE
    found uuid[];
    n integer := 0;
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
    IF p_opt_out THEN
        UPDATE campaign_messages m
           SET status = 'skipped',
               last_error = 'skipped: the lead opted out',
               wait_reason = NULL,
               updated_at = now()
         WHERE m.lead_id = ANY (found) AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    -- Counted as clamped beyond a second: messageTimestamp has whole seconds, so a reply in the
    -- second of the send reads as up to a second before it.
    RETURN QUERY
    INSERT INTO lead_replies AS r (lead_id, message_id, campaign_id, instance, phone, text,
                                   received_at, kind, classified_at)
    SELECT f.id, latest.id, latest.campaign_id, p_instance, p_phone, COALESCE(p_text, ''),
           GREATEST(p_at, latest.sent_at),
           CASE WHEN p_opt_out THEN 'opt_out' END, CASE WHEN p_opt_out THEN now() END
      FROM unnest(found) AS f(id)
      LEFT JOIN LATERAL (SELECT c.id, c.campaign_id, c.sent_at FROM campaign_messages c
                          WHERE c.lead_id = f.id AND c.sent_at IS NOT NULL
                          ORDER BY c.sent_at DESC LIMIT 1) latest ON true
    RETURNING r.lead_id, r.id, n, COALESCE(p_at < last_sent - interval '1 second', false);
END
$$;
