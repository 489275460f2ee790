-- listener 0009: sender pools (docs/design.md, "Pacing and sender pools"). A campaign may send through several
-- WhatsApp numbers (`campaigns.instances`); each message goes through one of them, chosen when
-- it starts and kept on the message (`campaign_messages.instance`); optional per-number limits
-- (`sender_instances`: hourly and daily caps, warm-up, enabled); gaps in fractions of a second.
-- A number held (not connected, missing, restricted) is held once, in `listener_instances`,
-- and its messages wait in the queue until it is back, instead of being claimed and put back
-- at every recheck. listener/pool.py calls these functions.
--
-- Changed signatures get new names (listener_take_gap_v2; listener_send_done replaces
-- listener_gap_sent): the integer versions stay for listeners of the previous release still
-- running during an upgrade.

-- ------------------------------------------------------------------------------------------
-- Columns and tables
-- ------------------------------------------------------------------------------------------

-- A pool is a non-empty list of distinct, non-blank names.
CREATE OR REPLACE FUNCTION listener_valid_pool(p_pool text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_pool IS NULL
        OR (cardinality(p_pool) > 0
            AND array_position(p_pool, NULL) IS NULL
            AND NOT EXISTS (SELECT 1 FROM unnest(p_pool) AS n WHERE btrim(n) = '')
            AND (SELECT count(DISTINCT n) FROM unnest(p_pool) AS n) = cardinality(p_pool))
$$;

ALTER TABLE campaigns ADD COLUMN IF NOT EXISTS instances text[];
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_instances_must_be_distinct_names;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_instances_must_be_distinct_names
    CHECK (listener_valid_pool(instances));
COMMENT ON COLUMN campaigns.instances IS
    'the pool of sender instances (WhatsApp numbers) the campaign sends through; NULL: instance,'
    ' then EVOLUTION_INSTANCE';

-- Gaps in fractions of a second (0.25 s). Integers stay valid values.
ALTER TABLE campaigns ALTER COLUMN gap_min_seconds TYPE numeric;
ALTER TABLE campaigns ALTER COLUMN gap_max_seconds TYPE numeric;
COMMENT ON COLUMN campaigns.gap_min_seconds IS
    'least time between two messages through one number of the campaign, in seconds (0.25 is'
    ' allowed); a random gap in [min, max] is drawn for each message';

-- The number a message goes through: chosen when it starts, fixed once a part went out.
ALTER TABLE campaign_messages ADD COLUMN IF NOT EXISTS instance text;
COMMENT ON COLUMN campaign_messages.instance IS
    'the sender instance chosen for this message (all its parts go through it); while the'
    ' message is processing with no part out, it holds a slot of that number''s caps';

CREATE TABLE IF NOT EXISTS sender_instances (
    name               text PRIMARY KEY
                       CONSTRAINT sender_instances_name_must_not_be_blank
                       CHECK (btrim(name) <> ''),
    daily_cap          integer
                       CONSTRAINT sender_instances_daily_cap_must_be_positive
                       CHECK (daily_cap IS NULL OR daily_cap > 0),
    hourly_cap         integer
                       CONSTRAINT sender_instances_hourly_cap_must_be_positive
                       CHECK (hourly_cap IS NULL OR hourly_cap > 0),
    warmup_started_on  date,
    enabled            boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz,
    CONSTRAINT sender_instances_hourly_cap_must_not_exceed_daily_cap
        CHECK (hourly_cap IS NULL OR daily_cap IS NULL OR hourly_cap <= daily_cap)
);
COMMENT ON TABLE sender_instances IS
    'optional limits per sender instance (WhatsApp number); numbers not listed have no caps';
COMMENT ON COLUMN sender_instances.daily_cap IS
    'messages a day through this number (the day of its campaigns'' time zone, or'
    ' America/Sao_Paulo when they disagree); during warm-up the smaller of this and the'
    ' warm-up''s cap';
COMMENT ON COLUMN sender_instances.hourly_cap IS 'messages per clock hour through this number';
COMMENT ON COLUMN sender_instances.warmup_started_on IS
    'first day of the warm-up: day n since then allows the n-th value of LISTENER_WARMUP';
COMMENT ON COLUMN sender_instances.enabled IS
    'false: the number leaves every pool (messages already started through it wait)';

-- A held number: why, since when, and when it is asked again (or its hold ends).
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS held_reason text;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS held_since timestamptz;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS held_until timestamptz;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS released_at timestamptz;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS last_booked_at timestamptz;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS sending_since timestamptz;
ALTER TABLE listener_instances ADD COLUMN IF NOT EXISTS last_sent_at timestamptz;
COMMENT ON COLUMN listener_instances.sending_since IS
    'a first part is on its way through the number since then (the next one waits for it)';
COMMENT ON COLUMN listener_instances.last_sent_at IS
    'when the last first part through the number was answered (or failed)';
COMMENT ON COLUMN listener_instances.held_reason IS
    'why the number is held (instance down, instance restricted); NULL: not held';
COMMENT ON COLUMN listener_instances.held_until IS
    'when a listener asks the number''s state again (a timed restriction: when it ends)';

-- ------------------------------------------------------------------------------------------
-- Which number, and when
-- ------------------------------------------------------------------------------------------

-- The campaigns whose pool holds p_instance (p_default: the name of campaigns with neither
-- instances nor instance, EVOLUTION_INSTANCE).
CREATE OR REPLACE FUNCTION listener_pool_of(c campaigns, p_default text)
RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(c.instances, ARRAY[COALESCE(c.instance, p_default, 'sandbox')])
$$;

-- The time zone a number's days and hours are counted in: its campaigns' when they agree,
-- else America/Sao_Paulo.
CREATE OR REPLACE FUNCTION listener_sender_timezone(p_instance text, p_default text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN count(DISTINCT c.send_timezone) = 1 THEN min(c.send_timezone)
                ELSE 'America/Sao_Paulo' END
      FROM campaigns c
     WHERE c.status <> 'archived' AND p_instance = ANY (listener_pool_of(c, p_default))
$$;

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

-- The number of its pool a message goes through, and whether it may go now: the number that
-- already talked with the lead (its latest sent message, any campaign) when it is in the pool
-- and available, else the available number that can send soonest (its gap, its caps; ties go
-- to the one that sent least recently). Held and disabled numbers are not available.
--
-- With p_book, the rows of the candidates are locked (in name order) and, when the chosen
-- number's turn comes within p_horizon seconds, its slot is booked: the message may send at
-- slot_at, the number's next slot moves a random gap in [p_min, p_max] after it, and the
-- message keeps the number (campaign_messages.instance), which counts against its caps from
-- now on. A turn further away books nothing: wait_until says when to come back (the k-th
-- message turned away for one slot comes back within k-1 mean gaps after it, as in
-- listener_take_gap). Without p_book it only reads (may this message go soon at all?).
-- p_own: the number of a message that has started (a part went out); only it will do.
-- p_at is the clock (now() in production, any time in tests).
CREATE OR REPLACE FUNCTION listener_pick_sender(
    p_message uuid, p_pool text[], p_own text, p_min numeric, p_max numeric,
    p_horizon numeric, p_warmup integer[], p_default text, p_book boolean, p_at timestamptz)
RETURNS TABLE (instance text, go boolean, slot_at timestamptz, wait_until timestamptz,
               reason text)
LANGUAGE plpgsql AS $$
DECLARE
    lead uuid;
    sticky text;
    candidates text[];
    best text;
    best_free timestamptz;
    best_reason text;
    r record;
    room record;
    free timestamptz;
    why text;
    held_end timestamptz;
    waiting integer;
    gap numeric := COALESCE((p_min + p_max) / 2.0, 0);
BEGIN
    IF p_own IS NOT NULL THEN
        candidates := ARRAY[p_own];
    ELSE
        candidates := p_pool;
    END IF;
    -- Available: not disabled, not held.
    SELECT array_agg(n ORDER BY n) INTO candidates
      FROM unnest(candidates) AS n
     WHERE NOT EXISTS (SELECT 1 FROM sender_instances s WHERE s.name = n AND NOT s.enabled)
       AND NOT EXISTS (SELECT 1 FROM listener_instances i
                        WHERE i.instance = n AND i.held_reason IS NOT NULL);
    IF candidates IS NULL THEN
        -- Nothing to send through: wait for the first hold that ends (a listener asks held
        -- numbers again and makes their messages due when one is back).
        SELECT min(i.held_until), min(i.held_reason) INTO held_end, why
          FROM listener_instances i
         WHERE i.instance = ANY (COALESCE(ARRAY[p_own], p_pool)) AND i.held_reason IS NOT NULL;
        IF p_own IS NOT NULL OR cardinality(p_pool) = 1 THEN
            why := COALESCE(why, 'no sender');
        ELSE
            why := 'no sender';
        END IF;
        RETURN QUERY SELECT NULL::text, false, NULL::timestamptz,
                            greatest(COALESCE(held_end, p_at), p_at + interval '1 minute'), why;
        RETURN;
    END IF;
    -- Sticky: the number of the lead's latest sent message, if it is a candidate.
    IF p_own IS NULL AND p_message IS NOT NULL AND cardinality(candidates) > 1 THEN
        SELECT m.lead_id INTO lead FROM campaign_messages m WHERE m.id = p_message;
        SELECT COALESCE(h.instance,
                        (SELECT p.instance FROM message_parts p
                          WHERE p.message_id = h.id ORDER BY p.part_no LIMIT 1))
          INTO sticky
          FROM campaign_messages h
         WHERE h.lead_id = lead AND h.sent_at IS NOT NULL AND h.id <> p_message
         ORDER BY h.sent_at DESC
         LIMIT 1;
        IF sticky = ANY (candidates) THEN
            candidates := ARRAY[sticky];
        END IF;
    END IF;
    IF p_book THEN
        INSERT INTO listener_instances (instance)
        SELECT n FROM unnest(candidates) AS n ORDER BY n
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM listener_instances i
          WHERE i.instance = ANY (candidates) ORDER BY i.instance FOR UPDATE;
    END IF;
    FOR r IN
        SELECT n AS name, COALESCE(i.next_send_at, '-infinity') AS next_at,
               i.last_booked_at
          FROM unnest(candidates) AS n
          LEFT JOIN listener_instances i ON i.instance = n
         ORDER BY i.last_booked_at NULLS FIRST, n
    LOOP
        SELECT * INTO room FROM listener_sender_room(r.name, p_message, p_warmup, p_default, p_at);
        free := room.free_at;
        why := room.reason;
        IF p_own IS NULL AND r.next_at > free THEN
            free := r.next_at;
            why := 'gap';
        END IF;
        IF best IS NULL OR free < best_free THEN
            best := r.name;
            best_free := free;
            best_reason := why;
        END IF;
    END LOOP;
    IF p_own IS NOT NULL THEN
        -- A started message: its remaining parts are not held to the gap (nor the caps).
        RETURN QUERY SELECT best, true, p_at, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;
    IF best_reason = 'sender cap' OR best_free > p_at + make_interval(secs => p_horizon) THEN
        IF best_reason = 'gap' THEN
            UPDATE listener_instances i
               SET refused = CASE WHEN i.refused_for = best_free THEN i.refused + 1 ELSE 1 END,
                   refused_for = best_free
             WHERE i.instance = best
            RETURNING i.refused INTO waiting;
            best_free := best_free + make_interval(
                secs => random() * (waiting - 1)
                        * greatest(gap / cardinality(candidates), 0.01));
        END IF;
        RETURN QUERY SELECT best, false, NULL::timestamptz, best_free, best_reason;
        RETURN;
    END IF;
    IF NOT p_book THEN
        RETURN QUERY SELECT best, true, best_free, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;
    UPDATE listener_instances i
       SET next_send_at = CASE WHEN p_max IS NULL THEN i.next_send_at
                               ELSE best_free + make_interval(
                                   secs => p_min + random() * (p_max - p_min)) END,
           last_booked_at = clock_timestamp(),
           updated_at = now()
     WHERE i.instance = best;
    UPDATE campaign_messages m SET instance = best WHERE m.id = p_message;
    RETURN QUERY SELECT best, true, best_free, NULL::timestamptz, NULL::text;
END
$$;

-- listener_take_gap with gaps in fractions of a second: take the instance's next send slot
-- when it comes within p_horizon seconds (slot_at: when to send), else say when to come back.
-- Used when a message's first send is tried again after a rate-limit wait.
CREATE OR REPLACE FUNCTION listener_take_gap_v2(
    p_instance text, p_min numeric, p_max numeric, p_horizon numeric, p_at timestamptz)
RETURNS TABLE (go boolean, slot_at timestamptz, wait_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    next_at timestamptz;
    waiting integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT greatest(i.next_send_at, p_at) INTO next_at FROM listener_instances i
     WHERE i.instance = p_instance FOR UPDATE;
    IF next_at > p_at + make_interval(secs => p_horizon) THEN
        UPDATE listener_instances i
           SET refused = CASE WHEN i.refused_for = next_at THEN i.refused + 1 ELSE 1 END,
               refused_for = next_at
         WHERE i.instance = p_instance
        RETURNING i.refused INTO waiting;
        RETURN QUERY SELECT false, NULL::timestamptz,
            next_at + make_interval(
                secs => random() * (waiting - 1) * greatest((p_min + p_max) / 2.0, 1));
        RETURN;
    END IF;
    UPDATE listener_instances
       SET next_send_at = next_at + make_interval(secs => p_min + random() * (p_max - p_min)),
           last_booked_at = clock_timestamp(),
           updated_at = now()
     WHERE instance = p_instance;
    RETURN QUERY SELECT true, next_at, NULL::timestamptz;
END
$$;

-- Right before a first part goes out through a paced number, at its booked slot: the send may
-- start only once the previous one through the number was answered at least p_min seconds
-- ago, so no two arrive closer than the gap, however late the previous one left (a busy
-- process, a slow answer). NULL: go now (the number is marked as sending); else when to ask
-- again. A mark older than p_stale seconds (a listener that died mid-send) is ignored.
CREATE OR REPLACE FUNCTION listener_send_start(
    p_instance text, p_min numeric, p_stale numeric)
RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    clock timestamptz := clock_timestamp();
    i listener_instances;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.sending_since IS NOT NULL AND i.sending_since > clock - make_interval(secs => p_stale) THEN
        RETURN clock + interval '2 milliseconds';
    END IF;
    IF i.last_sent_at IS NOT NULL AND i.last_sent_at + make_interval(secs => p_min) > clock THEN
        RETURN i.last_sent_at + make_interval(secs => p_min);
    END IF;
    UPDATE listener_instances SET sending_since = clock WHERE instance = p_instance;
    RETURN NULL;
END
$$;

-- A first part through a paced number was answered (accepted, or failed: it may have arrived):
-- the next one may start p_min seconds from now at the earliest, and with p_max the number's
-- next slot is at least a whole random gap away (listener_gap_sent_v2).
CREATE OR REPLACE FUNCTION listener_send_done(
    p_instance text, p_min numeric, p_max numeric, p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO listener_instances AS i (instance, next_send_at, last_sent_at, updated_at)
    VALUES (p_instance,
            p_at + make_interval(secs => p_min + random() * (COALESCE(p_max, p_min) - p_min)),
            clock_timestamp(), now())
    ON CONFLICT (instance) DO UPDATE
       SET next_send_at = CASE WHEN p_max IS NULL THEN i.next_send_at
                               ELSE greatest(i.next_send_at, EXCLUDED.next_send_at) END,
           sending_since = NULL,
           last_sent_at = clock_timestamp(),
           updated_at = now()
$$;

-- ------------------------------------------------------------------------------------------
-- Holds: the number is checked, not its messages
-- ------------------------------------------------------------------------------------------

-- Hold a number (p_reason: instance down, instance restricted) until p_until, when a listener
-- asks its state again. Its waiting messages are moved out of the claim's way to p_backstop
-- (a listener makes them due as soon as the number is back): the messages that started
-- through it, and the unstarted ones of campaigns whose whole pool is now unavailable. A
-- state read before the number was last released (p_seen_at) is stale and holds nothing.
-- Returns whether this began the hold (else it was held already) and how many messages moved.
CREATE OR REPLACE FUNCTION listener_hold_sender(
    p_instance text, p_reason text, p_until timestamptz, p_backstop timestamptz,
    p_seen_at timestamptz, p_default text, p_at timestamptz)
RETURNS TABLE (began boolean, deferred integer)
LANGUAGE plpgsql AS $$
DECLARE
    i listener_instances;
    moved integer;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.held_reason IS NULL AND i.released_at IS NOT NULL AND i.released_at > p_seen_at THEN
        RETURN QUERY SELECT false, 0;
        RETURN;
    END IF;
    UPDATE listener_instances
       SET held_reason = p_reason,
           held_since = COALESCE(held_since, p_at),
           held_until = CASE WHEN held_reason IS NULL THEN p_until
                             ELSE greatest(held_until, p_until) END,
           updated_at = now()
     WHERE instance = p_instance;
    moved := listener_defer_held(p_instance, p_backstop, p_default, p_at);
    RETURN QUERY SELECT i.held_reason IS NULL, moved;
END
$$;

-- Move the due messages that cannot go because p_instance is held to p_backstop (see above).
CREATE OR REPLACE FUNCTION listener_defer_held(
    p_instance text, p_backstop timestamptz, p_default text, p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
BEGIN
    WITH affected AS (
        SELECT c.id, listener_pool_of(c, p_default) AS pool
          FROM campaigns c
         WHERE c.status <> 'archived' AND p_instance = ANY (listener_pool_of(c, p_default))
    ), blocked AS (
        -- Campaigns none of whose numbers can send.
        SELECT a.id, cardinality(a.pool) AS size
          FROM affected a
         WHERE NOT EXISTS (
             SELECT 1 FROM unnest(a.pool) AS n
              WHERE NOT EXISTS (SELECT 1 FROM sender_instances s
                                 WHERE s.name = n AND NOT s.enabled)
                AND NOT EXISTS (SELECT 1 FROM listener_instances h
                                 WHERE h.instance = n AND h.held_reason IS NOT NULL))
    ), moved_rows AS (
        UPDATE campaign_messages m
           SET scheduled_at = p_backstop,
               wait_reason = CASE
                   WHEN m.parts_sent > 0 OR b.size = 1 THEN
                       (SELECT h.held_reason FROM listener_instances h
                         WHERE h.instance = p_instance)
                   ELSE 'no sender' END,
               updated_at = now()
          FROM affected a LEFT JOIN blocked b ON b.id = a.id
         WHERE m.campaign_id = a.id AND m.status = 'pending'
           AND m.wait_reason IS DISTINCT FROM 'paused'
           AND m.scheduled_at <= p_at
           AND ((m.parts_sent > 0 AND COALESCE(m.instance, a.pool[1]) = p_instance)
                OR (m.parts_sent = 0 AND b.id IS NOT NULL))
        RETURNING 1
    )
    SELECT count(*) INTO moved FROM moved_rows;
    RETURN moved;
END
$$;

-- The number is back: end its hold and make its waiting messages due now (the messages of
-- every campaign whose pool holds it that wait for a sender, except started ones that wait
-- for another number). Returns how many messages it made due.
CREATE OR REPLACE FUNCTION listener_release_sender(
    p_instance text, p_default text, p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE listener_instances
       SET held_reason = NULL, held_since = NULL, held_until = NULL, released_at = p_at,
           updated_at = now()
     WHERE instance = p_instance;
    RETURN listener_wake_sender(p_instance, p_default,
                                ARRAY['instance down', 'instance restricted', 'no sender'], p_at);
END
$$;

-- Make due the messages of the campaigns whose pool holds p_instance that wait for one of
-- p_reasons (a started message only when it waits for this very number).
CREATE OR REPLACE FUNCTION listener_wake_sender(
    p_instance text, p_default text, p_reasons text[], p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    woken integer;
BEGIN
    WITH affected AS (
        SELECT c.id, listener_pool_of(c, p_default) AS pool
          FROM campaigns c
         WHERE c.status <> 'archived'
           AND (p_instance = ANY (listener_pool_of(c, p_default))
                OR (p_default IS NULL AND c.instances IS NULL AND c.instance IS NULL))
    ), woken_rows AS (
        UPDATE campaign_messages m
           SET scheduled_at = p_at, wait_reason = NULL, updated_at = now()
          FROM affected a
         WHERE m.campaign_id = a.id AND m.status = 'pending'
           AND m.wait_reason = ANY (p_reasons)
           AND m.scheduled_at > p_at
           AND (m.parts_sent = 0 OR COALESCE(m.instance, a.pool[1]) = p_instance)
        RETURNING 1
    )
    SELECT count(*) INTO woken FROM woken_rows;
    RETURN woken;
END
$$;

-- A number enabled again (or its limits row removed) wakes the messages waiting for a sender;
-- caps raised or a warm-up changed wake those waiting for its caps.
CREATE OR REPLACE FUNCTION sender_instances_wake()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM listener_wake_sender(OLD.name, NULL, ARRAY['no sender', 'sender cap'], now());
        RETURN NULL;
    END IF;
    IF NEW.enabled AND NOT OLD.enabled THEN
        PERFORM listener_wake_sender(NEW.name, NULL, ARRAY['no sender'], now());
    END IF;
    IF NEW.daily_cap IS DISTINCT FROM OLD.daily_cap OR NEW.hourly_cap IS DISTINCT FROM OLD.hourly_cap
       OR NEW.warmup_started_on IS DISTINCT FROM OLD.warmup_started_on THEN
        PERFORM listener_wake_sender(NEW.name, NULL, ARRAY['sender cap'], now());
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS sender_instances_after_change ON sender_instances;
CREATE TRIGGER sender_instances_after_change
    AFTER UPDATE OR DELETE ON sender_instances
    FOR EACH ROW EXECUTE FUNCTION sender_instances_wake();
