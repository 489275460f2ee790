-- listener: no-transaction
-- listener 0016: a hold of a whole campaign (its window, its daily cap, its budget) moves the
-- campaign's due messages aside in bounded batches instead of one statement. One statement
-- over 100,000 rows locked them all for as long as it ran (19 s in a chaos trial, minutes on
-- a busy server), every claim meanwhile had to step over them, and a hold cut off by a
-- database stop was never taken up again: its messages were then claimed and put back a few
-- at a time. Built CONCURRENTLY: claims and writes go on during the build. Safe to run again.

-- A campaign whose messages are being moved aside: one row per campaign and reason while the
-- move is under way (the claim passes over the campaign's unstarted messages meanwhile), left
-- behind by a listener cut off mid-move so that another (or the same, later) takes it up once
-- `runner_until` has passed; deleted when the move is done. `moved` counts what was moved.
CREATE TABLE IF NOT EXISTS listener_campaign_holds (
    campaign_id uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    reason text NOT NULL,
    until timestamptz NOT NULL,
    moved bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    runner text,
    runner_until timestamptz,
    PRIMARY KEY (campaign_id, reason)
);

-- A campaign's pending messages in due order: each batch of a hold is a short range scan of
-- the rows still to move, whatever other campaigns have due before them (the claim's
-- idx_campaign_messages_due has every campaign's rows in one order, and a batch through it
-- would step over all of theirs every time; the batch's query is written so that the planner
-- cannot take that one).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_campaign_due
    ON campaign_messages (campaign_id, scheduled_at)
    WHERE status = 'pending';
