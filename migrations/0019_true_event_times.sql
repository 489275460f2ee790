-- listener 0019: event times from a true clock. Evolution builds a webhook's
-- `date_time` as the server's local time with a `Z` appended (channel.service.ts), and its own
-- Dockerfile sets TZ=America/Sao_Paulo: three hours early. Taken as it came, it put deliveries,
-- reads, replies and opt-outs before their send, and the funnel's times below zero. The receiver
-- now stores a reply's own epoch `messageTimestamp`, or, for an event without one (a status),
-- the time its inbox row is written; `date_time` is not read. Applying, a time later than its
-- receipt is taken as the receipt, and a time before the part (for a reply: the lead's latest
-- message) was sent as that send; the receiver counts both (listener_event_times_clamped_total).
--
-- The functions that apply the inbox now also say how many times they clamped: their files in
-- migrations/functions/ drop a definition with the earlier result type before creating theirs
-- (callers read the columns by name, so a listener of the previous release goes on working).
COMMENT ON COLUMN webhook_inbox.at IS
    'the event''s own time (a reply''s messageTimestamp), else when the row was written';
