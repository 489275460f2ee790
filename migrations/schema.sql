-- The schema `listener migrate` makes in an empty database: every file of migrations/ applied
-- in order, dumped by pg_dump 18 (--schema-only --no-owner --no-privileges), normalised.
-- Never applied; tests/integration/test_schema.py checks that migrating from zero gives it.
-- Regenerate after adding a migration: uv run python -m tests.schema_snapshot

--
-- Name: apply_delivery_statuses(text[], text[], text[], timestamp with time zone[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_delivery_statuses(p_instances text[], p_ids text[], p_statuses text[], p_ats timestamp with time zone[]) RETURNS TABLE(moved integer, clamped integer)
    LANGUAGE plpgsql
    AS $$
DECLARE
    moved_ids uuid[];
    before_send integer;
BEGIN
    WITH v AS (
        SELECT DISTINCT ON (u.instance, u.id) u.instance, u.id, u.status, u.at
          FROM unnest(p_instances, p_ids, p_statuses, p_ats) AS u(instance, id, status, at)
         WHERE delivery_rank(u.status) > 0
         ORDER BY u.instance, u.id, delivery_rank(u.status) DESC, u.at
    ), upd AS (
        UPDATE message_parts p
           SET status = v.status, status_at = GREATEST(v.at, p.sent_at)
          FROM v
         WHERE p.instance = v.instance AND p.provider_message_id = v.id
           AND p.status <> 'ERROR' AND delivery_rank(v.status) > delivery_rank(p.status)
        RETURNING p.message_id, v.at < p.sent_at AS early_time
    ), early AS (
        INSERT INTO delivery_updates_early AS e (instance, provider_message_id, status, status_at)
        SELECT v.instance, v.id, v.status, v.at
          FROM v
         WHERE NOT EXISTS (SELECT 1 FROM message_parts p
                            WHERE p.instance = v.instance AND p.provider_message_id = v.id)
        ON CONFLICT (instance, provider_message_id) DO UPDATE
           SET status = excluded.status, status_at = excluded.status_at
         WHERE e.status <> 'ERROR' AND delivery_rank(excluded.status) > delivery_rank(e.status)
    )
    SELECT array_agg(DISTINCT upd.message_id), count(*) FILTER (WHERE upd.early_time)
      INTO moved_ids, before_send
      FROM upd;
    IF moved_ids IS NOT NULL THEN
        PERFORM roll_up_delivery(moved_ids);
    END IF;
    RETURN QUERY SELECT COALESCE(cardinality(moved_ids), 0), COALESCE(before_send, 0);
END
$$;

--
-- Name: apply_early_delivery_statuses(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_early_delivery_statuses() RETURNS TABLE(applied integer, dropped integer, clamped integer)
    LANGUAGE plpgsql
    AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH ready AS (
        DELETE FROM delivery_updates_early e
         USING message_parts p
         WHERE p.instance = e.instance AND p.provider_message_id = e.provider_message_id
        RETURNING e.instance, e.provider_message_id, e.status, e.status_at
    )
    SELECT array_agg(instance), array_agg(provider_message_id), array_agg(status),
           array_agg(status_at)
      INTO i, ids, s, ats
      FROM ready;
    applied := COALESCE(cardinality(i), 0);
    clamped := 0;
    IF applied > 0 THEN
        SELECT a.clamped INTO clamped FROM apply_delivery_statuses(i, ids, s, ats) a;
    END IF;
    DELETE FROM delivery_updates_early WHERE received_at < now() - interval '10 minutes';
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN NEXT;
END
$$;

--
-- Name: apply_inbox_status_ids(bigint[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_inbox_status_ids(p_ids bigint[]) RETURNS TABLE(taken integer, error_instances text[], clamped_future integer, clamped_before_send integer)
    LANGUAGE plpgsql
    AS $$
DECLARE
    i text[]; ids text[]; s text[]; ats timestamptz[];
BEGIN
    WITH batch AS (
        DELETE FROM webhook_inbox w
         WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                         WHERE b.id = ANY (p_ids) AND b.kind = 'status'
                           FOR UPDATE SKIP LOCKED)
        RETURNING w.id, w.instance, w.provider_message_id, w.status,
                  LEAST(w.at, w.received_at) AS true_at, w.at > w.received_at AS ahead
    )
    SELECT array_agg(b.instance ORDER BY b.id), array_agg(b.provider_message_id ORDER BY b.id),
           array_agg(b.status ORDER BY b.id), array_agg(b.true_at ORDER BY b.id),
           array_agg(DISTINCT b.instance) FILTER (WHERE b.status = 'ERROR'),
           count(*) FILTER (WHERE b.ahead)
      INTO i, ids, s, ats, error_instances, clamped_future
      FROM batch b;
    taken := COALESCE(cardinality(i), 0);
    clamped_before_send := 0;
    IF taken > 0 THEN
        SELECT a.clamped INTO clamped_before_send FROM apply_delivery_statuses(i, ids, s, ats) a;
    END IF;
    RETURN NEXT;
END
$$;

--
-- Name: apply_inbox_statuses(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_inbox_statuses(p_limit integer) RETURNS TABLE(taken integer, error_instances text[], clamped_future integer, clamped_before_send integer)
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN QUERY
    SELECT a.taken, a.error_instances, a.clamped_future, a.clamped_before_send
      FROM apply_inbox_status_ids(ARRAY(SELECT b.id FROM webhook_inbox b
                                         WHERE b.kind = 'status' AND b.attempts = 0
                                         ORDER BY b.id
                                         LIMIT p_limit
                                           FOR UPDATE SKIP LOCKED)) a;
END
$$;

--
-- Name: apply_reply(text[], boolean, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_reply(p_phones text[], p_opt_out boolean, p_at timestamp with time zone) RETURNS TABLE(lead_id uuid, skipped integer, clamped boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    found uuid[];
    n integer;
    last_sent timestamptz;
BEGIN
    SELECT array_agg(l.id) INTO found
      FROM leads l
     WHERE regexp_replace(l.phone, '[^0-9]', '', 'g') = ANY (p_phones);
    IF found IS NULL THEN
        RETURN;
    END IF;
    SELECT max(c.sent_at) INTO last_sent
      FROM campaign_messages c
     WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL;
    UPDATE leads l
       SET last_reply_at = GREATEST(l.last_reply_at, p_at, s.sent_at),
           opted_out = l.opted_out OR p_opt_out,
           opted_out_at = CASE WHEN p_opt_out AND NOT l.opted_out THEN GREATEST(p_at, s.sent_at)
                               ELSE l.opted_out_at END,
           updated_at = now()
      FROM (SELECT f.id,
                   (SELECT max(c.sent_at) FROM campaign_messages c
                     WHERE c.lead_id = f.id AND c.sent_at IS NOT NULL) AS sent_at
              FROM unnest(found) AS f(id)) s
     WHERE l.id = s.id;
    UPDATE campaign_messages m
       SET replied_at = GREATEST(p_at, latest.sent_at)
      FROM (SELECT DISTINCT ON (c.lead_id) c.id, c.sent_at
              FROM campaign_messages c
             WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL
             ORDER BY c.lead_id, c.sent_at DESC) latest
     WHERE m.id = latest.id AND m.replied_at IS NULL;
    UPDATE campaign_messages m
       SET status = 'skipped',
           last_error = CASE WHEN p_opt_out THEN 'skipped: the lead opted out'
                             ELSE 'skipped: the lead replied' END,
           wait_reason = NULL,
           updated_at = now()
     WHERE m.lead_id = ANY (found) AND m.status = 'pending' AND m.parts_sent = 0
       AND (p_opt_out OR EXISTS (SELECT 1 FROM campaigns c
                                  WHERE c.id = m.campaign_id AND c.stop_on_reply));
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Counted as clamped beyond a second: messageTimestamp has whole seconds, so a reply in the
    -- second of the send reads as up to a second before it.
    RETURN QUERY SELECT unnest(found), n, COALESCE(p_at < last_sent - interval '1 second', false);
END
$$;

--
-- Name: apply_reply_v2(text[], text, boolean, timestamp with time zone, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.apply_reply_v2(p_phones text[], p_phone text, p_opt_out boolean, p_at timestamp with time zone, p_instance text, p_text text) RETURNS TABLE(lead_id uuid, reply_id uuid, skipped integer, clamped boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    found uuid[];
    n integer := 0;
    last_sent timestamptz;
BEGIN
    SELECT array_agg(l.id) INTO found
      FROM leads l
     WHERE regexp_replace(l.phone, '[^0-9]', '', 'g') = ANY (p_phones);
    IF found IS NULL THEN
        RETURN;
    END IF;
    SELECT max(c.sent_at) INTO last_sent
      FROM campaign_messages c
     WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL;
    UPDATE leads l
       SET last_reply_at = GREATEST(l.last_reply_at, p_at, s.sent_at),
           opted_out = l.opted_out OR p_opt_out,
           opted_out_at = CASE WHEN p_opt_out AND NOT l.opted_out THEN GREATEST(p_at, s.sent_at)
                               ELSE l.opted_out_at END,
           updated_at = now()
      FROM (SELECT f.id,
                   (SELECT max(c.sent_at) FROM campaign_messages c
                     WHERE c.lead_id = f.id AND c.sent_at IS NOT NULL) AS sent_at
              FROM unnest(found) AS f(id)) s
     WHERE l.id = s.id;
    UPDATE campaign_messages m
       SET replied_at = GREATEST(p_at, latest.sent_at)
      FROM (SELECT DISTINCT ON (c.lead_id) c.id, c.sent_at
              FROM campaign_messages c
             WHERE c.lead_id = ANY (found) AND c.sent_at IS NOT NULL
             ORDER BY c.lead_id, c.sent_at DESC) latest
     WHERE m.id = latest.id AND m.replied_at IS NULL;
    IF p_opt_out THEN
        UPDATE campaign_messages m
           SET status = 'skipped',
               last_error = 'skipped: the lead opted out',
               wait_reason = NULL,
               updated_at = now()
         WHERE m.lead_id = ANY (found) AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    -- Counted as clamped beyond a second: messageTimestamp has whole seconds, so a reply in the
    -- second of the send reads as up to a second before it.
    RETURN QUERY
    INSERT INTO lead_replies AS r (lead_id, message_id, campaign_id, instance, phone, text,
                                   received_at, kind, classified_at)
    SELECT f.id, latest.id, latest.campaign_id, p_instance, p_phone, COALESCE(p_text, ''),
           GREATEST(p_at, latest.sent_at),
           CASE WHEN p_opt_out THEN 'opt_out' END, CASE WHEN p_opt_out THEN now() END
      FROM unnest(found) AS f(id)
      LEFT JOIN LATERAL (SELECT c.id, c.campaign_id, c.sent_at FROM campaign_messages c
                          WHERE c.lead_id = f.id AND c.sent_at IS NOT NULL
                          ORDER BY c.sent_at DESC LIMIT 1) latest ON true
    RETURNING r.lead_id, r.id, n, COALESCE(p_at < last_sent - interval '1 second', false);
END
$$;

--
-- Name: campaign_messages_notify_delete(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaign_messages_notify_delete() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
DECLARE
    r record;
BEGIN
    DELETE FROM message_parts p USING old_rows o WHERE p.message_id = o.id;
    FOR r IN
        SELECT run_id,
               count(*)::integer AS total,
               (count(*) FILTER (WHERE status = 'sent'))::integer AS sent,
               (count(*) FILTER (WHERE status = 'failed'))::integer AS failed,
               (count(*) FILTER (WHERE status = 'skipped'))::integer AS skipped
          FROM old_rows WHERE run_id IS NOT NULL GROUP BY run_id ORDER BY run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, -r.total, -r.sent, -r.failed, -r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;

--
-- Name: campaign_messages_notify_insert(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaign_messages_notify_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
DECLARE
    due timestamptz;
    r record;
BEGIN
    IF EXISTS (SELECT 1 FROM campaigns WHERE status = 'paused') THEN
        UPDATE campaign_messages m
           SET wait_reason = 'paused'
          FROM new_rows n JOIN campaigns c ON c.id = n.campaign_id
         WHERE m.id = n.id AND c.status = 'paused' AND n.status = 'pending';
    END IF;
    SELECT min(scheduled_at) INTO due FROM new_rows WHERE status = 'pending';
    IF due IS NOT NULL
       AND due <= now() + COALESCE(NULLIF(current_setting('listener.notify_horizon', true), '')
                                       ::interval, interval '1 hour') THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM due)::text);
    END IF;
    -- Locks on runs are taken in id order so concurrent statements cannot deadlock.
    FOR r IN
        SELECT run_id,
               count(*)::integer AS total,
               (count(*) FILTER (WHERE status = 'sent'))::integer AS sent,
               (count(*) FILTER (WHERE status = 'failed'))::integer AS failed,
               (count(*) FILTER (WHERE status = 'skipped'))::integer AS skipped
          FROM new_rows WHERE run_id IS NOT NULL GROUP BY run_id ORDER BY run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, r.total, r.sent, r.failed, r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;

--
-- Name: campaign_messages_notify_update(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaign_messages_notify_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
DECLARE
    due timestamptz;
    counted boolean;
    r record;
BEGIN
    SELECT min(n.scheduled_at) FILTER (WHERE n.status = 'pending'
                                         AND (o.status <> 'pending'
                                              OR o.scheduled_at <> n.scheduled_at)),
           bool_or(n.run_id IS DISTINCT FROM o.run_id
                   OR (n.run_id IS NOT NULL AND n.status IS DISTINCT FROM o.status
                       AND (n.status IN ('sent', 'failed', 'skipped')
                            OR o.status IN ('sent', 'failed', 'skipped'))))
      INTO due, counted
      FROM new_rows n JOIN old_rows o ON o.id = n.id;
    IF due IS NOT NULL THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM due)::text);
    END IF;
    IF NOT coalesce(counted, false) THEN
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT d.run_id,
               sum(d.total)::integer AS total, sum(d.sent)::integer AS sent,
               sum(d.failed)::integer AS failed, sum(d.skipped)::integer AS skipped
          FROM (
              SELECT n.run_id, 1 AS total,
                     (n.status = 'sent')::integer AS sent,
                     (n.status = 'failed')::integer AS failed,
                     (n.status = 'skipped')::integer AS skipped
                FROM new_rows n JOIN old_rows o ON o.id = n.id
               WHERE n.run_id IS NOT NULL
                 AND (n.status IS DISTINCT FROM o.status OR n.run_id IS DISTINCT FROM o.run_id)
              UNION ALL
              SELECT o.run_id, -1,
                     -(o.status = 'sent')::integer,
                     -(o.status = 'failed')::integer,
                     -(o.status = 'skipped')::integer
                FROM new_rows n JOIN old_rows o ON o.id = n.id
               WHERE o.run_id IS NOT NULL
                 AND (n.status IS DISTINCT FROM o.status OR n.run_id IS DISTINCT FROM o.run_id)
          ) d
         GROUP BY d.run_id
        HAVING sum(d.total) <> 0 OR sum(d.sent) <> 0 OR sum(d.failed) <> 0 OR sum(d.skipped) <> 0
         ORDER BY d.run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, r.total, r.sent, r.failed, r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;

--
-- Name: campaign_messages_truncate_parts(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaign_messages_truncate_parts() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
BEGIN
    TRUNCATE message_parts;
    RETURN NULL;
END
$$;

--
-- Name: campaign_runs_apply(uuid, integer, integer, integer, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaign_runs_apply(p_run_id uuid, d_total integer, d_sent integer, d_failed integer, d_skipped integer) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE campaign_runs r
       SET total_count = r.total_count + d_total,
           sent_count = r.sent_count + d_sent,
           failed_count = r.failed_count + d_failed,
           skipped_count = r.skipped_count + d_skipped,
           status = CASE
               WHEN r.status = 'cancelled' THEN r.status
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN 'completed'
               ELSE 'running' END,
           finished_at = CASE
               WHEN r.status = 'cancelled' THEN r.finished_at
               WHEN r.total_count + d_total > 0
                    AND r.sent_count + d_sent + r.failed_count + d_failed
                        + r.skipped_count + d_skipped >= r.total_count + d_total
                   THEN COALESCE(r.finished_at, now())
               ELSE NULL END,
           updated_at = now()
     WHERE r.id = p_run_id
$$;

--
-- Name: campaigns_mark_paused(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaigns_mark_paused() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
BEGIN
    IF NEW.status = 'paused' THEN
        UPDATE campaign_messages
           SET wait_reason = 'paused', updated_at = now()
         WHERE campaign_id = NEW.id AND status = 'pending'
           AND wait_reason IS DISTINCT FROM 'paused';
    ELSIF OLD.status = 'paused' THEN
        -- Every pending row, marked or not: rows can come back to `pending` during the pause
        -- (a replay, a retry, a hand-back, a rescued lease) without the mark.
        UPDATE campaign_messages
           SET wait_reason = CASE WHEN wait_reason = 'paused' THEN NULL ELSE wait_reason END,
               scheduled_at = greatest(scheduled_at, now()),
               updated_at = now()
         WHERE campaign_id = NEW.id AND status = 'pending';
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: campaigns_notify_resume(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaigns_notify_resume() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.status = 'active' AND o.status <> 'active') THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM now())::text);
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: campaigns_wake_budget(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.campaigns_wake_budget() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO '$user', 'public'
    AS $$
BEGIN
    IF NEW.budget_usd IS NULL OR NEW.spent_usd < NEW.budget_usd THEN
        UPDATE campaign_messages
           SET wait_reason = NULL,
               scheduled_at = now(),
               updated_at = now()
         WHERE campaign_id = NEW.id AND status = 'pending' AND wait_reason = 'budget';
        IF FOUND THEN
            PERFORM pg_notify('campaign_messages', extract(epoch FROM now())::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: delivery_rank(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.delivery_rank(status text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE status
               WHEN 'PENDING' THEN 1 WHEN 'SERVER_ACK' THEN 2 WHEN 'DELIVERY_ACK' THEN 3
               WHEN 'READ' THEN 4 WHEN 'PLAYED' THEN 5 WHEN 'ERROR' THEN 9 ELSE 0 END
$$;

--
-- Name: get_lead_full_context(uuid[], integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5) RETURNS TABLE(lead_id uuid, context jsonb)
    LANGUAGE sql STABLE
    AS $$
    SELECT * FROM listener_get_lead_full_context(lead_ids, history_limit)
$$;

--
-- Name: listener_defer_held(text, timestamp with time zone, text, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_defer_held(p_instance text, p_backstop timestamp with time zone, p_default text, p_at timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_defer_held_batch(text, text, text, interval, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_defer_held_batch(p_instance text, p_default text, p_runner text, p_lease interval, p_limit integer) RETURNS TABLE(moved integer, mine boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    -- (the hold's row as columns, not its row type: this folder also applies over a database
    -- whose numbered files stop before the table's)
    h_at timestamptz;
    h_backstop timestamptz;
    h_started_moved boolean;
    reason text;
    -- The number's other reasons, which its messages aside may still say.
    stale text[];
    affected uuid[];
    blocked uuid[];
    alone uuid[];
    started integer := 0;
    relabelled integer := 0;
    unstarted integer := 0;
    campaign uuid;
    taken integer;
BEGIN
    SELECT x.at, x.backstop, x.started_moved INTO h_at, h_backstop, h_started_moved
      FROM listener_sender_holds x
     WHERE x.instance = p_instance AND x.runner = p_runner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0, false;
        RETURN;
    END IF;
    SELECT i.held_reason INTO reason FROM listener_instances i WHERE i.instance = p_instance;
    IF reason IS NULL THEN  -- released meanwhile (listener_release_sender drops the row too)
        DELETE FROM listener_sender_holds x WHERE x.instance = p_instance;
        RETURN QUERY SELECT 0, false;
        RETURN;
    END IF;
    stale := array_remove(listener_number_holds(), reason);
    SELECT COALESCE(array_agg(a.id), '{}'),
           COALESCE(array_agg(a.id) FILTER (WHERE a.blocked), '{}'),
           COALESCE(array_agg(a.id) FILTER (WHERE a.blocked AND cardinality(a.pool) = 1), '{}')
      INTO affected, blocked, alone
      FROM (SELECT c.id, p.pool,
                   NOT EXISTS (
                       SELECT 1 FROM unnest(p.pool) AS n
                        WHERE NOT EXISTS (SELECT 1 FROM sender_instances s
                                           WHERE s.name = n AND NOT s.enabled)
                          AND NOT EXISTS (SELECT 1 FROM listener_instances x
                                           WHERE x.instance = n AND x.held_reason IS NOT NULL))
                       AS blocked
              FROM campaigns c CROSS JOIN LATERAL (SELECT listener_pool_of(c, p_default)) p(pool)
             WHERE c.status <> 'archived' AND p_instance = ANY (p.pool)) a;
    IF NOT h_started_moved THEN
        UPDATE campaign_messages m
           SET scheduled_at = h_backstop, wait_reason = reason, updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b JOIN campaigns c ON c.id = b.campaign_id
                    WHERE b.campaign_id = ANY (affected) AND b.status = 'pending'
                      -- (not `IS DISTINCT FROM`: the campaign's own due rows, see 0016)
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h_at AND b.scheduled_at < h_backstop
                      AND b.parts_sent > 0
                      AND COALESCE(b.instance, (listener_pool_of(c, p_default))[1]) = p_instance
                    LIMIT p_limit
                      FOR UPDATE OF b SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent > 0;
        GET DIAGNOSTICS started = ROW_COUNT;
        IF started < p_limit THEN
            UPDATE campaign_messages m
               SET wait_reason = reason, updated_at = now()
             WHERE m.id = ANY (ARRAY(
                       SELECT b.id FROM campaign_messages b JOIN campaigns c ON c.id = b.campaign_id
                        WHERE b.campaign_id = ANY (affected) AND b.status = 'pending'
                          -- (idx_campaign_messages_open_pending: only the rows to change)
                          AND b.wait_reason = ANY (stale) AND b.scheduled_at > h_at
                          AND CASE WHEN b.parts_sent > 0
                                   THEN COALESCE(b.instance, (listener_pool_of(c, p_default))[1])
                                        = p_instance
                                   ELSE b.campaign_id = ANY (alone) END
                        LIMIT p_limit - started
                          FOR UPDATE OF b SKIP LOCKED))
               AND m.status = 'pending' AND m.wait_reason = ANY (stale);
            GET DIAGNOSTICS relabelled = ROW_COUNT;
        END IF;
    END IF;
    -- Campaign by campaign, each a short range scan of its own due rows in order
    -- (idx_campaign_messages_campaign_due, as a campaign's hold; over several campaigns at once
    -- the planner walked the whole table, passing every row moved already, each batch).
    FOREACH campaign IN ARRAY blocked LOOP
        EXIT WHEN started + relabelled + unstarted >= p_limit;
        UPDATE campaign_messages m
           SET scheduled_at = h_backstop,
               wait_reason = CASE WHEN campaign = ANY (alone) THEN reason ELSE 'no sender' END,
               updated_at = now()
         WHERE m.id = ANY (ARRAY(
                   SELECT b.id FROM campaign_messages b
                    WHERE b.campaign_id = campaign AND b.status = 'pending'
                      AND COALESCE(b.wait_reason, '') <> 'paused'
                      AND b.scheduled_at <= h_at AND b.scheduled_at < h_backstop
                      AND b.parts_sent = 0
                    ORDER BY b.scheduled_at
                    LIMIT p_limit - started - relabelled - unstarted
                      FOR UPDATE SKIP LOCKED))
           AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS taken = ROW_COUNT;
        unstarted := unstarted + taken;
    END LOOP;
    UPDATE listener_sender_holds x
       SET moved = x.moved + started + unstarted,
           started_moved = x.started_moved OR started + relabelled < p_limit,
           runner_until = now() + p_lease
     WHERE x.instance = p_instance;
    RETURN QUERY SELECT started + relabelled + unstarted, true;
END
$$;

--
-- Name: listener_get_lead_full_context(uuid[], integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_get_lead_full_context(lead_ids uuid[], history_limit integer DEFAULT 5) RETURNS TABLE(lead_id uuid, context jsonb)
    LANGUAGE sql STABLE
    AS $$
    SELECT c.lead_id, c.context::jsonb
      FROM listener_lead_contexts(lead_ids, history_limit) c
$$;

--
-- Name: listener_hold_sender(text, text, timestamp with time zone, timestamp with time zone, timestamp with time zone, text, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_hold_sender(p_instance text, p_reason text, p_until timestamp with time zone, p_backstop timestamp with time zone, p_seen_at timestamp with time zone, p_default text, p_at timestamp with time zone) RETURNS TABLE(began boolean, deferred integer)
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_hold_sender_v2(text, text, timestamp with time zone, timestamp with time zone, timestamp with time zone, timestamp with time zone, text, interval); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_hold_sender_v2(p_instance text, p_reason text, p_until timestamp with time zone, p_backstop timestamp with time zone, p_seen_at timestamp with time zone, p_at timestamp with time zone, p_runner text, p_lease interval) RETURNS TABLE(began boolean, runner boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    i listener_instances;
    mine boolean;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    IF i.held_reason IS NULL AND i.released_at IS NOT NULL AND i.released_at > p_seen_at THEN
        RETURN;
    END IF;
    UPDATE listener_instances
       SET held_reason = p_reason,
           held_since = COALESCE(held_since, p_at),
           held_until = CASE WHEN held_reason IS NULL THEN p_until
                             ELSE greatest(held_until, p_until) END,
           updated_at = now()
     WHERE instance = p_instance;
    INSERT INTO listener_sender_holds AS h (instance, at, backstop, runner, runner_until)
    VALUES (p_instance, p_at, p_backstop, p_runner, now() + p_lease)
    ON CONFLICT (instance) DO UPDATE
       SET at = greatest(h.at, EXCLUDED.at),
           backstop = greatest(h.backstop, EXCLUDED.backstop),
           started_moved = false,
           runner = CASE WHEN h.runner_until < now() THEN EXCLUDED.runner ELSE h.runner END,
           runner_until = CASE WHEN h.runner_until < now() THEN EXCLUDED.runner_until
                               ELSE h.runner_until END
    RETURNING h.runner = p_runner AND h.runner_until = now() + p_lease INTO mine;
    RETURN QUERY SELECT i.held_reason IS NULL, mine;
END
$$;

--
-- Name: listener_lead_contexts(uuid[], integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_lead_contexts(lead_ids uuid[], history_limit integer DEFAULT 5) RETURNS TABLE(lead_id uuid, context json)
    LANGUAGE sql STABLE
    AS $$
    SELECT l.id,
           json_build_object(
               'id', l.id,
               'city', l.city,
               'name', l.name,
               'notes', l.notes,
               'phone', l.phone,
               'company', l.company,
               'segment', l.segment,
               'metadata', l.metadata,
               'opted_out', l.opted_out,
               'recent_messages', COALESCE((
                   SELECT json_agg(json_build_object(
                              'text', h.text,
                              'sent_at', h.sent_at,
                              'campaign_id', h.campaign_id) ORDER BY h.sent_at DESC)
                   FROM (
                       SELECT m.campaign_id, m.sent_at, COALESCE(m.generated_text, m.content) AS text
                       FROM campaign_messages m
                       WHERE m.lead_id = l.id AND m.sent_at IS NOT NULL
                       ORDER BY m.sent_at DESC
                       LIMIT history_limit
                   ) h
               ), '[]'::json)
           )
    FROM leads l
    WHERE l.id = ANY (lead_ids)
$$;

--
-- Name: listener_lead_stop(boolean, timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_lead_stop(opted_out boolean, handoff_at timestamp with time zone, made_at timestamp with time zone) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN opted_out THEN 'skipped: the lead opted out'
                WHEN handoff_at >= made_at THEN 'skipped: the lead was handed off' END
$$;

--
-- Name: listener_mark_old_campaign_messages_as_skipped(interval); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_mark_old_campaign_messages_as_skipped(max_age interval DEFAULT '24:00:00'::interval) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    skipped integer;
BEGIN
    UPDATE campaign_messages m
       SET status = 'skipped',
           last_error = format('skipped by the sweep: due since %s, longer than the age limit of %s',
                               m.scheduled_at, max_age),
           updated_at = now()
     WHERE m.status = 'pending'
       AND m.scheduled_at < now() - max_age
       AND m.parts_sent = 0
       AND m.wait_reason IS DISTINCT FROM 'paused'
       AND NOT EXISTS (SELECT 1 FROM campaigns c
                        WHERE c.id = m.campaign_id AND c.status = 'paused');
    GET DIAGNOSTICS skipped = ROW_COUNT;
    RETURN skipped;
END
$$;

--
-- Name: listener_number_holds(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_number_holds() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT ARRAY['instance down', 'instance restricted', 'unknown to Evolution']
$$;

--
-- Name: listener_pace_start(uuid, uuid, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_pace_start(p_campaign uuid, p_message uuid, p_at timestamp with time zone) RETURNS TABLE(go boolean, wait_until timestamp with time zone, reason text, cap_day date)
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN QUERY SELECT * FROM listener_pace_start_v2(p_campaign, p_message, p_at, NULL::text[]);
END
$$;

--
-- Name: listener_pace_start_v2(uuid, uuid, timestamp with time zone, text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_pace_start_v2(p_campaign uuid, p_message uuid, p_at timestamp with time zone, p_zones text[]) RETURNS TABLE(go boolean, wait_until timestamp with time zone, reason text, cap_day date)
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_pick_sender(uuid, text[], text, numeric, numeric, numeric, integer[], text, boolean, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_pick_sender(p_message uuid, p_pool text[], p_own text, p_min numeric, p_max numeric, p_horizon numeric, p_warmup integer[], p_default text, p_book boolean, p_at timestamp with time zone) RETURNS TABLE(instance text, go boolean, slot_at timestamp with time zone, wait_until timestamp with time zone, reason text)
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_valid_pool(text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_valid_pool(p_pool text[]) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    IF p_pool IS NULL THEN
        RETURN true;
    END IF;
    RETURN cardinality(p_pool) > 0
       AND array_position(p_pool, NULL) IS NULL
       AND NOT EXISTS (SELECT 1 FROM unnest(p_pool) AS n WHERE btrim(n) = '')
       AND (SELECT count(DISTINCT n) FROM unnest(p_pool) AS n) = cardinality(p_pool);
END
$$;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: campaigns; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaigns (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    prompt text,
    model text,
    instance text,
    status text DEFAULT 'active'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    send_window_start time without time zone,
    send_window_end time without time zone,
    send_timezone text DEFAULT 'America/Sao_Paulo'::text NOT NULL,
    send_days smallint[],
    daily_cap integer,
    gap_min_seconds numeric,
    gap_max_seconds numeric,
    stop_on_reply boolean DEFAULT true NOT NULL,
    fallback_models text[],
    budget_usd numeric(14,6),
    spent_usd numeric(18,10) DEFAULT 0 NOT NULL,
    instances text[],
    CONSTRAINT campaigns_budget_check CHECK (((budget_usd IS NULL) OR (budget_usd >= (0)::numeric))),
    CONSTRAINT campaigns_cap_check CHECK (((daily_cap IS NULL) OR (daily_cap >= 0))),
    CONSTRAINT campaigns_days_check CHECK (((send_days IS NULL) OR ((send_days <@ ARRAY[(1)::smallint, (2)::smallint, (3)::smallint, (4)::smallint, (5)::smallint, (6)::smallint, (7)::smallint]) AND (cardinality(send_days) > 0)))),
    CONSTRAINT campaigns_gap_check CHECK ((((gap_min_seconds IS NULL) = (gap_max_seconds IS NULL)) AND ((gap_min_seconds IS NULL) OR ((gap_min_seconds >= (0)::numeric) AND (gap_max_seconds >= gap_min_seconds))))),
    CONSTRAINT campaigns_instances_must_be_distinct_names CHECK (public.listener_valid_pool(instances)),
    CONSTRAINT campaigns_status_check CHECK ((status = ANY (ARRAY['active'::text, 'paused'::text, 'archived'::text]))),
    CONSTRAINT campaigns_timezone_check CHECK (
CASE
    WHEN (send_timezone = 'lead'::text) THEN true
    ELSE (('2000-01-01 00:00:00+00'::timestamp with time zone AT TIME ZONE send_timezone) IS NOT NULL)
END),
    CONSTRAINT campaigns_window_check CHECK ((((send_window_start IS NULL) = (send_window_end IS NULL)) AND ((send_window_start IS NULL) OR (send_window_start <> send_window_end))))
)
WITH (fillfactor='10');

--
-- Name: COLUMN campaigns.gap_min_seconds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaigns.gap_min_seconds IS 'least time between two messages through one number of the campaign, in seconds (0.25 is allowed); a random gap in [min, max] is drawn for each message';

--
-- Name: COLUMN campaigns.fallback_models; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaigns.fallback_models IS 'models OpenRouter tries in order after the primary; NULL = LISTENER_FALLBACK_MODELS';

--
-- Name: COLUMN campaigns.budget_usd; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaigns.budget_usd IS 'once spent_usd reaches it, messages that still need the LLM wait (wait_reason budget)';

--
-- Name: COLUMN campaigns.spent_usd; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaigns.spent_usd IS 'sum of campaign_messages.cost_usd, kept by the listener''s writes that store the usage';

--
-- Name: COLUMN campaigns.instances; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaigns.instances IS 'the pool of sender instances (WhatsApp numbers) the campaign sends through; NULL: instance, then EVOLUTION_INSTANCE';

--
-- Name: listener_pool_of(public.campaigns, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_pool_of(c public.campaigns, p_default text) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
    SELECT COALESCE(c.instances, ARRAY[COALESCE(c.instance, p_default, 'sandbox')])
$$;

--
-- Name: listener_release_sender(text, text, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_release_sender(p_instance text, p_default text, p_at timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
BEGIN
    UPDATE listener_instances
       SET held_reason = NULL, held_since = NULL, held_until = NULL, released_at = p_at,
           updated_at = now()
     WHERE instance = p_instance;
    DELETE FROM listener_sender_holds WHERE instance = p_instance;
    RETURN listener_wake_sender(p_instance, p_default,
                                listener_number_holds() || 'no sender'::text, p_at);
END
$$;

--
-- Name: listener_send_answered(text, numeric, numeric, numeric); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_send_answered(p_instance text, p_min numeric, p_max numeric, p_ago numeric) RETURNS void
    LANGUAGE sql
    AS $$
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

--
-- Name: listener_send_wait(text, numeric, numeric); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_send_wait(p_instance text, p_min numeric, p_stale numeric) RETURNS TABLE(wait numeric, reserved boolean)
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_send_wait_v2(text, numeric, numeric, uuid); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_send_wait_v2(p_instance text, p_min numeric, p_stale numeric, p_message_id uuid) RETURNS TABLE(wait numeric, reserved boolean, stop text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    clock timestamptz;
    i listener_instances;
    start timestamptz;
    why text;
BEGIN
    INSERT INTO listener_instances (instance) VALUES (p_instance) ON CONFLICT DO NOTHING;
    SELECT * INTO i FROM listener_instances WHERE instance = p_instance FOR UPDATE;
    SELECT listener_lead_stop(l.opted_out, l.handoff_at, m.created_at)
      INTO why
      FROM campaign_messages m JOIN leads l ON l.id = m.lead_id
     WHERE m.id = p_message_id;
    IF why IS NOT NULL THEN
        RETURN QUERY SELECT 0::numeric, false, why;
        RETURN;
    END IF;
    clock := clock_timestamp();
    IF i.sending_since IS NOT NULL AND i.sending_since > clock - make_interval(secs => p_stale) THEN
        RETURN QUERY SELECT 0.002::numeric, false, NULL::text;
        RETURN;
    END IF;
    start := greatest(clock, i.last_sent_at + make_interval(secs => p_min));
    UPDATE listener_instances SET sending_since = start WHERE instance = p_instance;
    RETURN QUERY SELECT extract(epoch FROM start - clock), true, NULL::text;
END
$$;

--
-- Name: listener_sender_room(text, uuid, integer[], text, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_sender_room(p_instance text, p_message uuid, p_warmup integer[], p_default text, p_at timestamp with time zone) RETURNS TABLE(free_at timestamp with time zone, reason text, sent_today integer, day_cap integer, sent_hour integer, hour_cap integer)
    LANGUAGE plpgsql STABLE
    AS $$
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

--
-- Name: listener_sender_timezone(text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_sender_timezone(p_instance text, p_default text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
    SELECT CASE WHEN count(DISTINCT c.send_timezone) = 1 AND min(c.send_timezone) <> 'lead'
                THEN min(c.send_timezone)
                ELSE 'America/Sao_Paulo' END
      FROM campaigns c
     WHERE c.status <> 'archived' AND p_instance = ANY (listener_pool_of(c, p_default))
$$;

--
-- Name: listener_take_gap_v2(text, numeric, numeric, numeric, timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_take_gap_v2(p_instance text, p_min numeric, p_max numeric, p_horizon numeric, p_at timestamp with time zone) RETURNS TABLE(go boolean, slot_at timestamp with time zone, wait_until timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_wake_sender(text, text, text[], timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_wake_sender(p_instance text, p_default text, p_reasons text[], p_at timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: listener_window_opens(time without time zone, time without time zone, text, smallint[], timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_window_opens(p_start time without time zone, p_end time without time zone, p_timezone text, p_days smallint[], p_at timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE
    AS $$
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

--
-- Name: listener_window_opens_all(time without time zone, time without time zone, text[], smallint[], timestamp with time zone); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.listener_window_opens_all(p_start time without time zone, p_end time without time zone, p_zones text[], p_days smallint[], p_at timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE plpgsql STABLE
    AS $$
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

--
-- Name: mark_old_campaign_messages_as_skipped(interval); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.mark_old_campaign_messages_as_skipped(max_age interval DEFAULT '24:00:00'::interval) RETURNS integer
    LANGUAGE sql
    AS $$
    SELECT listener_mark_old_campaign_messages_as_skipped(max_age)
$$;

--
-- Name: reply_classified(uuid, text, text, bigint, bigint, numeric, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.reply_classified(p_reply uuid, p_kind text, p_model text, p_prompt_tokens bigint, p_completion_tokens bigint, p_cost numeric, p_error text) RETURNS TABLE(lead_id uuid, kind text, skipped integer, handed_off boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    r lead_replies;
    n integer := 0;
    k integer;
    handed boolean := false;
BEGIN
    UPDATE lead_replies x
       SET kind = p_kind,
           classified_at = now(),
           model = COALESCE(p_model, x.model),
           prompt_tokens = x.prompt_tokens + p_prompt_tokens,
           completion_tokens = x.completion_tokens + p_completion_tokens,
           cost_usd = x.cost_usd + p_cost,
           last_error = p_error
     WHERE x.id = p_reply AND x.kind IS NULL
    RETURNING x.* INTO r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_cost > 0 AND r.campaign_id IS NOT NULL THEN
        UPDATE campaigns c SET spent_usd = c.spent_usd + p_cost WHERE c.id = r.campaign_id;
    END IF;
    IF p_kind = 'auto_reply' THEN
        NULL;  -- an away message stops nothing
    ELSIF p_kind = 'opt_out' THEN
        UPDATE leads l
           SET opted_out = true,
               opted_out_at = COALESCE(l.opted_out_at, r.received_at),
               updated_at = now()
         WHERE l.id = r.lead_id AND NOT l.opted_out;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead opted out',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
    ELSIF p_kind IN ('interested', 'question') THEN
        UPDATE leads l SET handoff_at = now(), updated_at = now()
         WHERE l.id = r.lead_id AND l.handoff_at IS NULL;
        handed := FOUND;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead was handed off',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF handed THEN
            PERFORM pg_notify('listener_handoff', json_build_object(
                'lead_id', r.lead_id, 'reply_id', r.id, 'kind', p_kind,
                'campaign_id', r.campaign_id, 'message_id', r.message_id)::text);
        END IF;
    ELSE
        IF p_kind = 'not_interested' AND r.campaign_id IS NOT NULL THEN
            UPDATE campaign_messages m
               SET status = 'skipped', last_error = 'skipped: the lead is not interested',
                   wait_reason = NULL, updated_at = now()
             WHERE m.lead_id = r.lead_id AND m.campaign_id = r.campaign_id
               AND m.status = 'pending' AND m.parts_sent = 0;
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        UPDATE campaign_messages m
           SET status = 'skipped', last_error = 'skipped: the lead replied',
               wait_reason = NULL, updated_at = now()
         WHERE m.lead_id = r.lead_id AND m.status = 'pending' AND m.parts_sent = 0
           AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id AND c.stop_on_reply);
        GET DIAGNOSTICS k = ROW_COUNT;
        n := n + k;
    END IF;
    UPDATE campaign_messages m
       SET scheduled_at = now(), wait_reason = NULL, updated_at = now()
     WHERE m.lead_id = r.lead_id AND m.status = 'pending'
       AND m.wait_reason = 'reply unclassified' AND m.scheduled_at > now()
       AND NOT EXISTS (SELECT 1 FROM lead_replies x WHERE x.lead_id = r.lead_id AND x.kind IS NULL);
    RETURN QUERY SELECT r.lead_id, p_kind, n, handed;
END
$$;

--
-- Name: reply_unclassified(uuid, text, interval, bigint, bigint, numeric); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.reply_unclassified(p_reply uuid, p_error text, p_delay interval, p_prompt_tokens bigint, p_completion_tokens bigint, p_cost numeric) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    campaign uuid;
BEGIN
    UPDATE lead_replies x
       SET next_try_at = now() + p_delay,
           last_error = p_error,
           prompt_tokens = x.prompt_tokens + p_prompt_tokens,
           completion_tokens = x.completion_tokens + p_completion_tokens,
           cost_usd = x.cost_usd + p_cost
     WHERE x.id = p_reply AND x.kind IS NULL
    RETURNING x.campaign_id INTO campaign;
    IF FOUND AND p_cost > 0 AND campaign IS NOT NULL THEN
        UPDATE campaigns c SET spent_usd = c.spent_usd + p_cost WHERE c.id = campaign;
    END IF;
END
$$;

--
-- Name: roll_up_delivery(uuid[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.roll_up_delivery(p_message_ids uuid[]) RETURNS void
    LANGUAGE sql
    AS $$
    WITH locked AS (
        SELECT m.id FROM campaign_messages m
         WHERE m.id = ANY (p_message_ids)
         ORDER BY m.id
           FOR NO KEY UPDATE
    ), r AS (
        SELECT p.message_id,
               count(*) FILTER (WHERE delivery_rank(p.status) BETWEEN 3 AND 5) AS delivered,
               max(p.status_at) FILTER (WHERE delivery_rank(p.status) BETWEEN 3 AND 5) AS last_at,
               min(p.status_at) FILTER (WHERE p.status IN ('READ', 'PLAYED')) AS read_at,
               min(p.part_no) FILTER (WHERE p.status = 'ERROR') AS error_part
          FROM message_parts p JOIN locked l ON l.id = p.message_id
         GROUP BY p.message_id
    )
    UPDATE campaign_messages m
       SET delivered_at = COALESCE(m.delivered_at,
                                   CASE WHEN r.delivered >= GREATEST(jsonb_array_length(
                                                 COALESCE(m.parts, '[]'::jsonb)), 1)
                                        THEN GREATEST(r.last_at, m.sent_at) END),
           read_at = COALESCE(m.read_at,
                              CASE WHEN r.read_at IS NOT NULL
                                   THEN GREATEST(r.read_at, m.sent_at) END),
           delivery_error = COALESCE(m.delivery_error,
                                     CASE WHEN r.error_part IS NOT NULL
                                          THEN 'WhatsApp reported ERROR for part '
                                               || (r.error_part + 1) END)
      FROM r
     WHERE m.id = r.message_id
       AND (m.delivered_at IS NULL OR m.read_at IS NULL
            OR (m.delivery_error IS NULL AND r.error_part IS NOT NULL))
$$;

--
-- Name: sender_instances_wake(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.sender_instances_wake() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: webhook_inbox_failed(bigint, text, integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.webhook_inbox_failed(p_id bigint, p_error text, p_max integer) RETURNS TABLE(dead boolean, kind text, instance text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    n integer;
BEGIN
    UPDATE webhook_inbox w
       SET attempts = w.attempts + 1, last_error = p_error
     WHERE w.id = p_id
    RETURNING w.attempts, w.kind, w.instance INTO n, kind, instance;
    IF n IS NULL THEN
        RETURN;
    END IF;
    dead := n >= p_max;
    IF dead THEN
        WITH moved AS (DELETE FROM webhook_inbox w WHERE w.id = p_id RETURNING w.*)
        INSERT INTO webhook_dead_letters (id, kind, instance, provider_message_id, status, phone,
                                          opt_out, at, received_at, attempts, error)
        SELECT m.id, m.kind, m.instance, m.provider_message_id, m.status, m.phone, m.opt_out,
               m.at::text, m.received_at, m.attempts, p_error
          FROM moved m
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN NEXT;
END
$$;

--
-- Name: campaign_messages; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaign_messages (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    campaign_id uuid NOT NULL,
    lead_id uuid NOT NULL,
    run_id uuid,
    status text DEFAULT 'pending'::text NOT NULL,
    scheduled_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    content text,
    last_error text,
    sent_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    generated_text text,
    parts jsonb,
    parts_sent integer DEFAULT 0 NOT NULL,
    provider_message_ids jsonb DEFAULT '[]'::jsonb NOT NULL,
    locked_by text,
    locked_until timestamp with time zone,
    started_at timestamp with time zone,
    wait_reason text,
    cap_day date,
    uncertain_part integer,
    uncertain_sends integer DEFAULT 0 NOT NULL,
    delivered_at timestamp with time zone,
    read_at timestamp with time zone,
    delivery_error text,
    replied_at timestamp with time zone,
    uncertain_at timestamp with time zone,
    model text,
    model_fallback boolean,
    prompt_tokens bigint DEFAULT 0 NOT NULL,
    completion_tokens bigint DEFAULT 0 NOT NULL,
    cost_usd numeric(18,10) DEFAULT 0 NOT NULL,
    instance text,
    look_up_since timestamp with time zone,
    step integer DEFAULT 1 NOT NULL,
    previous_id uuid,
    CONSTRAINT campaign_messages_attempts_check CHECK ((attempts >= 0)),
    CONSTRAINT campaign_messages_lease_check CHECK (((status <> 'processing'::text) OR ((locked_by IS NOT NULL) AND (locked_until IS NOT NULL)))),
    CONSTRAINT campaign_messages_parts_check CHECK (((parts IS NULL) OR (jsonb_typeof(parts) = 'array'::text))),
    CONSTRAINT campaign_messages_parts_sent_check CHECK ((parts_sent >= 0)),
    CONSTRAINT campaign_messages_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'processing'::text, 'sent'::text, 'failed'::text, 'skipped'::text]))),
    CONSTRAINT campaign_messages_step_check CHECK ((step >= 1)),
    CONSTRAINT campaign_messages_uncertain_sends_check CHECK ((uncertain_sends >= 0))
)
WITH (autovacuum_vacuum_scale_factor='0.01', autovacuum_analyze_scale_factor='0.02', autovacuum_vacuum_cost_delay='1', fillfactor='80');

--
-- Name: COLUMN campaign_messages.cap_day; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.cap_day IS 'local day of the campaign''s daily cap whose slot this message took; it counts while the message is processing or sent, or once a part of it went out';

--
-- Name: COLUMN campaign_messages.uncertain_part; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.uncertain_part IS 'index (from 0) of the part whose send last got no answer; it may have been delivered';

--
-- Name: COLUMN campaign_messages.uncertain_sends; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.uncertain_sends IS 'how many sends of uncertain_part got no answer';

--
-- Name: COLUMN campaign_messages.delivered_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.delivered_at IS 'every part DELIVERY_ACK or later';

--
-- Name: COLUMN campaign_messages.read_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.read_at IS 'a part READ or PLAYED';

--
-- Name: COLUMN campaign_messages.delivery_error; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.delivery_error IS 'a part WhatsApp reported as ERROR';

--
-- Name: COLUMN campaign_messages.uncertain_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.uncertain_at IS 'when the first send of uncertain_part that got no answer was made';

--
-- Name: COLUMN campaign_messages.model; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.model IS 'the model that answered the message''s last billed LLM call (the reply''s model)';

--
-- Name: COLUMN campaign_messages.model_fallback; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.model_fallback IS 'true when that model was one of the fallbacks, not the primary';

--
-- Name: COLUMN campaign_messages.cost_usd; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.cost_usd IS 'US dollars of every billed LLM call of the message (usage.cost), summed';

--
-- Name: COLUMN campaign_messages.instance; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.instance IS 'the sender instance chosen for this message (all its parts go through it); while the message is processing with no part out, it holds a slot of that number''s caps';

--
-- Name: COLUMN campaign_messages.look_up_since; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.look_up_since IS 'left processing by the system before the listener: looked up on Evolution (a message to the lead since this time) before it is sent';

--
-- Name: COLUMN campaign_messages.step; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.step IS 'the step of the campaign''s sequence this message is (1: the row the back end inserts)';

--
-- Name: COLUMN campaign_messages.previous_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_messages.previous_id IS 'the message of the step before, whose send created this row (NULL for step 1)';

--
-- Name: campaign_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaign_runs (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    campaign_id uuid NOT NULL,
    status text DEFAULT 'running'::text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    total_count integer DEFAULT 0 NOT NULL,
    sent_count integer DEFAULT 0 NOT NULL,
    failed_count integer DEFAULT 0 NOT NULL,
    skipped_count integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    CONSTRAINT campaign_runs_status_check CHECK ((status = ANY (ARRAY['running'::text, 'completed'::text, 'cancelled'::text])))
);

--
-- Name: campaign_steps; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaign_steps (
    campaign_id uuid NOT NULL,
    step integer NOT NULL,
    wait interval NOT NULL,
    prompt text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    CONSTRAINT campaign_steps_step_must_be_2_or_more CHECK ((step >= 2)),
    CONSTRAINT campaign_steps_wait_must_not_be_negative CHECK ((wait >= '00:00:00'::interval))
);

--
-- Name: TABLE campaign_steps; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.campaign_steps IS 'follow-up steps of a campaign: step k+1 goes `wait` after step k was sent, unless the lead replied as a person, opted out, was handed off, or step k was not delivered';

--
-- Name: COLUMN campaign_steps.prompt; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.campaign_steps.prompt IS 'the system prompt of this step; NULL: the campaign''s';

--
-- Name: delivery_updates_early; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.delivery_updates_early (
    instance text NOT NULL,
    provider_message_id text NOT NULL,
    status text NOT NULL,
    status_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: lead_replies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.lead_replies (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    lead_id uuid NOT NULL,
    message_id uuid,
    campaign_id uuid,
    instance text NOT NULL,
    phone text NOT NULL,
    text text NOT NULL,
    received_at timestamp with time zone NOT NULL,
    kind text,
    classified_at timestamp with time zone,
    model text,
    prompt_tokens bigint DEFAULT 0 NOT NULL,
    completion_tokens bigint DEFAULT 0 NOT NULL,
    cost_usd numeric(18,10) DEFAULT 0 NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_try_at timestamp with time zone DEFAULT now() NOT NULL,
    last_error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT lead_replies_kind_check CHECK ((kind = ANY (ARRAY['interested'::text, 'question'::text, 'not_now'::text, 'not_interested'::text, 'opt_out'::text, 'auto_reply'::text, 'wrong_person'::text, 'other'::text])))
);

--
-- Name: TABLE lead_replies; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.lead_replies IS 'what leads wrote back, and what it means (kind; NULL until classified)';

--
-- Name: COLUMN lead_replies.message_id; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.lead_replies.message_id IS 'the message it answers: the lead''s last message sent before it came';

--
-- Name: COLUMN lead_replies.instance; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.lead_replies.instance IS 'the number (sender instance) it was written to';

--
-- Name: COLUMN lead_replies.phone; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.lead_replies.phone IS 'the digits of the number it came from';

--
-- Name: COLUMN lead_replies.model; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.lead_replies.model IS 'the model that classified it; NULL for the free filters (opt-out words, the sandbox rules)';

--
-- Name: leads; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.leads (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text,
    phone text NOT NULL,
    opted_out boolean DEFAULT false NOT NULL,
    company text,
    city text,
    segment text,
    notes text,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    last_reply_at timestamp with time zone,
    opted_out_at timestamp with time zone,
    handoff_at timestamp with time zone,
    timezone text,
    CONSTRAINT leads_timezone_check CHECK (((timezone IS NULL) OR (('2000-01-01 00:00:00+00'::timestamp with time zone AT TIME ZONE timezone) IS NOT NULL)))
);

--
-- Name: COLUMN leads.handoff_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.leads.handoff_at IS 'when a reply (interested, a question) handed the lead to a person: nothing more is sent to it automatically; NOTIFY listener_handoff said so';

--
-- Name: COLUMN leads.timezone; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.leads.timezone IS 'the lead''s IANA time zone, for campaigns whose send_timezone is ''lead''; NULL: told from the phone number';

--
-- Name: listener_campaign_days; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.listener_campaign_days (
    campaign_id uuid NOT NULL,
    day date NOT NULL
);

--
-- Name: listener_campaign_holds; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.listener_campaign_holds (
    campaign_id uuid NOT NULL,
    reason text NOT NULL,
    until timestamp with time zone NOT NULL,
    moved bigint DEFAULT 0 NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    runner text,
    runner_until timestamp with time zone
);

--
-- Name: listener_instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.listener_instances (
    instance text NOT NULL,
    next_send_at timestamp with time zone DEFAULT '-infinity'::timestamp with time zone NOT NULL,
    updated_at timestamp with time zone,
    refused integer DEFAULT 0 NOT NULL,
    refused_for timestamp with time zone,
    held_reason text,
    held_since timestamp with time zone,
    held_until timestamp with time zone,
    released_at timestamp with time zone,
    last_booked_at timestamp with time zone,
    sending_since timestamp with time zone,
    last_sent_at timestamp with time zone
);

--
-- Name: COLUMN listener_instances.refused; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_instances.refused IS 'messages refused a slot while the instance waits for the slot at refused_for';

--
-- Name: COLUMN listener_instances.held_reason; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_instances.held_reason IS 'why the number is held (instance down, instance restricted); NULL: not held';

--
-- Name: COLUMN listener_instances.held_until; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_instances.held_until IS 'when a listener asks the number''s state again (a timed restriction: when it ends)';

--
-- Name: COLUMN listener_instances.sending_since; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_instances.sending_since IS 'a first part is on its way through the number since then (the next one waits for it)';

--
-- Name: COLUMN listener_instances.last_sent_at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_instances.last_sent_at IS 'when the last first part through the number was answered (or failed)';

--
-- Name: listener_migrations; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.listener_migrations (
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: listener_sender_holds; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.listener_sender_holds (
    instance text NOT NULL,
    at timestamp with time zone NOT NULL,
    backstop timestamp with time zone NOT NULL,
    started_moved boolean DEFAULT false NOT NULL,
    moved bigint DEFAULT 0 NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    runner text,
    runner_until timestamp with time zone
);

--
-- Name: TABLE listener_sender_holds; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.listener_sender_holds IS 'holds of a sender number whose waiting messages are being moved aside, in batches';

--
-- Name: COLUMN listener_sender_holds.at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_sender_holds.at IS 'messages due by then are moved';

--
-- Name: COLUMN listener_sender_holds.backstop; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_sender_holds.backstop IS 'to then (a listener makes them due as soon as the number is back)';

--
-- Name: COLUMN listener_sender_holds.started_moved; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.listener_sender_holds.started_moved IS 'the messages that started through the number are moved (the first batches); the rest are the unstarted ones of campaigns none of whose numbers can send';

--
-- Name: message_parts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.message_parts (
    message_id uuid NOT NULL,
    part_no integer NOT NULL,
    instance text NOT NULL,
    provider_message_id text NOT NULL,
    status text DEFAULT 'PENDING'::text NOT NULL,
    status_at timestamp with time zone DEFAULT now() NOT NULL,
    sent_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT message_parts_status_check CHECK ((status = ANY (ARRAY['PENDING'::text, 'SERVER_ACK'::text, 'DELIVERY_ACK'::text, 'READ'::text, 'PLAYED'::text, 'ERROR'::text])))
)
WITH (fillfactor='70');

--
-- Name: TABLE message_parts; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.message_parts IS 'each accepted part and the last delivery status WhatsApp reported for it (forward only)';

--
-- Name: sandbox_outbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sandbox_outbox (
    id bigint NOT NULL,
    instance text NOT NULL,
    number text NOT NULL,
    text text NOT NULL,
    provider_message_id text NOT NULL,
    created_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);

--
-- Name: sandbox_outbox_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.sandbox_outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: sandbox_outbox_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.sandbox_outbox_id_seq OWNED BY public.sandbox_outbox.id;

--
-- Name: sender_instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sender_instances (
    name text NOT NULL,
    daily_cap integer,
    hourly_cap integer,
    warmup_started_on date,
    enabled boolean DEFAULT true NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone,
    CONSTRAINT sender_instances_daily_cap_must_be_positive CHECK (((daily_cap IS NULL) OR (daily_cap > 0))),
    CONSTRAINT sender_instances_hourly_cap_must_be_positive CHECK (((hourly_cap IS NULL) OR (hourly_cap > 0))),
    CONSTRAINT sender_instances_hourly_cap_must_not_exceed_daily_cap CHECK (((hourly_cap IS NULL) OR (daily_cap IS NULL) OR (hourly_cap <= daily_cap))),
    CONSTRAINT sender_instances_name_must_not_be_blank CHECK ((btrim(name) <> ''::text))
);

--
-- Name: TABLE sender_instances; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.sender_instances IS 'optional limits per sender instance (WhatsApp number); numbers not listed have no caps';

--
-- Name: COLUMN sender_instances.daily_cap; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.sender_instances.daily_cap IS 'messages a day through this number (the day of its campaigns'' time zone, or America/Sao_Paulo when they disagree); during warm-up the smaller of this and the warm-up''s cap';

--
-- Name: COLUMN sender_instances.hourly_cap; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.sender_instances.hourly_cap IS 'messages per clock hour through this number';

--
-- Name: COLUMN sender_instances.warmup_started_on; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.sender_instances.warmup_started_on IS 'first day of the warm-up: day n since then allows the n-th value of LISTENER_WARMUP';

--
-- Name: COLUMN sender_instances.enabled; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.sender_instances.enabled IS 'false: the number leaves every pool (messages already started through it wait)';

--
-- Name: sent_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sent_events (
    instance text NOT NULL,
    provider_message_id text NOT NULL,
    number text NOT NULL,
    text text NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: webhook_dead_letters; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_dead_letters (
    id bigint NOT NULL,
    kind text NOT NULL,
    instance text NOT NULL,
    provider_message_id text,
    status text,
    phone text,
    opt_out boolean,
    at text,
    received_at timestamp with time zone NOT NULL,
    attempts integer NOT NULL,
    error text NOT NULL,
    dead_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: TABLE webhook_dead_letters; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.webhook_dead_letters IS 'acknowledged webhook events that could not be applied after a few attempts, with the error';

--
-- Name: webhook_inbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_inbox (
    id bigint NOT NULL,
    kind text NOT NULL,
    instance text NOT NULL,
    provider_message_id text,
    status text,
    phone text,
    opt_out boolean,
    at timestamp with time zone NOT NULL,
    received_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    text text,
    CONSTRAINT webhook_inbox_kind_check CHECK ((kind = ANY (ARRAY['status'::text, 'reply'::text])))
);

--
-- Name: TABLE webhook_inbox; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON TABLE public.webhook_inbox IS 'webhook events acknowledged to Evolution and not applied yet (applied within moments)';

--
-- Name: COLUMN webhook_inbox.at; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON COLUMN public.webhook_inbox.at IS 'the event''s own time (a reply''s messageTimestamp), else when the row was written';

--
-- Name: webhook_inbox_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.webhook_inbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.webhook_inbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: sandbox_outbox id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sandbox_outbox ALTER COLUMN id SET DEFAULT nextval('public.sandbox_outbox_id_seq'::regclass);

--
-- Name: campaign_messages campaign_messages_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_messages
    ADD CONSTRAINT campaign_messages_pkey PRIMARY KEY (id);

--
-- Name: campaign_runs campaign_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_runs
    ADD CONSTRAINT campaign_runs_pkey PRIMARY KEY (id);

--
-- Name: campaign_steps campaign_steps_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_steps
    ADD CONSTRAINT campaign_steps_pkey PRIMARY KEY (campaign_id, step);

--
-- Name: campaigns campaigns_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaigns
    ADD CONSTRAINT campaigns_pkey PRIMARY KEY (id);

--
-- Name: delivery_updates_early delivery_updates_early_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.delivery_updates_early
    ADD CONSTRAINT delivery_updates_early_pkey PRIMARY KEY (instance, provider_message_id);

--
-- Name: lead_replies lead_replies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.lead_replies
    ADD CONSTRAINT lead_replies_pkey PRIMARY KEY (id);

--
-- Name: leads leads_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.leads
    ADD CONSTRAINT leads_pkey PRIMARY KEY (id);

--
-- Name: listener_campaign_days listener_campaign_days_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_campaign_days
    ADD CONSTRAINT listener_campaign_days_pkey PRIMARY KEY (campaign_id, day);

--
-- Name: listener_campaign_holds listener_campaign_holds_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_campaign_holds
    ADD CONSTRAINT listener_campaign_holds_pkey PRIMARY KEY (campaign_id, reason);

--
-- Name: listener_instances listener_instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_instances
    ADD CONSTRAINT listener_instances_pkey PRIMARY KEY (instance);

--
-- Name: listener_migrations listener_migrations_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_migrations
    ADD CONSTRAINT listener_migrations_pkey PRIMARY KEY (version);

--
-- Name: listener_sender_holds listener_sender_holds_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_sender_holds
    ADD CONSTRAINT listener_sender_holds_pkey PRIMARY KEY (instance);

--
-- Name: message_parts message_parts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.message_parts
    ADD CONSTRAINT message_parts_pkey PRIMARY KEY (message_id, part_no);

--
-- Name: message_parts message_parts_provider_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.message_parts
    ADD CONSTRAINT message_parts_provider_key UNIQUE (instance, provider_message_id);

--
-- Name: sandbox_outbox sandbox_outbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sandbox_outbox
    ADD CONSTRAINT sandbox_outbox_pkey PRIMARY KEY (id);

--
-- Name: sender_instances sender_instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sender_instances
    ADD CONSTRAINT sender_instances_pkey PRIMARY KEY (name);

--
-- Name: sent_events sent_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sent_events
    ADD CONSTRAINT sent_events_pkey PRIMARY KEY (instance, provider_message_id);

--
-- Name: webhook_dead_letters webhook_dead_letters_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_dead_letters
    ADD CONSTRAINT webhook_dead_letters_pkey PRIMARY KEY (id);

--
-- Name: webhook_inbox webhook_inbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_inbox
    ADD CONSTRAINT webhook_inbox_pkey PRIMARY KEY (id);

--
-- Name: idx_campaign_messages_campaign; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_campaign ON public.campaign_messages USING btree (campaign_id, status);

--
-- Name: idx_campaign_messages_campaign_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_campaign_due ON public.campaign_messages USING btree (campaign_id, scheduled_at) WHERE (status = 'pending'::text);

--
-- Name: idx_campaign_messages_cap_day; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_cap_day ON public.campaign_messages USING btree (campaign_id, cap_day) WHERE (cap_day IS NOT NULL);

--
-- Name: idx_campaign_messages_created_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_created_at ON public.campaign_messages USING btree (created_at);

--
-- Name: idx_campaign_messages_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_due ON public.campaign_messages USING btree (scheduled_at) WHERE ((status = 'pending'::text) AND (wait_reason IS DISTINCT FROM 'paused'::text));

--
-- Name: idx_campaign_messages_failed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_failed ON public.campaign_messages USING btree (campaign_id, updated_at) WHERE (status = ANY (ARRAY['failed'::text, 'skipped'::text]));

--
-- Name: idx_campaign_messages_failed_recent; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_failed_recent ON public.campaign_messages USING btree (updated_at) WHERE (status = 'failed'::text);

--
-- Name: idx_campaign_messages_lead_history; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_lead_history ON public.campaign_messages USING btree (lead_id, sent_at DESC) WHERE (sent_at IS NOT NULL);

--
-- Name: idx_campaign_messages_lead_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_lead_pending ON public.campaign_messages USING btree (lead_id) WHERE (status = 'pending'::text);

--
-- Name: idx_campaign_messages_lease; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_lease ON public.campaign_messages USING btree (locked_until) WHERE (status = 'processing'::text);

--
-- Name: idx_campaign_messages_one_step_after_each; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX idx_campaign_messages_one_step_after_each ON public.campaign_messages USING btree (previous_id) WHERE (previous_id IS NOT NULL);

--
-- Name: idx_campaign_messages_open_pending; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_open_pending ON public.campaign_messages USING btree (campaign_id, wait_reason, scheduled_at) WHERE (status = 'pending'::text);

--
-- Name: idx_campaign_messages_retry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_retry ON public.campaign_messages USING btree (campaign_id, scheduled_at) WHERE ((status = 'pending'::text) AND (last_error IS NOT NULL) AND (wait_reason IS NULL));

--
-- Name: idx_campaign_messages_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_run ON public.campaign_messages USING btree (run_id) WHERE (run_id IS NOT NULL);

--
-- Name: idx_campaign_messages_sent_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_messages_sent_at ON public.campaign_messages USING btree (sent_at) INCLUDE (campaign_id) WHERE (status = 'sent'::text);

--
-- Name: idx_campaign_runs_campaign; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_campaign_runs_campaign ON public.campaign_runs USING btree (campaign_id, started_at DESC);

--
-- Name: idx_lead_replies_campaign; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_lead_replies_campaign ON public.lead_replies USING btree (campaign_id, received_at);

--
-- Name: idx_lead_replies_lead; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_lead_replies_lead ON public.lead_replies USING btree (lead_id, received_at);

--
-- Name: idx_lead_replies_received; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_lead_replies_received ON public.lead_replies USING btree (received_at);

--
-- Name: idx_lead_replies_unclassified; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_lead_replies_unclassified ON public.lead_replies USING btree (next_try_at) WHERE (kind IS NULL);

--
-- Name: idx_leads_phone; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_leads_phone ON public.leads USING btree (phone);

--
-- Name: idx_leads_phone_digits; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_leads_phone_digits ON public.leads USING btree (regexp_replace(phone, '[^0-9]'::text, ''::text, 'g'::text));

--
-- Name: idx_message_parts_first; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_message_parts_first ON public.message_parts USING btree (instance, sent_at DESC) WHERE (part_no = 0);

--
-- Name: idx_sent_events_number; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_sent_events_number ON public.sent_events USING btree (number, received_at);

--
-- Name: idx_webhook_dead_letters_dead_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_webhook_dead_letters_dead_at ON public.webhook_dead_letters USING btree (dead_at);

--
-- Name: idx_webhook_inbox_suspects; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_webhook_inbox_suspects ON public.webhook_inbox USING btree (id) WHERE (attempts > 0);

--
-- Name: campaign_messages campaign_messages_after_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaign_messages_after_delete AFTER DELETE ON public.campaign_messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_messages_notify_delete();

--
-- Name: campaign_messages campaign_messages_after_insert; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaign_messages_after_insert AFTER INSERT ON public.campaign_messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_messages_notify_insert();

--
-- Name: campaign_messages campaign_messages_after_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaign_messages_after_truncate AFTER TRUNCATE ON public.campaign_messages FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_messages_truncate_parts();

--
-- Name: campaign_messages campaign_messages_after_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaign_messages_after_update AFTER UPDATE ON public.campaign_messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.campaign_messages_notify_update();

--
-- Name: campaigns campaigns_after_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaigns_after_update AFTER UPDATE ON public.campaigns REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.campaigns_notify_resume();

--
-- Name: campaigns campaigns_mark_paused; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaigns_mark_paused AFTER UPDATE OF status ON public.campaigns FOR EACH ROW WHEN ((old.status IS DISTINCT FROM new.status)) EXECUTE FUNCTION public.campaigns_mark_paused();

--
-- Name: campaigns campaigns_wake_budget; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER campaigns_wake_budget AFTER UPDATE OF budget_usd, spent_usd ON public.campaigns FOR EACH ROW WHEN (((new.budget_usd IS DISTINCT FROM old.budget_usd) OR (new.spent_usd < old.spent_usd))) EXECUTE FUNCTION public.campaigns_wake_budget();

--
-- Name: sender_instances sender_instances_after_change; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER sender_instances_after_change AFTER DELETE OR UPDATE ON public.sender_instances FOR EACH ROW EXECUTE FUNCTION public.sender_instances_wake();

--
-- Name: campaign_messages campaign_messages_campaign_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_messages
    ADD CONSTRAINT campaign_messages_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES public.campaigns(id) ON DELETE CASCADE;

--
-- Name: campaign_messages campaign_messages_run_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_messages
    ADD CONSTRAINT campaign_messages_run_id_fkey FOREIGN KEY (run_id) REFERENCES public.campaign_runs(id) ON DELETE SET NULL;

--
-- Name: campaign_runs campaign_runs_campaign_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_runs
    ADD CONSTRAINT campaign_runs_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES public.campaigns(id) ON DELETE CASCADE;

--
-- Name: campaign_steps campaign_steps_campaign_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_steps
    ADD CONSTRAINT campaign_steps_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES public.campaigns(id) ON DELETE CASCADE;

--
-- Name: listener_campaign_days listener_campaign_days_campaign_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_campaign_days
    ADD CONSTRAINT listener_campaign_days_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES public.campaigns(id) ON DELETE CASCADE;

--
-- Name: listener_campaign_holds listener_campaign_holds_campaign_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.listener_campaign_holds
    ADD CONSTRAINT listener_campaign_holds_campaign_id_fkey FOREIGN KEY (campaign_id) REFERENCES public.campaigns(id) ON DELETE CASCADE;

--
-- PostgreSQL database dump complete
--
