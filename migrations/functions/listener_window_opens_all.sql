-- The window opens when it is open in every one of `p_zones` (a lead whose zone cannot be
-- told, between several, waits for the most restrictive reading); NULL: it never opens in the
-- next week. Otherwise the latest of the zones' next openings, to be judged again then.
CREATE OR REPLACE FUNCTION listener_window_opens_all(
    p_start time, p_end time, p_zones text[], p_days smallint[], p_at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    zone text;
    opens timestamptz;
    latest timestamptz := p_at;
BEGIN
    FOREACH zone IN ARRAY p_zones LOOP
        opens := listener_window_opens(p_start, p_end, zone, p_days, p_at);
        IF opens IS NULL THEN
            RETURN NULL;
        END IF;
        latest := GREATEST(latest, opens);
    END LOOP;
    RETURN latest;
END
$$;
