-- listener 0003: campaign pacing. Send windows, daily caps and gaps per sender instance, all
-- optional: a campaign with none of them set behaves exactly as before.

ALTER TABLE campaigns
    ADD COLUMN IF NOT EXISTS send_window_start time,
    ADD COLUMN IF NOT EXISTS send_window_end time,
    ADD COLUMN IF NOT EXISTS send_timezone text NOT NULL DEFAULT 'America/Sao_Paulo',
    -- ISO days of the week the window applies to (1 = Monday ... 7 = Sunday); NULL = every day.
    ADD COLUMN IF NOT EXISTS send_days smallint[],
    ADD COLUMN IF NOT EXISTS daily_cap integer,
    ADD COLUMN IF NOT EXISTS gap_min_seconds integer,
    ADD COLUMN IF NOT EXISTS gap_max_seconds integer;

ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_window_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_window_check
    CHECK ((send_window_start IS NULL) = (send_window_end IS NULL)
           AND (send_window_start IS NULL OR send_window_start <> send_window_end));
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_days_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_days_check
    CHECK (send_days IS NULL OR (send_days <@ ARRAY[1, 2, 3, 4, 5, 6, 7]::smallint[]
                                 AND cardinality(send_days) > 0));
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_cap_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_cap_check CHECK (daily_cap IS NULL OR daily_cap >= 0);
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_gap_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_gap_check
    CHECK ((gap_min_seconds IS NULL) = (gap_max_seconds IS NULL)
           AND (gap_min_seconds IS NULL OR (gap_min_seconds >= 0 AND gap_max_seconds >= gap_min_seconds)));
-- A time zone Postgres does not know is refused when the campaign is written, not when it sends.
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_timezone_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_timezone_check
    CHECK ((timestamptz '2000-01-01 00:00+00' AT TIME ZONE send_timezone) IS NOT NULL);

-- Why a pending message waits (window, cap, gap, instance down); NULL when it is simply due.
ALTER TABLE campaign_messages ADD COLUMN IF NOT EXISTS wait_reason text;

-- One row per sender instance: the earliest time the next message may go through it. Taken
-- atomically (row lock) right before a message's first part, so replicas cannot race past it.
CREATE TABLE IF NOT EXISTS listener_instances (
    instance      text PRIMARY KEY,
    next_send_at  timestamptz NOT NULL DEFAULT '-infinity',
    updated_at    timestamptz
);

-- Messages of a campaign taken for sending per local day, for the daily cap.
CREATE TABLE IF NOT EXISTS listener_campaign_days (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    day          date NOT NULL,
    taken        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, day)
);

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
-- today's cap? Takes one from the cap when it may go. p_at is the clock (now() in production,
-- any time in tests).
CREATE OR REPLACE FUNCTION listener_pace_start(p_campaign uuid, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz, reason text, cap_day date)
LANGUAGE plpgsql AS $$
DECLARE
    c campaigns;
    opens timestamptz;
    today date;
    taken_today integer;
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
    today := (p_at AT TIME ZONE c.send_timezone)::date;
    INSERT INTO listener_campaign_days (campaign_id, day) VALUES (c.id, today)
        ON CONFLICT DO NOTHING;
    UPDATE listener_campaign_days SET taken = taken + 1
     WHERE campaign_id = c.id AND day = today AND taken < c.daily_cap
    RETURNING taken INTO taken_today;
    IF taken_today IS NULL THEN
        -- Full for today: wait for the first window of the next local day.
        opens := listener_window_opens(c.send_window_start, c.send_window_end, c.send_timezone,
                                       c.send_days, (today + 1)::timestamp AT TIME ZONE c.send_timezone);
        RETURN QUERY SELECT false, COALESCE(opens, p_at + interval '1 day'), 'cap'::text, NULL::date;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, NULL::timestamptz, NULL::text, today;
END
$$;

-- Give back a cap slot taken by a message that did not end up sent that day.
CREATE OR REPLACE FUNCTION listener_release_cap(p_campaign uuid, p_day date)
RETURNS void
LANGUAGE sql AS $$
    UPDATE listener_campaign_days SET taken = greatest(taken - 1, 0)
     WHERE campaign_id = p_campaign AND day = p_day
$$;

-- Right before a message's first part: take the instance's next send slot, spacing messages
-- through one instance by a random gap in [p_min, p_max] seconds, or say when it frees up.
CREATE OR REPLACE FUNCTION listener_take_gap(
    p_instance text, p_min integer, p_max integer, p_at timestamptz)
RETURNS TABLE (go boolean, wait_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    next_at timestamptz;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT i.next_send_at INTO next_at FROM listener_instances i
     WHERE i.instance = p_instance FOR UPDATE;
    IF next_at > p_at THEN
        RETURN QUERY SELECT false, next_at;
        RETURN;
    END IF;
    UPDATE listener_instances
       SET next_send_at = p_at + make_interval(secs => p_min + random() * (p_max - p_min)),
           updated_at = now()
     WHERE instance = p_instance;
    RETURN QUERY SELECT true, NULL::timestamptz;
END
$$;
