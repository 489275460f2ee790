-- listener: no-transaction
-- listener 0021: fewer index entries per message sent. An update that is not HOT writes an
-- entry in every index of campaign_messages whose predicate its new row version meets; a
-- message's claim (pending to processing), its store of parts when the page has no room and its
-- last record (processing to sent) are such updates. Two indexes took an entry there that no
-- query needed. Built and dropped CONCURRENTLY: claims and writes go on meanwhile. Safe to run
-- again from the start (every step finds what an interrupted run left and completes it).

-- The status page's queued messages (status_open, counted from the index alone) are pending
-- rows; 0008's index held the processing ones too, so every claim wrote an entry in it. The
-- page now counts the rows in flight (bounded by what the listeners hold) through
-- idx_campaign_messages_lease, which the claim writes anyway.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_open_pending
    ON campaign_messages (campaign_id, wait_reason, scheduled_at)
    WHERE status = 'pending';
DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_open_due;

-- Sent rows by sent_at were indexed twice: idx_campaign_messages_sent_at (0001; the seed's
-- deploy check names it) and 0004's idx_campaign_messages_sent_campaign, the same key and
-- predicate with campaign_id included (the status page counts from it alone). The one with
-- campaign_id is kept under the name the seed checks; every message sent wrote both.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_sent_at_with_campaign
    ON campaign_messages (sent_at) INCLUDE (campaign_id)
    WHERE status = 'sent';
DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_sent_campaign;
DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_sent_at;
ALTER INDEX IF EXISTS idx_campaign_messages_sent_at_with_campaign
    RENAME TO idx_campaign_messages_sent_at;
