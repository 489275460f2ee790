-- listener 0013: drop the four pacing functions nothing calls any more. They were kept beside
-- their replacements so that a listener of a previous release could go on calling them during
-- an upgrade, but there never was such a release: listener_take_gap_v2 replaced
-- listener_take_gap, listener_send_wait and listener_send_answered replaced listener_gap_sent,
-- listener_send_start and listener_send_done.
--
-- From this file on, every function lives in one file of its own under migrations/functions/,
-- which `listener migrate` applies after the numbered files and again whenever it changes
-- (migrations/functions/README.md).
DROP FUNCTION IF EXISTS listener_take_gap(text, integer, integer, timestamptz);
DROP FUNCTION IF EXISTS listener_gap_sent(text, integer, integer, timestamptz);
DROP FUNCTION IF EXISTS listener_send_start(text, numeric, numeric);
DROP FUNCTION IF EXISTS listener_send_done(text, numeric, numeric, timestamptz);
