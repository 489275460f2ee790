-- listener 0005: delivery feedback from Evolution's webhooks (docs/design.md, "Delivery feedback").
-- Per-part delivery status and its roll-up on the message, replies and opt-outs on the lead,
-- stop-on-reply per campaign, the `send.message` events that settle uncertain sends, and the
-- status updates that arrive before their part is recorded. Safe to run again from the start.

-- The status of each part WhatsApp reported, keyed by the id sendText returned (`key.id`).
CREATE TABLE IF NOT EXISTS message_parts (
    message_id           uuid NOT NULL REFERENCES campaign_messages (id) ON DELETE CASCADE,
    part_no              integer NOT NULL,
    instance             text NOT NULL,
    provider_message_id  text NOT NULL,
    status               text NOT NULL DEFAULT 'PENDING'
                         CONSTRAINT message_parts_status_check
                         CHECK (status IN ('PENDING', 'SERVER_ACK', 'DELIVERY_ACK', 'READ',
                                           'PLAYED', 'ERROR')),
    status_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, part_no),
    CONSTRAINT message_parts_provider_key UNIQUE (instance, provider_message_id)
) WITH (fillfactor = 70);  -- room on each page: a status update is a HOT update, no index work
COMMENT ON TABLE message_parts IS
    'each accepted part and the last delivery status WhatsApp reported for it (forward only)';

-- Updates whose part is not recorded yet (they can outrun the write): applied when it is,
-- dropped after 10 minutes.
CREATE TABLE IF NOT EXISTS delivery_updates_early (
    instance             text NOT NULL,
    provider_message_id  text NOT NULL,
    status               text NOT NULL,
    status_at            timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, provider_message_id)
);

-- `send.message` events: what Evolution completed, to find a send whose answer never came.
CREATE TABLE IF NOT EXISTS sent_events (
    instance             text NOT NULL,
    provider_message_id  text NOT NULL,
    number               text NOT NULL,
    text                 text NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, provider_message_id)
);
CREATE INDEX IF NOT EXISTS idx_sent_events_number ON sent_events (number, received_at);

ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS delivered_at    timestamptz,
    ADD COLUMN IF NOT EXISTS read_at         timestamptz,
    ADD COLUMN IF NOT EXISTS delivery_error  text,
    ADD COLUMN IF NOT EXISTS replied_at      timestamptz,
    ADD COLUMN IF NOT EXISTS uncertain_at    timestamptz;
COMMENT ON COLUMN campaign_messages.delivered_at IS 'every part DELIVERY_ACK or later';
COMMENT ON COLUMN campaign_messages.read_at IS 'a part READ or PLAYED';
COMMENT ON COLUMN campaign_messages.delivery_error IS 'a part WhatsApp reported as ERROR';
COMMENT ON COLUMN campaign_messages.uncertain_at IS
    'when the first send of uncertain_part that got no answer was made';

ALTER TABLE leads
    ADD COLUMN IF NOT EXISTS last_reply_at  timestamptz,
    ADD COLUMN IF NOT EXISTS opted_out_at   timestamptz;

ALTER TABLE campaigns
    ADD COLUMN IF NOT EXISTS stop_on_reply  boolean NOT NULL DEFAULT true;

-- Replies find their lead by the phone's digits, whatever its stored format.
CREATE INDEX IF NOT EXISTS idx_leads_phone_digits
    ON leads ((regexp_replace(phone, '[^0-9]', '', 'g')));
-- (Stop on reply and opt-out find the lead's pending messages through an index 0007 builds
-- CONCURRENTLY.)

-- How far a status is along; ERROR is final (9), unknown statuses are ignored (0).
CREATE OR REPLACE FUNCTION delivery_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
               WHEN 'PENDING' THEN 1 WHEN 'SERVER_ACK' THEN 2 WHEN 'DELIVERY_ACK' THEN 3
               WHEN 'READ' THEN 4 WHEN 'PLAYED' THEN 5 WHEN 'ERROR' THEN 9 ELSE 0 END
$$;

