-- A reply's kind is known (the classifier, or after its last try): kept with the model and
-- the usage of the call, whose cost joins the spend of the campaign it answers, and applied:
--   auto_reply      nothing stops (an away message is not a reply);
--   opt_out         the lead opts out: its pending messages in every campaign are skipped;
--   interested,     the lead is handed off: leads.handoff_at, its pending messages in every
--   question        campaign skipped, and NOTIFY listener_handoff with the lead, the reply and
--                   its kind (once per lead: a lead handed off already is not announced again);
--   not_interested  its pending messages of that campaign are skipped, and like any reply it
--                   stops the stop_on_reply campaigns';
--   not_now, wrong_person, other: the pending messages of stop_on_reply campaigns are skipped.
-- Messages that have begun sending finish. The lead's messages that waited for the kind
-- (wait_reason 'reply unclassified') and that it did not stop are due again at once, unless
-- another reply of the lead is still being classified. A reply classified already is left as
-- it is (two listeners, a late answer): no row.
CREATE OR REPLACE FUNCTION reply_classified(
    p_reply uuid, p_kind text, p_model text, p_prompt_tokens bigint, p_completion_tokens bigint,
    p_cost numeric, p_error text)
RETURNS TABLE (lead_id uuid, kind text, skipped integer, handed_off boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r lead_replies;
    n integer := 0;
    k integer;
    handed boolean := false;
BEGIN
    UPDATE lead_replies x
       SET kind = p_kind,
           classified_at = now(),
           model = COALESCE(p_model, x.model),
           prompt_tokens = x.prompt_tokens + p_prompt_tokens,
           completion_tokens = x.completion_tokens + p_completion_tokens,
           cost_usd = x.cost_usd + p_cost,
           last_error = p_error
     WHERE x.id = p_reply AND x.kind IS NULL
    RETURNING x.* INTO r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_cost > 0 AND r.campaign_id IS NOT NULL THEN
        UPDATE campaigns c SET spent_usd = c.spent_usd + p_cost WHERE c.id = r.campaign_id;
    END IF;
    IF p_kind = 'auto_reply' THEN
        NULL;  -- an away message stops nothing
    ELSIF p_kind = 'opt_out' THEN
        UPDATE leads l
           SET opted_out = true,
               opted_out_at = COALESCE(l.opted_out_at, r.received_at),
               updated_at = now()
         WHERE l.id = r.lead_id AND NOT l.opted_out;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead opted out',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSIF p_kind IN ('interested', 'question') THEN
        UPDATE leads l SET handoff_at = now(), updated_at = now()
         WHERE l.id = r.lead_id AND l.handoff_at IS NULL;
        handed := FOUND;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead was handed off',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF handed THEN
            PERFORM pg_notify('listener_handoff', json_build_object(
                'lead_id', r.lead_id, 'reply_id', r.id, 'kind', p_kind,
                'campaign_id', r.campaign_id, 'message_id', r.message_id)::text);
        END IF;
    ELSE
        IF p_kind = 'not_interested' AND r.campaign_id IS NOT NULL THEN
            UPDATE campaign_messages m
               SET status = 'skipped', last_error = 'skipped: the lead is not interested',
                   wait_reason = NULL, updated_at = now()
             WHERE m.lead_id = r.lead_id AND m.campaign_id = r.campaign_id
               AND m.status = 'pending' AND m.parts_sent = 0;
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead replied',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0
           AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id AND c.stop_on_reply);
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END IF;
    UPDATE campaign_messages m
       SET scheduled_at = now(), wait_reason = NULL, updated_at = now()
     WHERE m.lead_id = r.lead_id AND m.status = 'pending'
       AND m.wait_reason = 'reply unclassified' AND m.scheduled_at > now()
       AND NOT EXISTS (SELECT 1 FROM lead_replies x WHERE x.lead_id = r.lead_id AND x.kind IS NULL);
    RETURN QUERY SELECT r.lead_id, p_kind, n, handed;
END
$$;
