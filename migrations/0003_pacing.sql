-- listener 0003: campaign pacing. Send windows, daily caps and gaps per sender instance, all
-- optional: a campaign with none of them set goes as fast as the queue. The columns and tables
-- are in 0001; listener/pacing.py calls these functions. Part of the baseline (see 0001).

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

-- Before a paced message is worked on: is its campaign's window open, and is there room in
-- today's cap? Gives the message a slot of today's cap when it may go. A slot belongs to its
-- message (campaign_messages.cap_day), so a worker that dies gives nothing back: the message
-- stops counting once it leaves `processing` before any part went out.
-- p_at is the clock (now() in production, any time in tests).
CREATE OR REPLACE FUNCTION listener_pace_start(p_campaign uuid, p_message uuid, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz, reason text, cap_day date)
LANGUAGE plpgsql AS $$
DECLARE
    c campaigns;
    opens timestamptz;
    today date;
    held integer;
BEGIN
    SELECT * INTO c FROM campaigns WHERE id = p_campaign;
    opens := listener_window_opens(c.send_window_start, c.send_window_end, c.send_timezone,
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
    today := (p_at AT TIME ZONE c.send_timezone)::date;
    IF c.send_window_start IS NOT NULL AND c.send_window_end <= c.send_window_start
       AND (p_at AT TIME ZONE c.send_timezone)::time < c.send_window_end THEN
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
        opens := listener_window_opens(
            c.send_window_start, c.send_window_end, c.send_timezone, c.send_days,
            ((today + 1) + COALESCE(c.send_window_start, time '00:00')) AT TIME ZONE c.send_timezone);
        RETURN QUERY SELECT false, COALESCE(opens, p_at + interval '1 day'), 'cap'::text, NULL::date;
        RETURN;
    END IF;
    UPDATE campaign_messages m SET cap_day = today WHERE m.id = p_message;
    RETURN QUERY SELECT true, NULL::timestamptz, NULL::text, today;
END
$$;

-- Right before a message's first part: take the instance's next send slot, spacing messages
-- through one instance by a random gap in [p_min, p_max] seconds, or say when to come back.
-- No thundering herd: the k-th message refused while the instance waits for one slot comes
-- back at a random time within k-1 mean gaps after that slot, so the waiters spread over the
-- time they will need (about ln k wakes per gap, not all k).
CREATE OR REPLACE FUNCTION listener_take_gap(
    p_instance text, p_min integer, p_max integer, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    next_at timestamptz;
    waiting integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT i.next_send_at INTO next_at FROM listener_instances i
     WHERE i.instance = p_instance FOR UPDATE;
    IF next_at > p_at THEN
        UPDATE listener_instances i
           SET refused = CASE WHEN i.refused_for = next_at THEN i.refused + 1 ELSE 1 END,
               refused_for = next_at
         WHERE i.instance = p_instance
        RETURNING i.refused INTO waiting;
        RETURN QUERY SELECT false,
            next_at + make_interval(
                secs => random() * (waiting - 1) * greatest((p_min + p_max) / 2.0, 1));
        RETURN;
    END IF;
    UPDATE listener_instances
       SET next_send_at = p_at + make_interval(secs => p_min + random() * (p_max - p_min)),
           updated_at = now()
     WHERE instance = p_instance;
    RETURN QUERY SELECT true, NULL::timestamptz;
END
$$;

-- Once a message's first part is accepted: the gap counts from the real send, so the
-- instance's next slot moves to a whole random gap after it (a rate-limit wait or a quick
-- retry after listener_take_gap's booking may have pushed the send towards the next slot).
CREATE OR REPLACE FUNCTION listener_gap_sent(
    p_instance text, p_min integer, p_max integer, p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO listener_instances AS i (instance, next_send_at, updated_at)
    VALUES (p_instance, p_at + make_interval(secs => p_min + random() * (p_max - p_min)), now())
    ON CONFLICT (instance) DO UPDATE
       SET next_send_at = greatest(i.next_send_at, EXCLUDED.next_send_at),
           updated_at = now()
$$;
