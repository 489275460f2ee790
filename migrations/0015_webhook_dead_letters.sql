-- listener 0015: an inbox row that cannot be applied is set aside, never left at the head of
-- the line. Until now one acknowledged event that failed on every turn (a time Postgres stores
-- but no client reads back, an id too big for an index row) stopped every status, reply and
-- opt-out behind it for good. Now a batch that fails is split until the failing row stands
-- alone; that row counts its attempts here and is tried again alone, apart from the fresh rows,
-- and after a few attempts it moves to `webhook_dead_letters` with its error (counted on
-- /metrics, shown by `listener stats` and the status page). Safe to run again from the start.
ALTER TABLE webhook_inbox ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE webhook_inbox ADD COLUMN IF NOT EXISTS last_error text;

-- The suspects, tried again alone once a turn: few, so the index holds almost nothing.
CREATE INDEX IF NOT EXISTS idx_webhook_inbox_suspects ON webhook_inbox (id) WHERE attempts > 0;

CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    id                   bigint PRIMARY KEY,  -- the inbox row's id
    kind                 text NOT NULL,
    instance             text NOT NULL,
    provider_message_id  text,
    status               text,
    phone                text,
    opt_out              boolean,
    -- as text: a time no client can read back is one of the reasons a row lands here
    at                   text,
    received_at          timestamptz NOT NULL,
    attempts             integer NOT NULL,
    error                text NOT NULL,
    dead_at              timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE webhook_dead_letters IS
    'acknowledged webhook events that could not be applied after a few attempts, with the error';
CREATE INDEX IF NOT EXISTS idx_webhook_dead_letters_dead_at ON webhook_dead_letters (dead_at);
