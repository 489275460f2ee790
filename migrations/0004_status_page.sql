-- listener: no-transaction
-- listener 0004: indexes of the status page (`GET /` on the metrics port, listener/status.py),
-- so it answers in a few milliseconds however many finished rows the table holds. Built
-- CONCURRENTLY: claims and writes go on during the build. Safe to run again from the start.

-- What is queued per campaign and why: pending and processing rows only, however many
-- finished rows there are.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_open
    ON campaign_messages (campaign_id, status, wait_reason)
    WHERE status IN ('pending', 'processing');
-- Sent per campaign over the last day and the last hour's throughput, without visiting rows.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_sent_campaign
    ON campaign_messages (sent_at) INCLUDE (campaign_id)
    WHERE status = 'sent';
-- The last failures, newest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_failed_recent
    ON campaign_messages (updated_at)
    WHERE status = 'failed';
