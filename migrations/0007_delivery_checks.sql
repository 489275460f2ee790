-- listener: no-transaction
-- listener 0007: the restriction check of delivery feedback (listener/webhooks.py) reads the
-- last 10 first parts sent through an instance, in the order they were sent: each part keeps
-- when it was recorded, and an index keeps the check a short index scan however many parts
-- the table holds; replies find their lead's pending messages by index. Built CONCURRENTLY:
-- sends go on during the build. Safe to run again.
ALTER TABLE message_parts ADD COLUMN IF NOT EXISTS sent_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_message_parts_first
    ON message_parts (instance, sent_at DESC)
    WHERE part_no = 0;
-- Stop on reply and opt-out: a lead's pending messages.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_lead_pending
    ON campaign_messages (lead_id)
    WHERE status = 'pending';
