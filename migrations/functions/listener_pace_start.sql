-- The previous release's form of listener_pace_start_v2 (which judges a campaign in its
-- leads' zones): same answers for every campaign; a 'lead' campaign is judged in São Paulo's
-- time here, since this form cannot tell the lead's zone. Kept while listeners of that release
-- may still call it.
CREATE OR REPLACE FUNCTION listener_pace_start(p_campaign uuid, p_message uuid, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz, reason text, cap_day date)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM listener_pace_start_v2(p_campaign, p_message, p_at, NULL::text[]);
END
$$;
