-- listener 0008: function signatures a listener of the previous release still calls.
-- A rolling upgrade migrates the database while older listeners keep running for a while; a
-- function they call must not vanish under them (with 0005 every paced message of an old
-- listener failed). So a signature an earlier migration created and a later one dropped comes
-- back here as a thin wrapper over the current function, kept for one release. The schema
-- tests check that every signature any migration created still exists.

-- 0003's listener_pace_start(campaign, at): the window and the daily cap of a paced campaign.
-- The current function (0005) gives the cap's slot to the message it is asked for; the old
-- callers name none, so the nil uuid (no message has it) stands in. What the old callers get:
-- the same window answers, a full cap holds their messages back until the next day's window,
-- and room lets them go with the cap's day. Their messages take no slot (there is none to
-- give it to), so the cap does not count what an old listener sends.
CREATE OR REPLACE FUNCTION listener_pace_start(p_campaign uuid, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz, reason text, cap_day date)
LANGUAGE sql AS $$
    SELECT p.go, p.wait_until, p.reason, p.cap_day
      FROM listener_pace_start(p_campaign, '00000000-0000-0000-0000-000000000000'::uuid, p_at) p
$$;

-- 0003's listener_release_cap(campaign, day): gave back a slot taken by a message that was not
-- sent. A slot now belongs to its message and stops counting by itself when the message leaves
-- `processing` before any part went out (0005), so there is nothing left to give back.
CREATE OR REPLACE FUNCTION listener_release_cap(p_campaign uuid, p_day date)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    NULL;
END
$$;
