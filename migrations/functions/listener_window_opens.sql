-- When the campaign's window is next open at or after p_at: p_at itself when it is open now.
-- Windows may cross midnight (22:00-02:00); the days list names the day a window starts on.
CREATE OR REPLACE FUNCTION listener_window_opens(
    p_start time, p_end time, p_timezone text, p_days smallint[], p_at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    local_now timestamp := p_at AT TIME ZONE p_timezone;
    day date;
    opens timestamp;
    closes timestamp;
BEGIN
    IF p_start IS NULL AND p_days IS NULL THEN
        RETURN p_at;
    END IF;
    FOR offset_days IN -1..8 LOOP
        day := local_now::date + offset_days;
        CONTINUE WHEN p_days IS NOT NULL AND NOT (extract(isodow FROM day)::smallint = ANY (p_days));
        opens := day + COALESCE(p_start, time '00:00');
        closes := CASE
            WHEN p_start IS NULL THEN day + 1
            WHEN p_end > p_start THEN day + p_end
            ELSE day + 1 + p_end
        END;
        IF local_now >= opens AND local_now < closes THEN
            RETURN p_at;
        END IF;
        IF opens > local_now THEN
            RETURN opens AT TIME ZONE p_timezone;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
