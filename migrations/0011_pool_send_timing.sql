-- listener 0011: sender pools, two corrections measured by bench/pool_throughput.py.
--
-- 1. The spacing of sends through one number counts from when the previous send was answered,
--    not from when its record was written (0009 stamped it after the record, which pushed
--    every send through a number by a group commit's time: 88% of N/g with a fixed gap). Both
--    new functions count in the database's clock only, so a listener whose clock is off from
--    the database's spaces sends the same. New names for new signatures: 0009's
--    listener_send_start and listener_send_done stay for listeners still running them.
-- 2. Messages turned away by a number whose turns are booked beyond the horizon came back all
--    at once (the line's count began anew at every booking), and their picks queued on the
--    number's row ahead of its sends: 94% of 1/g for one number with 20 messages in flight.
--    They now come back one turn apart, as the number frees its turns
--    (listener_pick_sender, same signature).

-- When a first part may go through the number at its slot: once the previous send through
-- the number was answered at least p_min seconds ago, and no other is on its way (a mark older
-- than p_stale seconds, a listener that died mid-send, is ignored). `wait`: seconds from now;
-- `reserved`: the number is marked as sending from then on, so go after `wait` without asking
-- again; else ask again after `wait` (another send is on its way).
CREATE OR REPLACE FUNCTION listener_send_wait(
    p_instance text, p_min numeric, p_stale numeric)
RETURNS TABLE (wait numeric, reserved boolean)
LANGUAGE plpgsql AS $$
DECLARE
    clock timestamptz := clock_timestamp();
    i listener_instances;
    start timestamptz;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.sending_since IS NOT NULL AND i.sending_since > clock - make_interval(secs => p_stale) THEN
        RETURN QUERY SELECT 0.002::numeric, false;
        RETURN;
    END IF;
    start := greatest(clock, i.last_sent_at + make_interval(secs => p_min));
    UPDATE listener_instances SET sending_since = start WHERE instance = p_instance;
    RETURN QUERY SELECT extract(epoch FROM start - clock), true;
END
$$;

-- A first part through the number was answered p_ago seconds ago (accepted, or failed: it may
-- have arrived): the next one may start p_min seconds after that answer at the earliest, and
-- with p_max the number's next slot is at least a whole random gap after it.
CREATE OR REPLACE FUNCTION listener_send_answered(
    p_instance text, p_min numeric, p_max numeric, p_ago numeric)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO listener_instances AS i (instance, next_send_at, last_sent_at, updated_at)
    VALUES (p_instance,
            clock_timestamp() - make_interval(secs => p_ago)
                + make_interval(secs => p_min + random() * (COALESCE(p_max, p_min) - p_min)),
            clock_timestamp() - make_interval(secs => p_ago), now())
    ON CONFLICT (instance) DO UPDATE
       SET next_send_at = CASE WHEN p_max IS NULL THEN i.next_send_at
                               ELSE greatest(i.next_send_at, EXCLUDED.next_send_at) END,
           sending_since = NULL,
           last_sent_at = greatest(i.last_sent_at, EXCLUDED.last_sent_at),
           updated_at = now()
$$;

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
    line_from timestamptz;
    turn numeric;
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
            -- Messages turned away while the number's turns are booked beyond the horizon
            -- form a line: the k-th since the line began comes back when its turn is about
            -- to be bookable, k-1 turns (of the pool) after the first, with a turn's jitter.
            -- The line begins anew once the time it was measured from has passed.
            UPDATE listener_instances i
               SET refused = CASE WHEN i.refused_for >= p_at THEN i.refused + 1 ELSE 1 END,
                   refused_for = CASE WHEN i.refused_for >= p_at THEN i.refused_for
                                      ELSE best_free END
             WHERE i.instance = best
            RETURNING i.refused, i.refused_for INTO waiting, line_from;
            turn := greatest(gap / cardinality(candidates), 0.001);
            best_free := greatest(
                line_from - make_interval(secs => p_horizon)
                    + make_interval(secs => (waiting - 1 + random()) * turn),
                p_at + make_interval(secs => turn));
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
