-- When the number may start its next message at or after p_at as far as its caps go (p_at
-- itself when it has room), and why not sooner. Counts the first parts sent through it in the
-- local hour and day, and the messages that took one of its slots and are still on their way
-- (processing, no part out yet), p_message excepted.
CREATE OR REPLACE FUNCTION listener_sender_room(
    p_instance text, p_message uuid, p_warmup integer[], p_default text, p_at timestamptz)
RETURNS TABLE (free_at timestamptz, reason text, sent_today integer, day_cap integer,
               sent_hour integer, hour_cap integer)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s sender_instances;
    tz text;
    local_now timestamp;
    day_start timestamptz;
    hour_start timestamptz;
    warm integer;
    today integer;
    this_hour integer;
    cap integer;
    going integer;
    day_index integer;
BEGIN
    SELECT * INTO s FROM sender_instances WHERE name = p_instance;
    IF NOT FOUND OR (s.daily_cap IS NULL AND s.hourly_cap IS NULL
                     AND s.warmup_started_on IS NULL) THEN
        RETURN QUERY SELECT p_at, NULL::text, NULL::integer, NULL::integer, NULL::integer,
                            NULL::integer;
        RETURN;
    END IF;
    tz := listener_sender_timezone(p_instance, p_default);
    local_now := p_at AT TIME ZONE tz;
    day_start := date_trunc('day', local_now) AT TIME ZONE tz;
    hour_start := date_trunc('hour', local_now) AT TIME ZONE tz;
    IF s.warmup_started_on IS NOT NULL THEN
        day_index := greatest(local_now::date - s.warmup_started_on, 0);
        IF day_index < COALESCE(cardinality(p_warmup), 0) THEN
            warm := p_warmup[day_index + 1];
        END IF;
    END IF;
    cap := least(s.daily_cap, warm);  -- least() ignores NULLs: the smaller one that is set
    SELECT count(*) FILTER (WHERE p.sent_at >= day_start),
           count(*) FILTER (WHERE p.sent_at >= hour_start)
      INTO today, this_hour
      FROM message_parts p
     WHERE p.instance = p_instance AND p.part_no = 0 AND p.sent_at >= day_start;
    SELECT count(*) INTO going
      FROM campaign_messages m
     WHERE m.status = 'processing' AND m.instance = p_instance AND m.parts_sent = 0
       AND m.id <> COALESCE(p_message, '00000000-0000-0000-0000-000000000000'::uuid);
    today := today + going;
    this_hour := this_hour + going;
    IF cap IS NOT NULL AND today >= cap THEN
        RETURN QUERY SELECT (local_now::date + 1)::timestamp AT TIME ZONE tz, 'sender cap'::text,
                            today, cap, this_hour, s.hourly_cap;
    ELSIF s.hourly_cap IS NOT NULL AND this_hour >= s.hourly_cap THEN
        RETURN QUERY SELECT hour_start + interval '1 hour', 'sender cap'::text,
                            today, cap, this_hour, s.hourly_cap;
    ELSE
        RETURN QUERY SELECT p_at, NULL::text, today, cap, this_hour, s.hourly_cap;
    END IF;
END
$$;
