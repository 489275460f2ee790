-- listener: no-transaction
-- listener 0017: sequences. Follow-up steps of a campaign, the replies of leads understood (and
-- the hand-off of those who need a person), and the lead's own clock for a campaign's window.
--
-- A campaign's step 1 is the row the back end inserts, as before. campaign_steps names steps
-- 2, 3, ...: when every part of step k is accepted, the listener creates step k+1's row in the
-- statement that records the last part (queries.sql, record_parts), due `wait` later, for the
-- same lead, campaign, run and number. `previous_id` names the message whose send created a row
-- and is unique: a step is created once from each message, whatever crashes or replicas do.
--
-- Its statements run one by one (the first line), so the unique index on the live queue table
-- is built CONCURRENTLY and the new check is validated without blocking writers; every one of
-- them is safe to run again.

CREATE TABLE IF NOT EXISTS campaign_steps (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    step         integer NOT NULL
                 CONSTRAINT campaign_steps_step_must_be_2_or_more CHECK (step >= 2),
    wait         interval NOT NULL
                 CONSTRAINT campaign_steps_wait_must_not_be_negative CHECK (wait >= interval '0'),
    prompt       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz,
    PRIMARY KEY (campaign_id, step)
);
COMMENT ON TABLE campaign_steps IS
    'follow-up steps of a campaign: step k+1 goes `wait` after step k was sent, unless the lead'
    ' replied as a person, opted out, was handed off, or step k was not delivered';
COMMENT ON COLUMN campaign_steps.prompt IS 'the system prompt of this step; NULL: the campaign''s';

ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS step integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS previous_id uuid;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conname = 'campaign_messages_step_check'
                      AND conrelid = 'campaign_messages'::regclass) THEN
        ALTER TABLE campaign_messages
            ADD CONSTRAINT campaign_messages_step_check CHECK (step >= 1) NOT VALID;
    END IF;
END
$$;
ALTER TABLE campaign_messages VALIDATE CONSTRAINT campaign_messages_step_check;
COMMENT ON COLUMN campaign_messages.step IS
    'the step of the campaign''s sequence this message is (1: the row the back end inserts)';
COMMENT ON COLUMN campaign_messages.previous_id IS
    'the message of the step before, whose send created this row (NULL for step 1)';
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_one_step_after_each
    ON campaign_messages (previous_id)
    WHERE previous_id IS NOT NULL;

-- The hand-off and the lead's own zone.
ALTER TABLE leads
    ADD COLUMN IF NOT EXISTS handoff_at timestamptz,
    ADD COLUMN IF NOT EXISTS timezone text;
COMMENT ON COLUMN leads.handoff_at IS
    'when a reply (interested, a question) handed the lead to a person: nothing more is sent to'
    ' it automatically; NOTIFY listener_handoff said so';
COMMENT ON COLUMN leads.timezone IS
    'the lead''s IANA time zone, for campaigns whose send_timezone is ''lead''; NULL: told from'
    ' the phone number';
ALTER TABLE leads DROP CONSTRAINT IF EXISTS leads_timezone_check;
ALTER TABLE leads ADD CONSTRAINT leads_timezone_check
    CHECK (timezone IS NULL OR (timestamptz '2000-01-01 00:00+00' AT TIME ZONE timezone) IS NOT NULL);

-- 'lead': windows, days and daily caps are judged in each lead's own zone.
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_timezone_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_timezone_check
    CHECK (CASE WHEN send_timezone = 'lead' THEN true
                ELSE (timestamptz '2000-01-01 00:00+00' AT TIME ZONE send_timezone) IS NOT NULL
           END);

-- Replies: every reply of a known lead, kept, and its kind once classified.
CREATE TABLE IF NOT EXISTS lead_replies (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    lead_id            uuid NOT NULL,
    message_id         uuid,
    campaign_id        uuid,
    instance           text NOT NULL,
    phone              text NOT NULL,
    text               text NOT NULL,
    received_at        timestamptz NOT NULL,
    kind               text
                       CONSTRAINT lead_replies_kind_check
                       CHECK (kind IN ('interested', 'question', 'not_now', 'not_interested',
                                       'opt_out', 'auto_reply', 'wrong_person', 'other')),
    classified_at      timestamptz,
    model              text,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    cost_usd           numeric(18,10) NOT NULL DEFAULT 0,
    attempts           integer NOT NULL DEFAULT 0,
    next_try_at        timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE lead_replies IS
    'what leads wrote back, and what it means (kind; NULL until classified)';
COMMENT ON COLUMN lead_replies.message_id IS
    'the message it answers: the lead''s last message sent before it came';
COMMENT ON COLUMN lead_replies.instance IS 'the number (sender instance) it was written to';
COMMENT ON COLUMN lead_replies.phone IS 'the digits of the number it came from';
COMMENT ON COLUMN lead_replies.model IS
    'the model that classified it; NULL for the free filters (opt-out words, the sandbox rules)';
CREATE INDEX IF NOT EXISTS idx_lead_replies_unclassified
    ON lead_replies (next_try_at)
    WHERE kind IS NULL;
CREATE INDEX IF NOT EXISTS idx_lead_replies_lead
    ON lead_replies (lead_id, received_at);
CREATE INDEX IF NOT EXISTS idx_lead_replies_campaign
    ON lead_replies (campaign_id, received_at);
-- The funnel of replies by kind (status page, listener stats): the last day's or window's.
CREATE INDEX IF NOT EXISTS idx_lead_replies_received
    ON lead_replies (received_at);

-- A reply's text travels through the inbox (the receiver stores, the applier files it).
ALTER TABLE webhook_inbox ADD COLUMN IF NOT EXISTS text text;

-- The functions of sequences are in migrations/functions/ (listener_pace_start_v2,
-- listener_window_opens_all; listener_pace_start and listener_sender_timezone changed).
