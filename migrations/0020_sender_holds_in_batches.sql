-- listener 0020: a number's hold moves its waiting messages aside in bounded batches, as a
-- campaign's does (0016). The hold was one statement, in the transaction that marks the number
-- held: it kept the number's row locked (every send through the number's pool waits on it) and
-- every due message of its campaigns for as long as it ran, and a hold cut off was never taken
-- up again. Now marking the number held is a short transaction that files the move here, and
-- the move runs in short batches (listener_defer_held_batch), each skipping rows others hold.

-- A number whose waiting messages are being moved aside: one row per number while the move is
-- under way, left behind by a listener cut off mid-move so that another (or the same, later)
-- takes it up once `runner_until` has passed; deleted when the move is done, or when the number
-- is released.
CREATE TABLE IF NOT EXISTS listener_sender_holds (
    instance text PRIMARY KEY,
    at timestamptz NOT NULL,
    backstop timestamptz NOT NULL,
    started_moved boolean NOT NULL DEFAULT false,
    moved bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    runner text,
    runner_until timestamptz
);
COMMENT ON TABLE listener_sender_holds IS
    'holds of a sender number whose waiting messages are being moved aside, in batches';
COMMENT ON COLUMN listener_sender_holds.at IS 'messages due by then are moved';
COMMENT ON COLUMN listener_sender_holds.backstop IS
    'to then (a listener makes them due as soon as the number is back)';
COMMENT ON COLUMN listener_sender_holds.started_moved IS
    'the messages that started through the number are moved (the first batches); the rest are'
    ' the unstarted ones of campaigns none of whose numbers can send';
