-- listener 0010: the webhook receiver answers once an event is in an inbox, and applies the
-- inbox off the request path (listener/webhooks.py). Until now an answer waited for its status
-- to be applied: the part's row, the roll-up on campaign_messages (rows the sender writes at the
-- same moment) and, for a reply, the lead and its pending messages. Under 1,000 events a second
-- while sending, those writes queued behind each other and behind the sender's locks, and
-- answers took seconds. An insert into this table takes no lock anyone else holds; the rows are
-- applied in batches and deleted in the transaction that applies them, so an acknowledged event
-- is applied once it is committed here, whatever happens to the listener meanwhile. Safe to run
-- again from the start.
CREATE TABLE IF NOT EXISTS webhook_inbox (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                 text NOT NULL
                         CONSTRAINT webhook_inbox_kind_check CHECK (kind IN ('status', 'reply')),
    instance             text NOT NULL,
    -- a status (`messages.update`): the part's provider id and the status
    provider_message_id  text,
    status               text,
    -- a reply (`messages.upsert`): the digits it came from, and whether it opts the lead out
    -- (decided on receipt: the reply's text is not kept)
    phone                text,
    opt_out              boolean,
    at                   timestamptz NOT NULL,
    received_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE webhook_inbox IS
    'webhook events acknowledged to Evolution and not applied yet (applied within moments)';

-- Apply the oldest `p_limit` statuses of the inbox (rows another listener is applying are left
-- to it) and delete them, in the caller's transaction. Returns how many were taken and the
-- instances that reported an ERROR among them (their restriction check comes next).
CREATE OR REPLACE FUNCTION apply_inbox_statuses(p_limit integer)
RETURNS TABLE (taken integer, error_instances text[])
LANGUAGE plpgsql AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH batch AS (
        DELETE FROM webhook_inbox w
         WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                         WHERE b.kind = 'status'
                         ORDER BY b.id
                         LIMIT p_limit
                           FOR UPDATE SKIP LOCKED)
        RETURNING w.instance, w.provider_message_id, w.status, w.at
    )
    SELECT array_agg(b.instance), array_agg(b.provider_message_id), array_agg(b.status),
           array_agg(b.at), array_agg(DISTINCT b.instance) FILTER (WHERE b.status = 'ERROR')
      INTO i, ids, s, ats, error_instances
      FROM batch b;
    taken := COALESCE(cardinality(i), 0);
    IF taken > 0 THEN
        PERFORM apply_delivery_statuses(i, ids, s, ats);
    END IF;
    RETURN NEXT;
END
$$;
