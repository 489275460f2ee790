-- listener_pace_start with the lead's zones (a new signature, so a new name): for a campaign
-- whose send_timezone is 'lead', the window, days and daily cap are judged in the lead's own
-- zone (leads.timezone) when it has one, else in `p_zones`, the zones its phone number may be
-- in (the window must be open in every one of them: the most restrictive reading), else in
-- São Paulo's. Otherwise as before.
CREATE OR REPLACE FUNCTION listener_pace_start_v2(
    p_campaign uuid, p_message uuid, p_at timestamptz, p_zones text[])
RETURNS TABLE(go boolean, wait_until timestamptz, reason text, cap_day date)
LANGUAGE plpgsql AS $$
DECLARE
    c campaigns;
    own text;
    zones text[];
    tz text;
    opens timestamptz;
    today date;
    held integer;
BEGIN
    SELECT * INTO c FROM campaigns WHERE id = p_campaign;
    IF c.send_timezone = 'lead' THEN
        SELECT l.timezone INTO own
          FROM campaign_messages m JOIN leads l ON l.id = m.lead_id
         WHERE m.id = p_message;
        zones := CASE WHEN own IS NOT NULL THEN ARRAY[own]
                      ELSE COALESCE(NULLIF(p_zones, '{}'), ARRAY['America/Sao_Paulo']) END;
    ELSE
        zones := ARRAY[c.send_timezone];
    END IF;
    -- The cap's day is read in the first zone (the lead's own, or the first its number names).
    tz := zones[1];
    opens := listener_window_opens_all(c.send_window_start, c.send_window_end, zones,
                                       c.send_days, p_at);
    IF opens IS NULL OR opens > p_at THEN
        RETURN QUERY SELECT false, COALESCE(opens, p_at + interval '1 day'), 'window'::text, NULL::date;
        RETURN;
    END IF;
    IF c.daily_cap IS NULL THEN
        RETURN QUERY SELECT true, NULL::timestamptz, NULL::text, NULL::date;
        RETURN;
    END IF;
    -- The cap's day is the day the current window began: the early hours of a window that
    -- crosses midnight (22:00-02:00) still belong to the evening before.
    today := (p_at AT TIME ZONE tz)::date;
    IF c.send_window_start IS NOT NULL AND c.send_window_end <= c.send_window_start
       AND (p_at AT TIME ZONE tz)::time < c.send_window_end THEN
        today := today - 1;
    END IF;
    -- Takers of this campaign's slots for today queue here, so two cannot both see room.
    INSERT INTO listener_campaign_days (campaign_id, day) VALUES (c.id, today)
        ON CONFLICT DO NOTHING;
    PERFORM 1 FROM listener_campaign_days
      WHERE campaign_id = c.id AND day = today FOR UPDATE;
    SELECT count(*) INTO held FROM campaign_messages m
     WHERE m.campaign_id = c.id AND m.cap_day = today AND m.id <> p_message
       AND (m.status IN ('processing', 'sent') OR m.parts_sent > 0);
    IF held >= c.daily_cap THEN
        -- Full for today: wait for the next day's window (not for midnight, which may fall
        -- inside this very window), holding nothing.
        UPDATE campaign_messages m SET cap_day = NULL
         WHERE m.id = p_message AND m.cap_day IS NOT NULL;
        opens := listener_window_opens_all(
            c.send_window_start, c.send_window_end, zones, c.send_days,
            ((today + 1) + COALESCE(c.send_window_start, time '00:00')) AT TIME ZONE tz);
        RETURN QUERY SELECT false, COALESCE(opens, p_at + interval '1 day'), 'cap'::text, NULL::date;
        RETURN;
    END IF;
    UPDATE campaign_messages m SET cap_day = today WHERE m.id = p_message;
    RETURN QUERY SELECT true, NULL::timestamptz, NULL::text, today;
END
$$;
