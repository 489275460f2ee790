-- The number of its pool a message goes through, and whether it may go now: the number that
-- already talked with the lead (its latest sent message, any campaign) when it is in the pool
-- and available, else the available number that can send soonest (its gap, its caps; ties go
-- to the one that sent least recently). Held and disabled numbers are not available.
--
-- With p_book, the rows of the candidates are locked (in name order) and, when the chosen
-- number's turn comes within p_horizon seconds, its slot is booked: the message may send at
-- slot_at, the number's next slot moves a random gap in [p_min, p_max] after it, and the
-- message keeps the number (campaign_messages.instance), which counts against its caps from
-- now on. A turn further away books nothing: wait_until says when to come back; messages
-- turned away by a number whose turns are booked beyond the horizon come back one turn apart,
-- as the number frees its turns (not all at once). Without p_book it only reads (may this
-- message go soon at all?). p_own: the number of a message that has started (a part went
-- out); only it will do. p_at is the clock (now() in production, any time in tests).
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
