-- listener: no-transaction
-- listener 0008: the status page counts queued messages from indexes alone. A paused campaign
-- of 200,000 messages, or as many scheduled for tomorrow, cost the page 250 ms through 0004's
-- index, which had to visit every row for its due time and retry mark. Built CONCURRENTLY:
-- claims and writes go on during the build. Safe to run again from the start.

-- Queued rows per campaign, state, wait reason and due time (index only).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_open_due
    ON campaign_messages (campaign_id, status, wait_reason, scheduled_at)
    WHERE status IN ('pending', 'processing');
-- The rows among them waiting for a retry (a failed try, no other reason to wait).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_retry
    ON campaign_messages (campaign_id, scheduled_at)
    WHERE status = 'pending' AND last_error IS NOT NULL AND wait_reason IS NULL;
-- 0004's index of the same rows, which the one above replaces.
DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_open;
