-- listener 0001: the campaign tables, their indexes and the queue's autovacuum settings.
-- Plain SQL, idempotent where Postgres allows, so Supabase tooling can apply it too.

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
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    prompt      text,
    model       text,
    instance    text,
    status      text NOT NULL DEFAULT 'active'
                CONSTRAINT campaigns_status_check CHECK (status IN ('active', 'paused', 'archived')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz
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
    CONSTRAINT campaign_messages_parts_check
        CHECK (parts IS NULL OR jsonb_typeof(parts) = 'array'),
    CONSTRAINT campaign_messages_lease_check
        CHECK (status <> 'processing' OR (locked_by IS NOT NULL AND locked_until IS NOT NULL))
);

-- The claim: due pending rows in due order. Partial, so millions of finished rows cost nothing.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_due
    ON campaign_messages (scheduled_at)
    WHERE status = 'pending';
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
-- Context: the last messages already sent to a lead, in any campaign.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_lead_sent
    ON campaign_messages (lead_id, sent_at DESC)
    WHERE status = 'sent';
-- Replay and run bookkeeping.
CREATE INDEX IF NOT EXISTS idx_campaign_messages_failed
    ON campaign_messages (campaign_id, updated_at)
    WHERE status IN ('failed', 'skipped');
CREATE INDEX IF NOT EXISTS idx_campaign_messages_run
    ON campaign_messages (run_id)
    WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_campaign_messages_campaign
    ON campaign_messages (campaign_id, status);
CREATE INDEX IF NOT EXISTS idx_campaign_runs_campaign
    ON campaign_runs (campaign_id, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_leads_phone
    ON leads (phone);

-- A queue table churns: vacuum it after 1% of its rows changed, not the default 20%.
ALTER TABLE campaign_messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1,
    fillfactor = 80
);