-- Apply a batch of `messages.update` statuses: forward only, ERROR final, each idempotent (a
-- retried event changes nothing). Updates for parts not recorded yet are kept in
-- delivery_updates_early. The parts' messages get their roll-up. Returns how many parts moved.
CREATE OR REPLACE FUNCTION apply_delivery_statuses(
    p_instances text[], p_ids text[], p_statuses text[], p_ats timestamptz[]
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    moved uuid[];
BEGIN
    WITH v AS (
        SELECT DISTINCT ON (u.instance, u.id) u.instance, u.id, u.status, u.at
          FROM unnest(p_instances, p_ids, p_statuses, p_ats) AS u(instance, id, status, at)
         WHERE delivery_rank(u.status) > 0
         ORDER BY u.instance, u.id, delivery_rank(u.status) DESC, u.at
    ), upd AS (
        UPDATE message_parts p
           SET status = v.status, status_at = v.at
          FROM v
         WHERE p.instance = v.instance AND p.provider_message_id = v.id
           AND p.status <> 'ERROR' AND delivery_rank(v.status) > delivery_rank(p.status)
        RETURNING p.message_id
    ), early AS (
        INSERT INTO delivery_updates_early AS e (instance, provider_message_id, status, status_at)
        SELECT v.instance, v.id, v.status, v.at
          FROM v
         WHERE NOT EXISTS (SELECT 1 FROM message_parts p
                            WHERE p.instance = v.instance AND p.provider_message_id = v.id)
        ON CONFLICT (instance, provider_message_id) DO UPDATE
           SET status = excluded.status, status_at = excluded.status_at
         WHERE e.status <> 'ERROR' AND delivery_rank(excluded.status) > delivery_rank(e.status)
    )
    SELECT array_agg(DISTINCT message_id) INTO moved FROM upd;
    IF moved IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM roll_up_delivery(moved);
    RETURN cardinality(moved);
END
$$;

-- The messages' roll-up from their parts: delivered when every part is DELIVERY_ACK or later,
-- read when any part is READ or PLAYED, the error of a part that reported ERROR. Set once.
CREATE OR REPLACE FUNCTION roll_up_delivery(p_message_ids uuid[]) RETURNS void
LANGUAGE sql AS $$
    WITH locked AS (
        SELECT m.id FROM campaign_messages m
         WHERE m.id = ANY (p_message_ids)
         ORDER BY m.id
           FOR NO KEY UPDATE
    ), r AS (
        SELECT p.message_id,
               count(*) FILTER (WHERE delivery_rank(p.status) BETWEEN 3 AND 5) AS delivered,
               max(p.status_at) FILTER (WHERE delivery_rank(p.status) BETWEEN 3 AND 5) AS last_at,
               min(p.status_at) FILTER (WHERE p.status IN ('READ', 'PLAYED')) AS read_at,
               min(p.part_no) FILTER (WHERE p.status = 'ERROR') AS error_part
          FROM message_parts p JOIN locked l ON l.id = p.message_id
         GROUP BY p.message_id
    )
    UPDATE campaign_messages m
       SET delivered_at = COALESCE(m.delivered_at,
                                   CASE WHEN r.delivered >= GREATEST(jsonb_array_length(
                                                 COALESCE(m.parts, '[]'::jsonb)), 1)
                                        THEN r.last_at END),
           read_at = COALESCE(m.read_at, r.read_at),
           delivery_error = COALESCE(m.delivery_error,
                                     CASE WHEN r.error_part IS NOT NULL
                                          THEN 'WhatsApp reported ERROR for part '
                                               || (r.error_part + 1) END)
      FROM r
     WHERE m.id = r.message_id
       AND (m.delivered_at IS NULL OR m.read_at IS NULL
            OR (m.delivery_error IS NULL AND r.error_part IS NOT NULL))
$$;

-- Apply the kept updates whose part is now recorded; drop the ones older than 10 minutes.
-- Returns (applied, dropped).
CREATE OR REPLACE FUNCTION apply_early_delivery_statuses()
RETURNS TABLE (applied integer, dropped integer)
LANGUAGE plpgsql AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH ready AS (
        DELETE FROM delivery_updates_early e
         USING message_parts p
         WHERE p.instance = e.instance AND p.provider_message_id = e.provider_message_id
        RETURNING e.instance, e.provider_message_id, e.status, e.status_at
    )
    SELECT array_agg(instance), array_agg(provider_message_id), array_agg(status),
           array_agg(status_at)
      INTO i, ids, s, ats
      FROM ready;
    applied := COALESCE(cardinality(i), 0);
    IF applied > 0 THEN
        PERFORM apply_delivery_statuses(i, ids, s, ats);
    END IF;
    DELETE FROM delivery_updates_early WHERE received_at < now() - interval '10 minutes';
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN NEXT;
END
$$;

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
