-- listener 0001: every table, column, constraint and index, and the queue's autovacuum settings.
-- Part of the baseline (0001-0003, squashed from the development files before the first
-- release). Plain SQL, idempotent where Postgres allows, so Supabase tooling can apply it too.
-- Functions and triggers are in 0002 (the queue) and 0003 (pacing); migrations/schema.sql is
-- the whole schema they make.

CREATE TABLE IF NOT EXISTS leads (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text,
    phone       text NOT NULL,
    opted_out   boolean NOT NULL DEFAULT false,
    company     text,
    city        text,
    segment     text,
    notes       text,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz
);

CREATE TABLE IF NOT EXISTS campaigns (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name               text NOT NULL,
    prompt             text,
    model              text,
    instance           text,
    status             text NOT NULL DEFAULT 'active'
                       CONSTRAINT campaigns_status_check
                       CHECK (status IN ('active', 'paused', 'archived')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz,
    -- Pacing, all optional: a campaign with none of it set sends as fast as the queue goes.
    -- The send window, in the campaign's time zone; it may cross midnight (22:00-02:00).
    send_window_start  time,
    send_window_end    time,
    send_timezone      text NOT NULL DEFAULT 'America/Sao_Paulo',
    -- ISO days of the week the window applies to (1 = Monday ... 7 = Sunday); NULL = every day.
    send_days          smallint[],
    daily_cap          integer,
    -- A random gap in [min, max] seconds between two messages through the campaign's instance.
    gap_min_seconds    integer,
    gap_max_seconds    integer,
    CONSTRAINT campaigns_window_check
        CHECK ((send_window_start IS NULL) = (send_window_end IS NULL)
               AND (send_window_start IS NULL OR send_window_start <> send_window_end)),
    CONSTRAINT campaigns_days_check
        CHECK (send_days IS NULL OR (send_days <@ ARRAY[1, 2, 3, 4, 5, 6, 7]::smallint[]
                                     AND cardinality(send_days) > 0)),
    CONSTRAINT campaigns_cap_check CHECK (daily_cap IS NULL OR daily_cap >= 0),
    CONSTRAINT campaigns_gap_check
        CHECK ((gap_min_seconds IS NULL) = (gap_max_seconds IS NULL)
               AND (gap_min_seconds IS NULL
                    OR (gap_min_seconds >= 0 AND gap_max_seconds >= gap_min_seconds))),
    -- A time zone Postgres does not know is refused when the campaign is written, not when it
    -- sends.
    CONSTRAINT campaigns_timezone_check
        CHECK ((timestamptz '2000-01-01 00:00+00' AT TIME ZONE send_timezone) IS NOT NULL)
);

CREATE TABLE IF NOT EXISTS campaign_runs (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id    uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    status         text NOT NULL DEFAULT 'running'
                   CONSTRAINT campaign_runs_status_check
                   CHECK (status IN ('running', 'completed', 'cancelled')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    -- Maintained by the trigger on campaign_messages: total rows, and rows by final outcome.
    total_count    integer NOT NULL DEFAULT 0,
    sent_count     integer NOT NULL DEFAULT 0,
    failed_count   integer NOT NULL DEFAULT 0,
    skipped_count  integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz
);

-- The queue. A queue table churns: vacuum it after 1% of its rows changed, not the default 20%.
CREATE TABLE IF NOT EXISTS campaign_messages (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id           uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- No foreign key on purpose: a message whose lead is gone is skipped with a reason.
    lead_id               uuid NOT NULL,
    run_id                uuid REFERENCES campaign_runs (id) ON DELETE SET NULL,
    status                text NOT NULL DEFAULT 'pending'
                          CONSTRAINT campaign_messages_status_check
                          CHECK (status IN ('pending', 'processing', 'sent', 'failed', 'skipped')),
    scheduled_at          timestamptz NOT NULL DEFAULT now(),
    attempts              integer NOT NULL DEFAULT 0
                          CONSTRAINT campaign_messages_attempts_check CHECK (attempts >= 0),
    content               text,
    last_error            text,
    sent_at               timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz,
    -- What the listener keeps so that a retry resumes instead of re-sending:
    generated_text        text,            -- the LLM's reply, stored before the first part goes
    parts                 jsonb,           -- the parts to send, fixed before the first one goes
    parts_sent            integer NOT NULL DEFAULT 0
                          CONSTRAINT campaign_messages_parts_sent_check CHECK (parts_sent >= 0),
    provider_message_ids  jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- The lease: who works on the row and until when.
    locked_by             text,
    locked_until          timestamptz,
    started_at            timestamptz,
    -- Why a pending message waits (window, cap, gap, instance down, paused); NULL when it is
    -- simply due. The claim's index leaves out 'paused' (0002 sets and clears it).
    wait_reason           text,
    cap_day               date,
    uncertain_part        integer,
    uncertain_sends       integer NOT NULL DEFAULT 0
                          CONSTRAINT campaign_messages_uncertain_sends_check
                          CHECK (uncertain_sends >= 0),
    CONSTRAINT campaign_messages_parts_check
        CHECK (parts IS NULL OR jsonb_typeof(parts) = 'array'),
    CONSTRAINT campaign_messages_lease_check
        CHECK (status <> 'processing' OR (locked_by IS NOT NULL AND locked_until IS NOT NULL))
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1,
    fillfactor = 80
);
-- A daily-cap slot belongs to the message that took it: the slots of a day are the messages
-- with that cap_day that are processing or sent, or have a part out already. A message that
-- leaves `processing` before any part went out stops counting at once, whoever moves it.
COMMENT ON COLUMN campaign_messages.cap_day IS
    'local day of the campaign''s daily cap whose slot this message took; it counts while the'
    ' message is processing or sent, or once a part of it went out';
-- A send that got no answer (a timeout, a 504) may have been delivered: the part it carried
-- and how often it went out unanswered, so no listener sends that part a third time.
COMMENT ON COLUMN campaign_messages.uncertain_part IS
    'index (from 0) of the part whose send last got no answer; it may have been delivered';
COMMENT ON COLUMN campaign_messages.uncertain_sends IS
    'how many sends of uncertain_part got no answer';

-- One row per sender instance: the earliest time the next message may go through it. Taken
-- atomically (row lock) right before a message's first part, so replicas cannot race past it.
CREATE TABLE IF NOT EXISTS listener_instances (
    instance      text PRIMARY KEY,
    next_send_at  timestamptz NOT NULL DEFAULT '-infinity',
    updated_at    timestamptz,
    refused       integer NOT NULL DEFAULT 0,
    refused_for   timestamptz
);
COMMENT ON COLUMN listener_instances.refused IS
    'messages refused a slot while the instance waits for the slot at refused_for';

-- One row per campaign and local day of its daily cap: what the takers of that day's slots
-- queue on (a row lock), so two cannot both see room. The count lives in the messages.
CREATE TABLE IF NOT EXISTS listener_campaign_days (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    day          date NOT NULL,
    PRIMARY KEY (campaign_id, day)
);

-- What the built-in sandbox sender "delivers": one row per accepted part, no network.
CREATE TABLE IF NOT EXISTS sandbox_outbox (
    id                   bigserial PRIMARY KEY,
    instance             text NOT NULL,
    number               text NOT NULL,
    text                 text NOT NULL,
    provider_message_id  text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The claim: due pending rows in due order, without the rows of paused campaigns (the claim
-- names the same predicate). Partial, so millions of finished rows cost nothing.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_due
    ON campaign_messages (scheduled_at)
    WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused';
-- Leases: the rescue of rows whose worker died.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_lease
    ON campaign_messages (locked_until)
    WHERE status = 'processing';
-- Monitoring (seed step 4.2): sent messages by time; share by status over recent rows.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_sent_at
    ON campaign_messages (sent_at)
    WHERE status = 'sent';
CREATE INDEX IF NOT EXISTS idx_campaign_messages_created_at
    ON campaign_messages (created_at);
-- Context: the last messages already sent to a lead, in any campaign. get_lead_full_context
-- asks for `sent_at IS NOT NULL` (only sent rows have one), which only this index serves: with
-- `status = 'sent'` the planner could walk idx_campaign_messages_sent_at backwards instead.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_lead_history
    ON campaign_messages (lead_id, sent_at DESC)
    WHERE sent_at IS NOT NULL;
-- Replay and run bookkeeping.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_failed
    ON campaign_messages (campaign_id, updated_at)
    WHERE status IN ('failed', 'skipped');
CREATE INDEX IF NOT EXISTS idx_campaign_messages_run
    ON campaign_messages (run_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_campaign_messages_campaign
    ON campaign_messages (campaign_id, status);
-- The daily cap: the slots a campaign's messages hold for one day.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_cap_day
    ON campaign_messages (campaign_id, cap_day)
    WHERE cap_day IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_campaign_runs_campaign
    ON campaign_runs (campaign_id, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_leads_phone
    ON leads (phone);
