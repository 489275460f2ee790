-- Every SQL statement the listener runs, named. Blocks start with `-- name --`,
-- then a comment line describing the query, then the query. Loaded by listener/queries.py.
-- Grouped by concern; a block's description comment lines are not part of its statement.

-- ==============================================================================================
-- Claiming: due rows, their leads' contexts, when the next one comes due
-- ==============================================================================================

-- claim --
-- Take up to %(limit)s due rows, with their leads' contexts, in one round trip. SKIP LOCKED lets
-- listeners share the queue without waiting on each other; the lease (locked_by, locked_until)
-- says who has a row and until when. Rows of paused campaigns stay pending and are passed
-- over: those marked `paused` are not even in the index (its predicate is repeated here so the
-- planner can use it); the NOT EXISTS catches a row inserted while its campaign was being
-- paused. listener_lead_contexts runs once for the batch's leads (not at all when nothing is
-- due), and a context it fails to give leaves the claim undone, not rows leased to no one.
WITH due AS (
    SELECT m.id
      FROM campaign_messages m
     WHERE m.status = 'pending'
       AND m.wait_reason IS DISTINCT FROM 'paused'
       AND m.scheduled_at <= now()
       AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id AND c.status = 'paused')
       -- A campaign whose due messages are being moved aside (hold_campaign_batch): its
       -- unstarted ones (a budget: those that need the LLM) are not claimed meanwhile, only
       -- to be put back one by one. One look at an empty table when no hold is under way.
       AND NOT (m.parts_sent = 0 AND EXISTS (SELECT 1 FROM listener_campaign_holds)
                AND (m.campaign_id IN (SELECT h.campaign_id FROM listener_campaign_holds h
                                        WHERE h.until > now() AND h.reason <> 'budget')
                     OR (m.parts IS NULL AND (m.content IS NULL OR btrim(m.content) = '')
                         AND m.campaign_id IN (SELECT h.campaign_id FROM listener_campaign_holds h
                                                WHERE h.until > now() AND h.reason = 'budget'))))
     ORDER BY m.scheduled_at
     LIMIT %(limit)s
       FOR UPDATE OF m SKIP LOCKED
), claimed AS (
    UPDATE campaign_messages m
       SET status = 'processing',
           attempts = m.attempts + 1,
           cap_day = CASE WHEN m.parts_sent > 0 THEN m.cap_day END,  -- a stale cap slot is dropped (migrations: cap slots)
           -- A number is kept only by a message that may have reached the lead through it, and
           -- by a follow-up step (the number its sequence began on: see sender_instance below).
           instance = CASE WHEN m.parts_sent > 0 OR m.uncertain_sends > 0 OR m.step > 1
                           THEN m.instance END,
           locked_by = %(worker)s,
           locked_until = now() + %(lease)s,
           started_at = now(),
           updated_at = now()
      FROM campaigns c
     -- The ids as an array: a probe of the primary key each. Joined to `due` as a relation,
     -- the planner may hash it against a scan of the whole table (it did at 20,000 rows).
     WHERE m.id = ANY (ARRAY(SELECT id FROM due)) AND c.id = m.campaign_id
    RETURNING m.id, m.campaign_id, m.lead_id, m.attempts, m.content, m.parts, m.parts_sent,
              m.scheduled_at, m.step, m.previous_id,
              -- A follow-up step's own prompt, else the campaign's (looked up for steps only).
              COALESCE(CASE WHEN m.step > 1 THEN (SELECT s.prompt FROM campaign_steps s
                                                   WHERE s.campaign_id = m.campaign_id
                                                     AND s.step = m.step) END,
                       c.prompt) AS campaign_prompt,
              c.model AS campaign_model,
              c.instance AS campaign_instance, c.status AS campaign_status,
              (c.send_window_start IS NOT NULL OR c.send_days IS NOT NULL
               OR c.daily_cap IS NOT NULL) AS paced,
              c.send_timezone = 'lead' AS lead_clock,
              c.gap_min_seconds, c.gap_max_seconds,
              c.fallback_models AS campaign_fallbacks, c.budget_usd AS campaign_budget,
              c.spent_usd AS campaign_spent,
              c.instances AS campaign_instances,
              CASE WHEN m.parts_sent > 0 OR m.uncertain_sends > 0 THEN m.instance END
                  AS sender_instance,
              CASE WHEN m.step > 1 THEN m.instance END AS step_instance,
              m.look_up_since,
              -- A message not begun whose lead has a reply still being classified waits for
              -- its kind, which may stop it (sequences.py): a probe of idx_lead_replies_lead.
              (m.parts_sent = 0 AND m.uncertain_sends = 0 AND m.look_up_since IS NULL
               AND EXISTS (SELECT 1 FROM lead_replies r
                            WHERE r.lead_id = m.lead_id AND r.kind IS NULL)) AS reply_unclassified,
              EXISTS (SELECT 1 FROM sender_instances s
                       WHERE s.name = ANY (c.instances) OR s.name = c.instance) AS sender_limits
), contexts AS (
    -- One row per lead whatever the function returns, so no claimed row is repeated.
    SELECT DISTINCT ON (x.lead_id) x.lead_id, x.context
      FROM (SELECT ARRAY(SELECT DISTINCT lead_id FROM claimed) AS ids) l
     CROSS JOIN LATERAL listener_lead_contexts(l.ids) x
     WHERE cardinality(l.ids) > 0
)
SELECT claimed.*, contexts.context
  FROM claimed LEFT JOIN contexts ON contexts.lead_id = claimed.lead_id

-- claim_plan --
-- Sent with the claim in one pipeline (one implicit transaction, so the setting ends with it):
-- plan the claim once, with parameters. Its plan is the same for any limit, on an empty table
-- and behind many rows due later (the due index; EXPLAIN in docs/BENCHMARKS.md), but left to
-- choose, the plan cache weighs it against the custom plans made while the table was smaller,
-- and with many rows due later it went on planning every claim. Also the claim's own now()
-- (the transaction's): the rows due after it are the ones the wake-up timer waits for, read
-- on the database's clock, whatever the listener's host clock says.
SELECT set_config('plan_cache_mode', 'force_generic_plan', true), now()

-- lead_contexts --
-- Every lead's context for a whole batch in one round trip.
SELECT lead_id, context FROM listener_lead_contexts(%(lead_ids)b::uuid[])

-- next_due --
-- When the next pending row comes due after `after` (the last claim's now(), on the database's
-- clock), to set the wake-up timer. Not after now(): a row that came due while that claim ran
-- was neither claimed nor is it in the future, and nothing else would wake the loop for it (the
-- poll would); nor after the listener's host clock, which may run ahead of the database's.
SELECT min(scheduled_at) AS next_due
  FROM campaign_messages
 WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused'
   AND scheduled_at > %(after)s

-- backlog --
-- Pending rows already due (a gauge on /metrics); paused campaigns' rows are not due.
SELECT count(*) AS due FROM campaign_messages
 WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused' AND scheduled_at <= now()

-- ==============================================================================================
-- A message's guarded writes (batched by group commit; see queue/store.py)
-- ==============================================================================================

-- store_parts --
-- Fix the text and parts of messages before their first part goes out (guarded by the lease),
-- adding the usage of the LLM calls that wrote them to the message's sums and, in the same
-- statement, their cost to the campaign's spend (what budgets are checked against). Parts are
-- stored once (a resume never stores them again): a row that has its parts already is not
-- matched, so a store run again after its answer was lost adds no usage twice (the store then
-- finds it with stored_parts). The lead's stop (opted out, or handed off to a person since the
-- message was made) is read again here, right before the first part goes: a lead who opted
-- out or was handed off while the LLM wrote is not matched either, and lead_stop says why (the
-- message then ends skipped, its LLM usage kept by finish). No column
-- it sets is in an index, and it leaves updated_at alone (the claim just set it; the record
-- sets it again), so the update is HOT where the page has room: no index entry.
-- %(processing)b is the text 'processing', a parameter so that the statement's generic plan
-- (prepared after a few runs) finds each row by its primary key from the batch's ids: given
-- the literal, it may read every row in flight from the lease index (a partial index of
-- 'processing' rows, which it takes for one row) and compare each with the whole batch, a
-- cost per message that grows with the batch (record_parts does the same).
WITH stored AS (
    UPDATE campaign_messages m
       SET generated_text = v.generated_text,
           parts = v.parts,
           prompt_tokens = m.prompt_tokens + v.prompt_tokens,
           completion_tokens = m.completion_tokens + v.completion_tokens,
           cost_usd = m.cost_usd + v.cost_usd::numeric,
           model = COALESCE(v.model, m.model),
           model_fallback = COALESCE(v.fallback, m.model_fallback)
      FROM unnest(%(ids)b::uuid[], %(texts)b::text[], %(parts)b::jsonb[],
                  %(prompt_tokens)b::bigint[], %(completion_tokens)b::bigint[],
                  %(costs)b::float8[], %(models)b::text[], %(fallbacks)b::bool[])
           AS v(id, generated_text, parts, prompt_tokens, completion_tokens, cost_usd,
                model, fallback)
     WHERE m.id = v.id AND m.status = %(processing)b AND m.locked_by = %(worker)b
       AND m.parts IS NULL
       AND NOT EXISTS (SELECT 1 FROM leads l
                        WHERE l.id = m.lead_id
                          AND (l.opted_out OR l.handoff_at >= m.created_at))
    RETURNING m.id, m.campaign_id, v.cost_usd
), spend AS (
    UPDATE campaigns c
       SET spent_usd = c.spent_usd + s.cost_usd::numeric
      FROM (SELECT campaign_id, sum(cost_usd) AS cost_usd FROM stored
             GROUP BY campaign_id HAVING sum(cost_usd) > 0) s
     WHERE c.id = s.campaign_id
)
SELECT id FROM stored

-- stored_parts --
-- Of messages store_parts did not match, those still ours whose parts are stored already (by
-- an earlier run of the same store whose answer was lost).
SELECT id FROM campaign_messages
 WHERE id = ANY (%(ids)b::uuid[]) AND status = 'processing' AND locked_by = %(worker)b
   AND parts IS NOT NULL

-- lead_stop --
-- Why a message still ours may not begin: its lead opted out since the claim, or was handed
-- off to a person since the message was made (a hand-off skips the lead's pending messages;
-- this catches the ones in flight then) (NULL: it may; no row: it is not ours any more).
-- Every check of a lead's stop before a first part (store_parts, send_wait) names the same
-- conditions; their reasons are written once, in listener_lead_stop.
SELECT listener_lead_stop(l.opted_out, l.handoff_at, m.created_at) AS stop
  FROM campaign_messages m
  JOIN leads l ON l.id = m.lead_id
 WHERE m.id = %(id)s AND m.status = 'processing' AND m.locked_by = %(worker)s

-- record_parts --
-- Record accepted parts; the last part of a message completes it as sent in the same write.
-- Guarded by state, owner and the part number expected, so nothing is recorded twice. The same
-- statement files each part in message_parts (its delivery status, from the webhooks) and,
-- for a message whose campaign has a next step, creates that step's row: due its wait after
-- this send, same lead, campaign, run and number. Its previous_id is unique, so a record run
-- again (or by another listener) never creates a second one; ON CONFLICT rather than the guard
-- alone, because a back end may put a sent message back in the queue, and its second send must
-- be recorded (NOT EXISTS was dearer: docs/BENCHMARKS.md). A part before the last changes
-- no indexed column (updated_at moves with the last), so its update is HOT. %(processing)b is
-- 'processing' as a parameter, for the plan (see store_parts).
WITH rec AS (
    UPDATE campaign_messages m
       SET parts_sent = v.part_no + 1,
           provider_message_ids = m.provider_message_ids || jsonb_build_array(v.provider_id),
           instance = COALESCE(NULLIF(v.instance, ''), m.instance),
           status = CASE WHEN v.final THEN 'sent' ELSE m.status END,
           sent_at = CASE WHEN v.final THEN now() ELSE m.sent_at END,
           last_error = CASE WHEN v.final THEN NULL ELSE m.last_error END,
           wait_reason = CASE WHEN v.final THEN NULL ELSE m.wait_reason END,
           locked_by = CASE WHEN v.final THEN NULL ELSE m.locked_by END,
           locked_until = CASE WHEN v.final THEN NULL ELSE m.locked_until END,
           updated_at = CASE WHEN v.final THEN now() ELSE m.updated_at END
      FROM unnest(%(ids)b::uuid[], %(part_nos)b::int[], %(provider_ids)b::text[],
                  %(finals)b::bool[], %(instances)b::text[])
           AS v(id, part_no, provider_id, final, instance)
     WHERE m.id = v.id AND m.status = %(processing)b AND m.locked_by = %(worker)b
       AND m.parts_sent = v.part_no
    RETURNING m.id, v.part_no, v.provider_id, v.instance, v.final, m.campaign_id, m.lead_id,
              m.run_id, m.step, m.instance AS sent_through
), filed AS (
    INSERT INTO message_parts (message_id, part_no, instance, provider_message_id)
    SELECT rec.id, rec.part_no, rec.instance, rec.provider_id
      FROM rec
     WHERE rec.provider_id <> ''
    ON CONFLICT DO NOTHING
), next_step AS (
    INSERT INTO campaign_messages (campaign_id, lead_id, run_id, step, previous_id,
                                   scheduled_at, instance)
    SELECT rec.campaign_id, rec.lead_id, rec.run_id, s.step, rec.id, now() + s.wait,
           rec.sent_through
      FROM rec
      JOIN campaign_steps s ON s.campaign_id = rec.campaign_id AND s.step = rec.step + 1
     WHERE rec.final
    ON CONFLICT (previous_id) WHERE previous_id IS NOT NULL DO NOTHING
)
SELECT id FROM rec

-- finish --
-- Leave `processing` for another state: retry later (pending with a new time), failed,
-- skipped, or handed back. `refund` gives back the attempt the claim counted. The usage of
-- LLM calls whose reply was not stored (a failed try, a re-ask) is added as in store_parts.
-- %(processing)b is 'processing' as a parameter, for the plan (see store_parts).
WITH finished AS (
    UPDATE campaign_messages m
       SET status = v.status,
           -- A wait for a reply's kind that came while the message was being put back (the
           -- classifier's wake finds only pending rows) is no wait: due at once. (IS NOT
           -- DISTINCT FROM: with `=`, a NULL reason, most finishes, ran the NOT EXISTS too.)
           scheduled_at = CASE WHEN v.wait_reason IS NOT DISTINCT FROM 'reply unclassified'
                                AND NOT EXISTS (SELECT 1 FROM lead_replies r
                                                 WHERE r.lead_id = m.lead_id AND r.kind IS NULL)
                               THEN now()
                               ELSE COALESCE(v.scheduled_at, m.scheduled_at) END,
           attempts = GREATEST(m.attempts - v.refund, 0),
           last_error = COALESCE(v.last_error, m.last_error),
           wait_reason = CASE WHEN v.wait_reason IS NOT DISTINCT FROM 'reply unclassified'
                               AND NOT EXISTS (SELECT 1 FROM lead_replies r
                                                WHERE r.lead_id = m.lead_id AND r.kind IS NULL)
                              THEN NULL
                              ELSE v.wait_reason END,
           locked_by = NULL,
           locked_until = NULL,
           prompt_tokens = m.prompt_tokens + v.prompt_tokens,
           completion_tokens = m.completion_tokens + v.completion_tokens,
           cost_usd = m.cost_usd + v.cost_usd::numeric,
           model = COALESCE(v.model, m.model),
           model_fallback = COALESCE(v.fallback, m.model_fallback),
           updated_at = now()
      FROM unnest(%(ids)b::uuid[], %(statuses)b::text[], %(scheduled)b::timestamptz[],
                  %(refunds)b::int[], %(errors)b::text[], %(reasons)b::text[],
                  %(prompt_tokens)b::bigint[], %(completion_tokens)b::bigint[],
                  %(costs)b::float8[], %(models)b::text[], %(fallbacks)b::bool[])
           AS v(id, status, scheduled_at, refund, last_error, wait_reason, prompt_tokens,
                completion_tokens, cost_usd, model, fallback)
     WHERE m.id = v.id AND m.status = %(processing)b AND m.locked_by = %(worker)b
    RETURNING m.id, m.campaign_id, v.cost_usd
), spend AS (
    UPDATE campaigns c
       SET spent_usd = c.spent_usd + s.cost_usd::numeric
      FROM (SELECT campaign_id, sum(cost_usd) AS cost_usd FROM finished
             GROUP BY campaign_id HAVING sum(cost_usd) > 0) s
     WHERE c.id = s.campaign_id
)
SELECT id FROM finished

-- step_check --
-- A follow-up step about to be written: what says whether it still goes. The sequence began
-- when its step 1's first part went out (the chain of previous_id leads back to it); a reply
-- since then is a person's unless it was classified as an away message (one still being
-- classified made the claim wait for its kind). The previous step was delivered when WhatsApp
-- acknowledged its first part's delivery (or read it). The earlier steps' texts, in order,
-- are what the LLM follows up on.
WITH RECURSIVE chain AS (
    SELECT p.id, p.previous_id, p.step, p.sent_at, COALESCE(p.generated_text, p.content) AS text,
           1 AS depth
      FROM campaign_messages p
     WHERE p.id = %(previous_id)s
    UNION ALL
    SELECT p.id, p.previous_id, p.step, p.sent_at, COALESCE(p.generated_text, p.content), c.depth + 1
      FROM chain c
      JOIN campaign_messages p ON p.id = c.previous_id
     WHERE c.depth < 100
), began AS (
    SELECT COALESCE((SELECT min(mp.sent_at) FROM message_parts mp WHERE mp.message_id = f.id),
                    f.sent_at) AS at
      FROM chain f
     ORDER BY f.depth DESC
     LIMIT 1
)
SELECT l.id IS NOT NULL AS lead_exists,
       COALESCE(l.opted_out, false) AS opted_out,
       l.handoff_at IS NOT NULL AS handed_off,
       c.stop_on_reply,
       EXISTS (SELECT 1 FROM lead_replies r, began b
                WHERE r.lead_id = %(lead_id)s AND r.received_at >= b.at
                  AND r.kind IS NOT NULL AND r.kind <> 'auto_reply') AS replied,
       EXISTS (SELECT 1 FROM message_parts mp
                WHERE mp.message_id = %(previous_id)s AND mp.part_no = 0
                  AND mp.status IN ('DELIVERY_ACK', 'READ', 'PLAYED')) AS delivered,
       (SELECT COALESCE(jsonb_agg(jsonb_build_object('step', h.step, 'sent_at', h.sent_at,
                                                     'text', h.text) ORDER BY h.depth DESC),
                        '[]'::jsonb)
          FROM chain h) AS earlier_steps
  FROM campaigns c
  LEFT JOIN leads l ON l.id = %(lead_id)s
 WHERE c.id = %(campaign_id)s

-- parts_sent --
-- How many parts of a message are recorded (after a write whose answer was lost).
SELECT parts_sent FROM campaign_messages WHERE id = %(id)s

-- note_uncertain --
-- A send of part %(part_no)s got no answer: count it against that part (guarded by the lease),
-- and keep when its first send may have left (%(window)s before now), for the lookup.
UPDATE campaign_messages
   SET uncertain_sends = CASE WHEN uncertain_part = %(part_no)s THEN uncertain_sends + 1 ELSE 1 END,
       uncertain_at = CASE WHEN uncertain_part = %(part_no)s AND uncertain_at IS NOT NULL
                           THEN uncertain_at ELSE now() - %(window)s END,
       uncertain_part = %(part_no)s,
       updated_at = now()
 WHERE id = %(id)s AND status = 'processing' AND locked_by = %(worker)s
RETURNING uncertain_sends

-- ==============================================================================================
-- Leases and the sweep
-- ==============================================================================================

-- renew_leases --
-- A live worker extends the lease of what it still holds; ids missing from the result were
-- taken from it (their lease expired) and must not be worked on any more.
UPDATE campaign_messages
   SET locked_until = now() + %(lease)b
 WHERE id = ANY (%(ids)b::uuid[]) AND status = 'processing' AND locked_by = %(worker)b
RETURNING id

-- rescue_expired --
-- Rows whose lease expired: back to pending at once. A worker that died keeps the attempt it
-- spent (failed when that was the last one). A worker still connected (its application_name
-- names it, see db.py) lost the lease to the database, not to the message: its attempt is
-- given back. A worker that died with a begun message may have had its next part in the air:
-- that part counts as a send that got no answer (since `window` before the lease ended), so it
-- is looked up before it is sent again, and never sent more than twice in all.
WITH expired AS (
    SELECT m.id,
           m.attempts - CASE WHEN o.alive THEN 1 ELSE 0 END AS attempts,
           NOT o.alive AND m.parts IS NOT NULL
               AND m.parts_sent < jsonb_array_length(m.parts) AS in_air
      FROM campaign_messages m
     CROSS JOIN LATERAL (
           SELECT EXISTS (
                   SELECT 1 FROM pg_stat_activity a
                    WHERE a.application_name = left('listener ' || m.locked_by, 63)) AS alive
           ) o
     WHERE m.status = 'processing' AND m.locked_until < now()
     ORDER BY m.locked_until
     LIMIT 1000
       FOR UPDATE OF m SKIP LOCKED
)
UPDATE campaign_messages m
   SET status = CASE WHEN e.attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       attempts = GREATEST(e.attempts, 0),
       last_error = CASE WHEN e.attempts >= %(max_attempts)s
                         THEN 'failed: the worker stopped during the last attempt (lease of '
                              || COALESCE(m.locked_by, '?') || ' expired)'
                         ELSE 'lease of ' || COALESCE(m.locked_by, '?') || ' expired; taken back'
                    END,
       scheduled_at = CASE WHEN e.attempts >= %(max_attempts)s THEN m.scheduled_at ELSE now() END,
       uncertain_sends = CASE WHEN NOT e.in_air THEN m.uncertain_sends
                              WHEN m.uncertain_part = m.parts_sent THEN m.uncertain_sends + 1
                              ELSE 1 END,
       uncertain_at = CASE WHEN NOT e.in_air THEN m.uncertain_at
                           WHEN m.uncertain_part = m.parts_sent
                                AND m.uncertain_at IS NOT NULL THEN m.uncertain_at
                           ELSE m.locked_until - %(window)s END,
       uncertain_part = CASE WHEN e.in_air THEN m.parts_sent ELSE m.uncertain_part END,
       locked_by = NULL,
       locked_until = NULL,
       updated_at = now()
  FROM expired e
 WHERE m.id = e.id
RETURNING m.id, m.status

-- sweep_old --
-- The seed's sweep: skip pending rows due longer ago than the age limit.
SELECT listener_mark_old_campaign_messages_as_skipped(%(max_age)s) AS skipped

-- ==============================================================================================
-- Pacing: windows, daily caps and gaps (the rules are SQL functions in migrations/)
-- ==============================================================================================

-- pace_start --
-- A paced campaign's window and daily cap: may this message be worked on now? Gives it a slot of
-- today's cap, which it lets go of by itself if it leaves `processing` for anything but `sent`.
SELECT go, wait_until, reason, cap_day
  FROM listener_pace_start_v2(%(campaign_id)s, %(message_id)s, now(), %(zones)s::text[])

-- ==============================================================================================
-- Sender pools: which number, its slot, its holds (the rules are SQL functions in migrations/)
-- ==============================================================================================

-- pick_sender --
-- The number of its pool a message goes through and whether it may go now; with `book`, its
-- slot is booked (sticky sender, soonest free number, gap, caps: see 0009_sender_pools.sql).
SELECT instance, go, slot_at, wait_until, reason
  FROM listener_pick_sender(%(message_id)s, %(pool)s::text[], %(own)s, %(min)s::numeric,
                            %(max)s::numeric, %(horizon)s::numeric, %(warmup)s::integer[],
                            %(default_instance)s, %(book)s, now())

-- retake_gap --
-- Book the number's next slot again (a rate-limit wait came between the booking and the send).
SELECT go, slot_at, wait_until
  FROM listener_take_gap_v2(%(instance)s, %(min)s::numeric, %(max)s::numeric,
                            %(horizon)s::numeric, now())

-- send_wait --
-- At its slot, right before a first part: the seconds until the previous send through the
-- number was answered a gap ago, the number reserved from then on (`reserved`), or, while
-- another send is on its way, when to ask again; and the lead's stop, read again after the
-- number's row is locked (as lead_stop; see listener_send_wait_v2): a lead who opted out or was
-- handed off while the message waited for its turn gets none of it, and nothing is reserved.
SELECT w.wait, w.reserved, w.stop
  FROM listener_send_wait_v2(%(instance)s, %(min)s::numeric, %(stale)s::numeric,
                             %(message_id)s) w

-- send_answered --
-- A first part through the number was answered %(ago)s seconds ago (accepted or failed): the
-- next one waits a gap from that answer.
SELECT listener_send_answered(%(instance)s, %(min)s::numeric, %(max)s::numeric, %(ago)s::numeric)

-- hold_sender --
-- Hold a number that is not connected, missing or restricted, and file the move of the
-- messages it holds up out of the claim's way (once; a listener asks the number again, not its
-- messages): no row when the state read is older than the number's last release (it is back).
-- `runner`: this listener moves them (hold_sender_batch), else another one's move is under way.
SELECT began, runner
  FROM listener_hold_sender_v2(%(instance)s, %(reason)s, %(until)s, %(backstop)s, %(seen_at)s,
                               now(), %(worker)s, %(lease)s)

-- hold_sender_batch --
-- One batch of a number's hold: up to %(limit)s of its waiting messages moved aside, or given
-- the number's new reason when aside already (each a short statement that skips rows others
-- hold); `mine`: false when the move is not ours any more (taken over, or the number released).
SELECT moved, mine
  FROM listener_defer_held_batch(%(instance)s, %(default_instance)s, %(worker)s, %(lease)s,
                                 %(limit)s)

-- hold_sender_end --
-- The move is done (its last batch moved less than a batch): how many it moved in all. No row
-- when a hold of the number was filed again meanwhile (its messages due since are moved by
-- further batches first) or the move is not ours.
DELETE FROM listener_sender_holds
 WHERE instance = %(instance)s AND runner = %(worker)s AND started_moved
RETURNING moved

-- sender_holds_to_resume --
-- Moves of a number's messages whose runner was cut off (its lease passed): those whose number
-- is still held are taken by this listener, to move the rest; the others are dropped.
WITH stale AS (
    SELECT instance FROM listener_sender_holds
     WHERE runner_until < now()
       FOR UPDATE SKIP LOCKED
), dropped AS (
    DELETE FROM listener_sender_holds h
     USING stale s
     WHERE h.instance = s.instance
       AND NOT EXISTS (SELECT 1 FROM listener_instances i
                        WHERE i.instance = h.instance AND i.held_reason IS NOT NULL)
), taken AS (
    UPDATE listener_sender_holds h
       SET runner = %(worker)s, runner_until = now() + %(lease)s
      FROM stale s
     WHERE h.instance = s.instance
       AND EXISTS (SELECT 1 FROM listener_instances i
                    WHERE i.instance = h.instance AND i.held_reason IS NOT NULL)
    RETURNING h.instance
)
SELECT t.instance, i.held_reason
  FROM taken t JOIN listener_instances i ON i.instance = t.instance

-- sender_limited --
-- Does the default number (EVOLUTION_INSTANCE, for campaigns that name none) have limits?
SELECT EXISTS (SELECT 1 FROM sender_instances WHERE name = %(instance)s)

-- held_due --
-- The held numbers due to be asked again; taken by one listener at a time (the next ask is
-- booked in the same statement).
UPDATE listener_instances i
   SET held_until = now() + %(recheck)s::interval
  FROM (SELECT instance FROM listener_instances
         WHERE held_reason IS NOT NULL AND held_until <= now()
           FOR UPDATE SKIP LOCKED) due
 WHERE i.instance = due.instance
RETURNING i.instance, i.held_reason

-- release_sender --
-- The number is back: end its hold and make the messages that waited for it due now.
SELECT listener_release_sender(%(instance)s, %(default_instance)s, now()) AS woken

-- hold_campaign_begin --
-- A hold of the whole campaign (its window, its daily cap, its budget) found by one message:
-- its other due messages that have not started wait too, moved aside in batches
-- (hold_campaign_batch) by the listener that takes the hold here. A hold of the same campaign
-- and reason already under way with a live runner is left to it (no row returned); one whose
-- runner's lease passed is taken over, with the later of the two ends.
INSERT INTO listener_campaign_holds AS h (campaign_id, reason, until, runner, runner_until)
VALUES (%(campaign_id)s, %(reason)s, %(until)s, %(worker)s, now() + %(lease)s)
ON CONFLICT (campaign_id, reason) DO UPDATE
   SET until = greatest(h.until, EXCLUDED.until),
       runner = EXCLUDED.runner,
       runner_until = EXCLUDED.runner_until
 WHERE h.runner_until IS NULL OR h.runner_until < now() OR h.runner = EXCLUDED.runner
RETURNING h.until

-- hold_campaign_batch --
-- Move up to %(limit)s of the campaign's due messages that have not started aside to the
-- hold's end, in the order they came due, and push the runner's lease on. Rows another
-- statement holds are skipped (a later batch or the claim's own hold takes them), so the
-- batch waits for no lock and holds its own only for its short time. A budget holds only the
-- messages that still need the LLM, and only while the campaign's spend is at its budget (a
-- budget raised meanwhile ends the hold). `mine`: false when the hold is no longer ours.
WITH moved AS (
    UPDATE campaign_messages m
       SET scheduled_at = %(until)s, wait_reason = %(reason)s, updated_at = now()
     WHERE m.id = ANY (ARRAY(
               SELECT b.id FROM campaign_messages b
                WHERE b.campaign_id = %(campaign_id)s AND b.status = 'pending'
                  -- (not `IS DISTINCT FROM`: that would let the planner walk the claim's
                  -- index of every campaign's due rows, see 0016)
                  AND COALESCE(b.wait_reason, '') <> 'paused'
                  AND b.scheduled_at < %(until)s AND b.parts_sent = 0
                  AND (%(reason)s <> 'budget'
                       OR (b.parts IS NULL AND (b.content IS NULL OR btrim(b.content) = '')
                           AND EXISTS (SELECT 1 FROM campaigns c
                                        WHERE c.id = %(campaign_id)s
                                          AND c.spent_usd >= c.budget_usd)))
                ORDER BY b.scheduled_at
                LIMIT %(limit)s
                  FOR UPDATE SKIP LOCKED))
       AND m.status = 'pending' AND m.parts_sent = 0
    RETURNING 1
), progress AS (
    UPDATE listener_campaign_holds h
       SET moved = h.moved + (SELECT count(*) FROM moved),
           runner_until = now() + %(lease)s
     WHERE h.campaign_id = %(campaign_id)s AND h.reason = %(reason)s AND h.runner = %(worker)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved)::integer AS moved, EXISTS (SELECT 1 FROM progress) AS mine

-- hold_campaign_end --
-- The move is done: the claim goes back to the campaign (its messages are out of the due range
-- now); returns how many were moved in all.
DELETE FROM listener_campaign_holds
 WHERE campaign_id = %(campaign_id)s AND reason = %(reason)s AND runner = %(worker)s
RETURNING moved

-- holds_to_resume --
-- Holds whose runner was cut off (its lease passed): those still in force are taken by this
-- listener, to move the rest of their messages; those that ended meanwhile are dropped.
WITH stale AS (
    SELECT campaign_id, reason FROM listener_campaign_holds
     WHERE runner_until < now()
       FOR UPDATE SKIP LOCKED
), dropped AS (
    DELETE FROM listener_campaign_holds h
     USING stale s
     WHERE h.campaign_id = s.campaign_id AND h.reason = s.reason AND h.until <= now()
), taken AS (
    UPDATE listener_campaign_holds h
       SET runner = %(worker)s, runner_until = now() + %(lease)s
      FROM stale s
     WHERE h.campaign_id = s.campaign_id AND h.reason = s.reason AND h.until > now()
    RETURNING h.campaign_id, h.reason, h.until
)
SELECT campaign_id, reason, until FROM taken

-- stats_senders --
-- Per number: today's and this hour's sends (its campaigns' time zone, as its caps count them)
-- against its caps and warm-up, its next free slot and its state, for every number a campaign
-- that is not archived names, every number with limits, and every held one. `seen_up`: it sent
-- within a day, or was found back after a hold (no listener writes down a state read `open`).
WITH names AS (
    SELECT DISTINCT unnest(listener_pool_of(c, %(default_instance)s)) AS name
      FROM campaigns c WHERE c.status <> 'archived'
    UNION
    SELECT name FROM sender_instances
    UNION
    SELECT instance FROM listener_instances WHERE held_reason IS NOT NULL
), local AS (
    SELECT n.name, listener_sender_timezone(n.name, %(default_instance)s) AS tz FROM names n
)
SELECT l.name AS instance, sent.today AS sent_today, sent.hour AS sent_hour,
       r.day_cap, s.hourly_cap AS hour_cap,
       CASE WHEN r.reason IS NOT NULL THEN r.free_at END AS cap_until,
       s.daily_cap, s.warmup_started_on, COALESCE(s.enabled, true) AS enabled,
       CASE WHEN i.next_send_at > now() THEN i.next_send_at END AS next_slot,
       i.held_reason, i.held_since, i.held_until, sent.last_day AS sent_last_day,
       (sent.last_day > 0 OR i.released_at > now() - interval '1 day') AS seen_up
  FROM local l
  LEFT JOIN sender_instances s ON s.name = l.name
  LEFT JOIN listener_instances i ON i.instance = l.name
  CROSS JOIN LATERAL (
      SELECT count(*) FILTER (
                 WHERE p.sent_at >= date_trunc('day', now() AT TIME ZONE l.tz) AT TIME ZONE l.tz
             )::integer AS today,
             count(*) FILTER (
                 WHERE p.sent_at >= date_trunc('hour', now() AT TIME ZONE l.tz) AT TIME ZONE l.tz
             )::integer AS hour,
             count(*) FILTER (WHERE p.sent_at >= now() - interval '1 day')::integer AS last_day
        FROM message_parts p
       WHERE p.instance = l.name AND p.part_no = 0
         AND p.sent_at >= least(now() - interval '1 day',
                                date_trunc('day', now() AT TIME ZONE l.tz) AT TIME ZONE l.tz)
  ) sent
  CROSS JOIN LATERAL listener_sender_room(l.name, NULL, %(warmup)s::integer[],
                                          %(default_instance)s, now()) r
 ORDER BY l.name

-- ==============================================================================================
-- The LISTEN connection and health
-- ==============================================================================================

-- listen_check --
-- Is the LISTEN connection still listening? (A half-open connection raises no error.)
SELECT count(*) AS n FROM pg_listening_channels() AS c WHERE c = %(channel)s

-- ping --
-- Does the database answer at all? (The health probe, under a short timeout.)
SELECT 1

-- ==============================================================================================
-- listener replay
-- ==============================================================================================

-- replay_named --
-- The status of each message `listener replay --id` names, to report the ones it refuses.
SELECT id, status FROM campaign_messages WHERE id = ANY (%(ids)s::uuid[])

-- replay_preview --
-- What `listener replay --dry-run` would re-queue, counted by status. Same filters as
-- replay_requeue; a NULL filter matches everything. `since` looks at when the row last changed.
SELECT status, count(*)::integer AS n
  FROM campaign_messages
 WHERE status = ANY (%(statuses)s::text[])
   AND (%(campaign_id)s::uuid IS NULL OR campaign_id = %(campaign_id)s::uuid)
   AND (%(run_id)s::uuid IS NULL OR run_id = %(run_id)s::uuid)
   AND (%(ids)s::uuid[] IS NULL OR id = ANY (%(ids)s::uuid[]))
   AND (%(since)s::interval IS NULL
        OR COALESCE(updated_at, created_at) > now() - %(since)s::interval)
 GROUP BY status

-- replay_requeue --
-- Put failed (and, if asked, skipped) messages back in the queue, due now, with every attempt
-- back. The text, parts and accepted parts stay, so the message resumes after its last
-- accepted part. FOR UPDATE re-checks the status of a row changed meanwhile, so a row that
-- is no longer failed is left alone. The update trigger sends the NOTIFY.
WITH target AS (
    SELECT id, status
      FROM campaign_messages
     WHERE status = ANY (%(statuses)s::text[])
       AND (%(campaign_id)s::uuid IS NULL OR campaign_id = %(campaign_id)s::uuid)
       AND (%(run_id)s::uuid IS NULL OR run_id = %(run_id)s::uuid)
       AND (%(ids)s::uuid[] IS NULL OR id = ANY (%(ids)s::uuid[]))
       AND (%(since)s::interval IS NULL
            OR COALESCE(updated_at, created_at) > now() - %(since)s::interval)
       FOR UPDATE
), requeued AS (
    UPDATE campaign_messages m
       SET status = 'pending',
           attempts = 0,
           scheduled_at = now(),
           last_error = NULL,
           wait_reason = NULL,
           locked_by = NULL,
           locked_until = NULL,
           look_up_since = NULL,
           updated_at = now()
      FROM target t
     WHERE m.id = t.id
    RETURNING t.status
)
SELECT status, count(*)::integer AS n FROM requeued GROUP BY status

-- ==============================================================================================
-- listener stats (the seed's step 4.2, and what waits)
-- ==============================================================================================

-- stats_processing --
-- Seed step 4.2, "tempo médio de processamento", with the window as a parameter.
SELECT now() AS now,
       AVG(EXTRACT(EPOCH FROM (sent_at - scheduled_at)))::float8 AS avg_processing_seconds,
       COUNT(*)::integer AS total_messages
  FROM campaign_messages
 WHERE status = 'sent'
   AND sent_at > now() - %(window)s::interval

-- stats_per_minute --
-- Seed step 4.2, "throughput (mensagens/minuto)": sent messages per minute, newest first.
SELECT DATE_TRUNC('minute', sent_at) AS minute,
       COUNT(*)::integer AS messages_per_minute
  FROM campaign_messages
 WHERE status = 'sent'
   AND sent_at > now() - %(window)s::interval
 GROUP BY minute
 ORDER BY minute DESC

-- stats_by_status --
-- Seed step 4.2, "taxa de erro": share by status of the messages created in the window.
SELECT status,
       COUNT(*)::integer AS count,
       ROUND(100.0 * COUNT(*) / SUM(COUNT(*)) OVER (), 2)::float8 AS percentage
  FROM campaign_messages
 WHERE created_at > now() - %(window)s::interval
 GROUP BY status

-- stats_queue --
-- Retries and the due backlog: messages created in the window that needed more than one
-- attempt, pending rows waiting for a retry (last_error set), and the due pending rows
-- (how many, and how long the oldest has waited).
SELECT (SELECT count(*)::integer FROM campaign_messages
         WHERE created_at > now() - %(window)s::interval AND attempts > 1) AS retried,
       (SELECT count(*)::integer FROM campaign_messages
         WHERE status = 'pending' AND last_error IS NOT NULL
           AND wait_reason IS NULL) AS waiting_retry,
       due.backlog AS due_backlog,
       EXTRACT(EPOCH FROM now() - due.oldest)::float8 AS oldest_due_seconds
  FROM (SELECT count(*)::integer AS backlog, min(scheduled_at) AS oldest
          FROM campaign_messages
         WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused'
           AND scheduled_at <= now()) AS due

-- stats_dead_letters --
-- Webhook events set aside because they could not be applied (listener/feedback/deadletter.py): how
-- many in the window and in all, and the latest few with their errors.
SELECT d.id, d.kind, left(d.instance, 80) AS instance, left(d.error, 300) AS error, d.dead_at,
       count(*) FILTER (WHERE d.dead_at > now() - %(window)s::interval) OVER ()::integer
           AS in_window,
       count(*) OVER ()::integer AS total
  FROM webhook_dead_letters d
 ORDER BY d.dead_at DESC, d.id DESC
 LIMIT %(limit)s

-- stats_waiting --
-- What is waiting per campaign, and why: a paused campaign, a pacing reason (window, cap,
-- gap, instance down), a retry, a future schedule, or simply due.
SELECT c.name AS campaign, c.id AS campaign_id,
       CASE WHEN c.status = 'paused' THEN 'paused'
            WHEN m.wait_reason IS NOT NULL THEN m.wait_reason
            WHEN m.last_error IS NOT NULL THEN 'retry'
            WHEN m.scheduled_at > now() THEN 'scheduled'
            ELSE 'due' END AS reason,
       count(*)::integer AS count,
       min(m.scheduled_at) AS next_at
  FROM campaign_messages m
  JOIN campaigns c ON c.id = m.campaign_id
 WHERE m.status = 'pending'
 GROUP BY 1, 2, 3
 ORDER BY 1, 3

-- stats_spend --
-- LLM spend per campaign over the messages created in the window: cost, messages the LLM wrote
-- (a model answered), messages sent, tokens, how often a fallback model answered; with the
-- campaign's running spend and budget (all time).
SELECT c.name AS campaign, c.id AS campaign_id,
       COALESCE(sum(m.cost_usd), 0)::float8 AS cost_usd,
       count(m.model)::integer AS written,
       (count(*) FILTER (WHERE m.status = 'sent'))::integer AS sent,
       COALESCE(sum(m.prompt_tokens), 0)::bigint AS prompt_tokens,
       COALESCE(sum(m.completion_tokens), 0)::bigint AS completion_tokens,
       (count(*) FILTER (WHERE m.model_fallback))::integer AS fallback_answers,
       c.spent_usd::float8 AS spent_usd, c.budget_usd::float8 AS budget_usd
  FROM campaign_messages m
  JOIN campaigns c ON c.id = m.campaign_id
 WHERE m.created_at > now() - %(window)s::interval
 GROUP BY c.id
HAVING count(m.model) > 0 OR sum(m.cost_usd) > 0 OR c.budget_usd IS NOT NULL
 ORDER BY 3 DESC, 1

-- stats_models --
-- The models that answered, over the messages created in the window: messages, how many of
-- those answers came from a fallback model, their cost and tokens.
SELECT m.model, count(*)::integer AS messages,
       (count(*) FILTER (WHERE m.model_fallback))::integer AS fallback_answers,
       sum(m.cost_usd)::float8 AS cost_usd,
       sum(m.prompt_tokens + m.completion_tokens)::bigint AS tokens
  FROM campaign_messages m
 WHERE m.created_at > now() - %(window)s::interval AND m.model IS NOT NULL
 GROUP BY m.model
 ORDER BY 2 DESC, 1

-- ==============================================================================================
-- The sandbox sender and listener demo
-- ==============================================================================================

-- sandbox_send --
-- The sandbox sender's "delivery": one row per accepted part.
INSERT INTO sandbox_outbox (instance, number, text, provider_message_id)
SELECT * FROM unnest(%(instances)b::text[], %(numbers)b::text[], %(texts)b::text[],
                     %(provider_ids)b::text[])

-- demo_guard --
-- Before the demo runs its sandbox listener on a database it does not own: other listeners
-- connected (they would send the sample messages for real) and messages already queued (the
-- sandbox would "send" them).
SELECT (SELECT count(*)::integer FROM pg_stat_activity
         WHERE datname = current_database() AND starts_with(application_name, 'listener')
           AND pid <> pg_backend_pid()) AS listeners,
       (SELECT count(*)::integer FROM campaign_messages
         WHERE status IN ('pending', 'processing')) AS queued

-- demo_campaign --
-- The demo's sample campaign.
INSERT INTO campaigns (name, prompt) VALUES (%(name)s, %(prompt)s) RETURNING id

-- demo_step --
-- The demo campaign's follow-up: step 2, seconds after step 1 (days, in a real campaign).
INSERT INTO campaign_steps (campaign_id, step, wait, prompt)
VALUES (%(campaign_id)s, 2, %(wait)s, %(prompt)s)

-- demo_handoff --
-- Who a hand-off names and what they wrote (the demo prints it).
SELECT l.name, l.phone, r.text, r.kind
  FROM lead_replies r JOIN leads l ON l.id = r.lead_id
 WHERE r.id = %(reply_id)s

-- demo_run --
-- The demo campaign's run, whose counts (kept by the trigger) drive the progress bar.
INSERT INTO campaign_runs (campaign_id) VALUES (%(campaign_id)s) RETURNING id

-- demo_leads --
-- The demo's sample leads, ids chosen by the caller.
INSERT INTO leads (id, name, phone, company, city, segment, notes, opted_out)
SELECT * FROM unnest(%(ids)s::uuid[], %(names)s::text[], %(phones)s::text[],
                     %(companies)s::text[], %(cities)s::text[], %(segments)s::text[],
                     %(notes)s::text[], %(opted_out)s::boolean[])

-- demo_messages --
-- One message per demo lead, in one statement (so one NOTIFY); content NULL = written by the LLM.
INSERT INTO campaign_messages (campaign_id, run_id, lead_id, content)
SELECT %(campaign_id)s::uuid, %(run_id)s::uuid, v.lead_id, v.content
  FROM unnest(%(lead_ids)s::uuid[], %(contents)s::text[]) AS v(lead_id, content)

-- demo_progress --
-- How far the demo's run is: its counts, kept by the campaign_messages triggers.
SELECT total_count, sent_count, failed_count, skipped_count
  FROM campaign_runs WHERE id = %(run_id)s

-- demo_samples --
-- A few parts the sandbox sender delivered for the demo's run, in delivery order.
SELECT o.number, o.text
  FROM sandbox_outbox o
 WHERE o.provider_message_id IN (
           SELECT jsonb_array_elements_text(m.provider_message_ids)
             FROM campaign_messages m WHERE m.run_id = %(run_id)s)
 ORDER BY o.id
 LIMIT %(limit)s

-- demo_cleanup --
-- Remove what the demo created: its outbox rows, messages, replies, leads, run and campaign.
WITH messages AS (
    DELETE FROM campaign_messages WHERE campaign_id = %(campaign_id)s
    RETURNING lead_id, provider_message_ids
), outbox AS (
    DELETE FROM sandbox_outbox
     WHERE provider_message_id IN (
               SELECT jsonb_array_elements_text(provider_message_ids) FROM messages)
), replies AS (
    DELETE FROM lead_replies WHERE lead_id IN (SELECT lead_id FROM messages)
), gone_leads AS (
    DELETE FROM leads WHERE id IN (SELECT lead_id FROM messages)
)
DELETE FROM campaigns WHERE id = %(campaign_id)s

-- ==============================================================================================
-- The status page (`GET /` on the metrics port, listener/web/). Every query reads only
-- open rows, the last hour or day of sent rows, or trigger-kept counts, through the indexes of
-- migrations 0004, 0008 and 0021, so the page costs the same with millions of finished rows.
-- ==============================================================================================

-- status_campaigns --
-- The campaigns to show: those with queued messages first, then the newest not archived; with
-- their pacing and, for a capped one, the slots its messages hold in today's cap (the day as
-- listener_pace_start counts it: a window crossing midnight counts with the evening before).
WITH flagged AS (
    -- One index probe per campaign, however many rows are queued.
    SELECT c.*, EXISTS (SELECT 1 FROM campaign_messages m
                         WHERE m.campaign_id = c.id
                           AND m.status IN ('pending', 'processing')) AS queued
      FROM campaigns c
), shown AS (
    SELECT * FROM flagged f
     WHERE f.queued OR f.status <> 'archived'
     ORDER BY f.queued DESC, f.created_at DESC
     LIMIT %(limit)s
), zoned AS (
    -- A campaign in its leads' zones ('lead') is shown on São Paulo's clock.
    SELECT s.*, CASE WHEN s.send_timezone = 'lead' THEN 'America/Sao_Paulo'
                     ELSE s.send_timezone END AS zone
      FROM shown s
), days AS (
    SELECT s.*,
           CASE WHEN s.send_window_start IS NOT NULL
                     AND s.send_window_end <= s.send_window_start
                     AND (now() AT TIME ZONE s.zone)::time < s.send_window_end
                THEN (now() AT TIME ZONE s.zone)::date - 1
                ELSE (now() AT TIME ZONE s.zone)::date END AS cap_today
      FROM zoned s
)
SELECT d.id, d.name, d.status, d.instance, d.queued, d.daily_cap, d.cap_today,
       d.send_window_start, d.send_window_end, d.send_timezone, d.send_days,
       d.gap_min_seconds, d.gap_max_seconds,
       listener_window_opens(d.send_window_start, d.send_window_end, d.zone,
                             d.send_days, now()) AS window_opens,
       CASE WHEN d.daily_cap IS NULL THEN NULL ELSE (
           SELECT count(*)::integer FROM campaign_messages m
            WHERE m.campaign_id = d.id AND m.cap_day = d.cap_today
              AND (m.status IN ('processing', 'sent') OR m.parts_sent > 0)) END AS cap_used,
       runs.total, runs.sent, runs.failed, runs.skipped, runs.runs, runs.running
  FROM days d
  CROSS JOIN LATERAL (
      SELECT COALESCE(sum(r.total_count), 0)::bigint AS total,
             COALESCE(sum(r.sent_count), 0)::bigint AS sent,
             COALESCE(sum(r.failed_count), 0)::bigint AS failed,
             COALESCE(sum(r.skipped_count), 0)::bigint AS skipped,
             count(*)::integer AS runs,
             count(*) FILTER (WHERE r.status = 'running')::integer AS running
        FROM campaign_runs r WHERE r.campaign_id = d.id) AS runs
 ORDER BY d.queued DESC, d.created_at DESC

-- status_open --
-- Queued messages per campaign and why they wait, as `listener stats` names the reasons
-- (a paused campaign, a pacing or hold reason, a retry, a future schedule, or simply due);
-- `in flight` for processing rows. The pending rows are counted from the indexes alone
-- (migration 0021), the retries apart and taken out of the due and scheduled rows they are
-- among; the rows in flight, few (what the listeners hold), through the lease index.
WITH open AS (
    SELECT m.campaign_id, 'pending' AS status, m.wait_reason, m.scheduled_at <= now() AS due,
           count(*) AS n, min(m.scheduled_at) AS next_at
      FROM campaign_messages m
     WHERE m.status = 'pending'
     GROUP BY 1, 3, 4
    UNION ALL
    SELECT m.campaign_id, 'processing', NULL, NULL, count(*), min(m.scheduled_at)
      FROM campaign_messages m
     WHERE m.status = 'processing'
     GROUP BY 1
), retry AS (
    SELECT m.campaign_id, m.scheduled_at <= now() AS due, count(*) AS n,
           min(m.scheduled_at) AS next_at
      FROM campaign_messages m
     WHERE m.status = 'pending' AND m.last_error IS NOT NULL AND m.wait_reason IS NULL
     GROUP BY 1, 2
), reasons AS (
    SELECT o.campaign_id,
           CASE WHEN o.status = 'processing' THEN 'in flight'
                WHEN c.status = 'paused' THEN 'paused'
                WHEN o.wait_reason IS NOT NULL THEN o.wait_reason
                WHEN o.due THEN 'due'
                ELSE 'scheduled' END AS reason,
           o.n - CASE WHEN o.status = 'pending' AND o.wait_reason IS NULL
                           AND c.status <> 'paused'
                      THEN COALESCE(r.n, 0) ELSE 0 END AS n,
           o.next_at
      FROM open o
      JOIN campaigns c ON c.id = o.campaign_id
      LEFT JOIN retry r ON r.campaign_id = o.campaign_id AND r.due = o.due
    UNION ALL
    SELECT r.campaign_id, 'retry', r.n, r.next_at
      FROM retry r
      JOIN campaigns c ON c.id = r.campaign_id
     WHERE c.status <> 'paused'
)
SELECT campaign_id, reason, sum(n)::integer AS count, min(next_at) AS next_at
  FROM reasons
 GROUP BY 1, 2
HAVING sum(n) > 0

-- status_queue --
-- The queue as a whole: the clock, due rows (not paused) and the oldest of them.
SELECT now() AS now, count(*)::integer AS due_now, min(scheduled_at) AS oldest_due
  FROM campaign_messages
 WHERE status = 'pending' AND wait_reason IS DISTINCT FROM 'paused'
   AND scheduled_at <= now()

-- status_in_flight --
-- Processing rows per listener (its locked_by), with the oldest claim and the latest lease.
SELECT locked_by, count(*)::integer AS count, min(started_at) AS since,
       max(locked_until) AS lease_until
  FROM campaign_messages
 WHERE status = 'processing'
 GROUP BY locked_by
 ORDER BY locked_by

-- status_throughput --
-- Messages sent per minute over the last hour (index only), oldest first.
SELECT date_trunc('minute', sent_at) AS minute, count(*)::integer AS count
  FROM campaign_messages
 WHERE status = 'sent' AND sent_at > now() - interval '1 hour'
 GROUP BY 1
 ORDER BY 1

-- status_dead_letters --
-- Webhook events set aside because they could not be applied, newest first, with how many in
-- all and in the last day.
SELECT d.id, d.kind, left(d.instance, 80) AS instance, left(d.error, 300) AS error, d.dead_at,
       count(*) FILTER (WHERE d.dead_at > now() - interval '1 day') OVER ()::integer AS last_day,
       count(*) OVER ()::integer AS total
  FROM webhook_dead_letters d
 ORDER BY d.dead_at DESC, d.id DESC
 LIMIT %(limit)s

-- status_failures --
-- The last failures with their reasons: failed messages, and pending ones waiting for a retry,
-- newest first, with the campaign and the lead's phone (masked by the page).
(SELECT m.id, m.status, COALESCE(m.updated_at, m.created_at) AS updated_at, m.attempts,
        m.last_error, c.name AS campaign, l.phone
   FROM campaign_messages m
   JOIN campaigns c ON c.id = m.campaign_id
   LEFT JOIN leads l ON l.id = m.lead_id
  WHERE m.status = 'failed'
  ORDER BY m.updated_at DESC
  LIMIT %(limit)s)
UNION ALL
(SELECT m.id, 'retry', COALESCE(m.updated_at, m.created_at), m.attempts, m.last_error, c.name, l.phone
   FROM campaign_messages m
   JOIN campaigns c ON c.id = m.campaign_id
   LEFT JOIN leads l ON l.id = m.lead_id
  WHERE m.status = 'pending' AND m.last_error IS NOT NULL AND m.wait_reason IS NULL
  ORDER BY m.updated_at DESC NULLS LAST
  LIMIT %(limit)s)

-- status_instances --
-- Every sender instance the database knows: the gap table's rows (next free slot, messages
-- refused while waiting for it), and the instances campaigns name.
SELECT i.instance, i.next_send_at, i.updated_at, i.refused, i.refused_for
  FROM listener_instances i
UNION ALL
SELECT DISTINCT c.instance, NULL::timestamptz, NULL::timestamptz, 0, NULL::timestamptz
  FROM campaigns c
 WHERE c.instance IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM listener_instances i WHERE i.instance = c.instance)

-- status_funnel --
-- The funnel of the messages sent in the last day, per campaign, with the counts of the last
-- hour and day the campaigns' rows show (the same rows, so one pass instead of two).
SELECT m.campaign_id,
       count(*) FILTER (WHERE m.sent_at > now() - interval '1 hour')::integer AS last_hour,
       count(*)::integer AS last_day,
       count(*)::integer AS sent,
       count(m.delivered_at)::integer AS delivered,
       count(m.read_at)::integer AS read,
       count(m.replied_at)::integer AS replied,
       count(*) FILTER (WHERE l.opted_out)::integer AS opted_out,
       count(m.delivery_error)::integer AS errors
  FROM campaign_messages m
  LEFT JOIN leads l ON l.id = m.lead_id
 WHERE m.status = 'sent' AND m.sent_at > now() - interval '1 day'
 GROUP BY m.campaign_id

-- status_replies --
-- The replies received in the last day per shown campaign (of the message each answers), by
-- kind, those not classified yet, and the leads they handed off: a probe of
-- idx_lead_replies_campaign per campaign.
SELECT r.campaign_id,
       count(*)::integer AS replies,
       count(*) FILTER (WHERE r.kind = 'interested')::integer AS interested,
       count(*) FILTER (WHERE r.kind = 'question')::integer AS question,
       count(*) FILTER (WHERE r.kind = 'not_now')::integer AS not_now,
       count(*) FILTER (WHERE r.kind = 'not_interested')::integer AS not_interested,
       count(*) FILTER (WHERE r.kind = 'opt_out')::integer AS opt_out,
       count(*) FILTER (WHERE r.kind = 'auto_reply')::integer AS auto_reply,
       count(*) FILTER (WHERE r.kind = 'wrong_person')::integer AS wrong_person,
       count(*) FILTER (WHERE r.kind = 'other')::integer AS other,
       count(*) FILTER (WHERE r.kind IS NULL)::integer AS unclassified,
       count(DISTINCT r.lead_id) FILTER (WHERE r.kind IN ('interested', 'question')
                                          AND l.handoff_at IS NOT NULL)::integer AS handed_off
  FROM lead_replies r
  LEFT JOIN leads l ON l.id = r.lead_id
 WHERE r.campaign_id = ANY (%(ids)s::uuid[]) AND r.received_at > now() - interval '1 day'
 GROUP BY r.campaign_id

-- status_budgets --
-- Each shown campaign's budget and the running spend checked against it.
SELECT c.id AS campaign_id, c.budget_usd::float8 AS budget_usd, c.spent_usd::float8 AS spent_usd
  FROM campaigns c WHERE c.id = ANY (%(ids)s::uuid[])

-- status_pools --
-- The numbers of each shown campaign's pool.
SELECT c.id AS campaign_id, c.instances
  FROM campaigns c WHERE c.id = ANY (%(ids)s::uuid[]) AND c.instances IS NOT NULL

-- status_instance_sends --
-- Messages (first parts) sent through each named instance in the last hour and day, one index
-- range scan per instance.
SELECT i.name AS instance, s.last_hour, s.last_day
  FROM unnest(%(names)s::text[]) AS i(name)
  CROSS JOIN LATERAL (
      SELECT count(*) FILTER (WHERE p.sent_at > now() - interval '1 hour')::integer AS last_hour,
             count(*)::integer AS last_day
        FROM message_parts p
       WHERE p.instance = i.name AND p.part_no = 0 AND p.sent_at > now() - interval '1 day') s

-- status_sender_instances --
-- Each number's own caps, warm-up and whether it is enabled.
SELECT s.name, s.daily_cap, s.hourly_cap, s.warmup_started_on, s.enabled
  FROM sender_instances s ORDER BY s.name

-- status_begin --
-- The page reads one snapshot, so its counts agree with each other; it never writes.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- status_timeout --
-- A page that cannot be answered quickly gives up instead of holding a pool connection.
SET LOCAL statement_timeout = '2s'

-- ==============================================================================================
-- Delivery feedback: Evolution's webhooks (listener/feedback/inbox.py, restrictions.py; functions in migrations/functions)
-- ==============================================================================================

-- webhook_inbox --
-- The events of a batch of webhook requests, stored before they are answered: statuses and
-- replies into the inbox (applied off the request path), `send.message` events straight into
-- sent_events. Plain inserts: they wait for no lock the sender or the applier holds. An event
-- without a time of its own (a status) is at the row's receipt: Evolution's `date_time` is not
-- a true clock (0019_true_event_times.sql).
WITH sent AS (
    INSERT INTO sent_events (instance, provider_message_id, number, text)
    SELECT * FROM unnest(%(sent_instances)b::text[], %(sent_ids)b::text[],
                         %(sent_numbers)b::text[], %(sent_texts)b::text[])
    ON CONFLICT DO NOTHING
)
INSERT INTO webhook_inbox (kind, instance, provider_message_id, status, phone, opt_out, at, text)
SELECT u.kind, u.instance, u.id, u.status, u.phone, u.opt_out, COALESCE(u.at, now()), u.text
  FROM unnest(%(kinds)b::text[], %(instances)b::text[], %(ids)b::text[],
              %(statuses)b::text[], %(phones)b::text[], %(opt_outs)b::boolean[],
              %(ats)b::timestamptz[], %(texts)b::text[])
       AS u(kind, instance, id, status, phone, opt_out, at, text)

-- webhook_apply_statuses --
-- The oldest statuses of the inbox: applied (forward only, ERROR final, early ones kept) and
-- deleted in one transaction; the instances that reported ERROR among them, and how many times
-- were clamped (later than their receipt, before their part's send).
SELECT taken, error_instances, clamped_future, clamped_before_send
  FROM apply_inbox_statuses(%(limit)s)

-- webhook_apply_status_ids --
-- These statuses of the inbox (a half of a batch that failed, or one suspect alone): applied
-- and deleted in one transaction; the instances that reported ERROR among them, and how many
-- times were clamped (as webhook_apply_statuses).
SELECT taken, error_instances, clamped_future, clamped_before_send
  FROM apply_inbox_status_ids(%(ids)s::bigint[])

-- webhook_take_replies --
-- The oldest fresh replies of the inbox (suspects are tried alone apart), deleted in the
-- caller's transaction, which applies them; each at its receipt at the latest (and whether its
-- own time was later: clamped).
DELETE FROM webhook_inbox w
 WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                 WHERE b.kind = 'reply' AND b.attempts = 0
                 ORDER BY b.id
                 LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
RETURNING w.id, w.phone, w.opt_out, LEAST(w.at, w.received_at), w.instance, w.text,
          w.at > w.received_at

-- webhook_take_reply_ids --
-- These replies of the inbox (a half of a batch that failed, or one suspect alone), deleted in
-- the caller's transaction, which applies them; the same columns as webhook_take_replies.
DELETE FROM webhook_inbox w
 WHERE w.id IN (SELECT b.id FROM webhook_inbox b
                 WHERE b.id = ANY (%(ids)s::bigint[]) AND b.kind = 'reply'
                   FOR UPDATE SKIP LOCKED)
RETURNING w.id, w.phone, w.opt_out, LEAST(w.at, w.received_at), w.instance, w.text,
          w.at > w.received_at

-- webhook_fresh_ids --
-- The ids of a batch that failed as a whole, oldest first: split until the bad row stands alone.
SELECT id FROM webhook_inbox
 WHERE kind = %(kind)s AND attempts = 0
 ORDER BY id
 LIMIT %(limit)s

-- webhook_suspects --
-- Rows that failed alone before, tried again alone (idx_webhook_inbox_suspects).
SELECT id, kind FROM webhook_inbox WHERE attempts > 0 ORDER BY id LIMIT %(limit)s

-- webhook_inbox_failed --
-- A row failed alone: its attempt counted; at %(max)s attempts, moved to webhook_dead_letters.
SELECT dead, kind, instance FROM webhook_inbox_failed(%(id)s, %(error)s, %(max)s)

-- webhook_early --
-- Kept statuses whose part is now recorded are applied; those older than 10 minutes dropped;
-- the times moved up to their part's send.
SELECT applied, dropped, clamped FROM apply_early_delivery_statuses()

-- webhook_reply --
-- A lead wrote to us: the reply kept in lead_replies (classified later, unless the opt-out
-- words said it), last_reply_at, replied_at, and an opt-out's skips (its time clamped to the
-- lead's latest send when before it).
SELECT lead_id, reply_id, skipped, clamped
  FROM apply_reply_v2(%(phones)s::text[], %(phone)s, %(opt_out)s, %(at)s, %(instance)s, %(text)s)

-- ==============================================================================================
-- Replies understood: the classifier's reads and writes (listener/feedback/replies.py)
-- ==============================================================================================

-- replies_take --
-- Replies whose kind is not known yet and whose turn came, oldest first: taken for `lease`
-- (another listener passes them over meanwhile; a listener that dies leaves them to the next
-- turn after it), with the text of the message each answers.
UPDATE lead_replies r
   SET attempts = r.attempts + 1,
       next_try_at = now() + %(lease)s
 WHERE r.id IN (SELECT x.id FROM lead_replies x
                 WHERE x.kind IS NULL AND x.next_try_at <= now()
                 ORDER BY x.next_try_at
                 LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
RETURNING r.id, r.lead_id, r.campaign_id, r.text, r.attempts,
          (SELECT COALESCE(m.generated_text, m.content) FROM campaign_messages m
            WHERE m.id = r.message_id) AS answered,
          (SELECT c.name FROM campaigns c WHERE c.id = r.campaign_id) AS campaign_name

-- reply_classified --
-- A reply's kind, applied (what it stops, the hand-off and its NOTIFY): see the function.
SELECT lead_id, kind, skipped, handed_off
  FROM reply_classified(%(id)s, %(kind)s, %(model)s, %(prompt_tokens)s, %(completion_tokens)s,
                        %(cost)s::numeric, %(error)s)

-- reply_unclassified --
-- A try to classify a reply failed: tried again after `delay`, its call's usage kept.
SELECT reply_unclassified(%(id)s, %(error)s, %(delay)s, %(prompt_tokens)s,
                          %(completion_tokens)s, %(cost)s::numeric)

-- replies_due --
-- When the next unclassified reply's turn comes (none: NULL).
SELECT min(next_try_at) FROM lead_replies WHERE kind IS NULL

-- prune_sent_events --
-- `send.message` events older than a day settle nothing any more.
DELETE FROM sent_events WHERE received_at < now() - interval '1 day'

-- find_sent --
-- A part whose send got no answer, found among the `send.message` events since its first try.
SELECT provider_message_id FROM sent_events
 WHERE instance = %(instance)s AND number = ANY (%(numbers)s::text[]) AND text = %(text)s
   AND received_at >= %(since)s
 ORDER BY received_at
 LIMIT 1

-- looked_up --
-- A row the old system left `processing` was looked up: nothing went out (send it now), or
-- it did (its parts become the text found, recorded next). Guarded by the lease.
UPDATE campaign_messages
   SET look_up_since = NULL, updated_at = now()
 WHERE id = %(id)s AND status = 'processing' AND locked_by = %(worker)s
RETURNING id

-- uncertain_of --
-- The part of a message whose send got no answer, and since when (for the lookup).
SELECT uncertain_part, uncertain_sends, uncertain_at FROM campaign_messages WHERE id = %(id)s

-- stats_funnel --
-- The delivery funnel per campaign over the messages sent in the window (listener stats):
-- sent, acknowledged by the server, delivered, read, replied, opted out after it, WhatsApp
-- errors, and the median time from sent to delivered and to read.
SELECT c.name AS campaign, c.id AS campaign_id,
       count(*) AS sent,
       count(*) FILTER (WHERE m.delivered_at IS NOT NULL OR m.read_at IS NOT NULL
                          OR EXISTS (SELECT 1 FROM message_parts p
                                      WHERE p.message_id = m.id
                                        AND p.status IN ('SERVER_ACK', 'DELIVERY_ACK', 'READ',
                                                         'PLAYED'))) AS acked,
       count(m.delivered_at) AS delivered,
       count(m.read_at) AS read,
       count(m.replied_at) AS replied,
       count(*) FILTER (WHERE l.opted_out AND l.opted_out_at >= m.sent_at) AS opted_out,
       count(m.delivery_error) AS errors,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM m.delivered_at - m.sent_at)) AS median_delivery_seconds,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM m.read_at - m.sent_at)) AS median_read_seconds
  FROM campaign_messages m
  JOIN campaigns c ON c.id = m.campaign_id
  LEFT JOIN leads l ON l.id = m.lead_id
 WHERE m.status = 'sent' AND m.sent_at >= now() - %(window)s
 GROUP BY c.id, c.name
 ORDER BY c.name

-- stats_replies --
-- Replies received in the window per campaign (of the message each answers), by kind; those
-- not classified yet; the leads they handed off.
SELECT c.name AS campaign, r.campaign_id,
       (SELECT jsonb_object_agg(k.kind, k.n)
          FROM (SELECT x.kind, count(*) AS n FROM lead_replies x
                 WHERE x.campaign_id IS NOT DISTINCT FROM r.campaign_id
                   AND x.received_at >= now() - %(window)s AND x.kind IS NOT NULL
                 GROUP BY x.kind) k) AS kinds,
       count(*) FILTER (WHERE r.kind IS NULL) AS unclassified,
       count(DISTINCT r.lead_id) FILTER (WHERE r.kind IN ('interested', 'question')
                                          AND l.handoff_at IS NOT NULL) AS handed_off
  FROM lead_replies r
  LEFT JOIN campaigns c ON c.id = r.campaign_id
  LEFT JOIN leads l ON l.id = r.lead_id
 WHERE r.received_at >= now() - %(window)s
 GROUP BY c.name, r.campaign_id
 ORDER BY c.name NULLS LAST

-- restrict_check --
-- The last 10 first parts sent through an instance: how many WhatsApp reported ERROR, and how
-- many are still PENDING after %(alarm)s (a number restricted from new chats says only that).
-- Only parts sent within %(window)s (the hold plus the alarm) count: once the hold they caused
-- is over, they do not hold the number again; the parts it sends next are judged instead.
WITH recent AS (
    SELECT status, status_at FROM message_parts
     WHERE instance = %(instance)s AND part_no = 0 AND sent_at > now() - %(window)s
     ORDER BY sent_at DESC
     LIMIT 10
)
SELECT count(*) FILTER (WHERE status = 'ERROR') AS errors,
       count(*) FILTER (WHERE status = 'PENDING' AND status_at < now() - %(alarm)s) AS stale
  FROM recent

-- restrict_check_all --
-- The same for every instance with a first part sent within %(window)s, whichever listener sent
-- it: the instances come from a skip scan of idx_message_parts_first (one short index probe per
-- instance), so a restarted listener still sees a number whose parts stay PENDING.
WITH RECURSIVE inst AS (
    (SELECT instance FROM message_parts WHERE part_no = 0 ORDER BY instance LIMIT 1)
    UNION ALL
    SELECT (SELECT p.instance FROM message_parts p
             WHERE p.part_no = 0 AND p.instance > inst.instance
             ORDER BY p.instance LIMIT 1)
      FROM inst
     WHERE inst.instance IS NOT NULL
)
SELECT inst.instance, r.errors, r.stale
  FROM inst
 CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'ERROR') AS errors,
           count(*) FILTER (WHERE status = 'PENDING' AND status_at < now() - %(alarm)s) AS stale
      FROM (SELECT status, status_at FROM message_parts
             WHERE instance = inst.instance AND part_no = 0 AND sent_at > now() - %(window)s
             ORDER BY sent_at DESC
             LIMIT 10) recent
 ) r
 WHERE inst.instance IS NOT NULL AND r.errors + r.stale > 0
 ORDER BY inst.instance

-- webhook_instances --
-- The instances campaigns that are not archived send through (`listener webhook set`): each
-- one's `instance` and every number of its pool (`instances`).
SELECT DISTINCT n.instance
  FROM campaigns c
 CROSS JOIN LATERAL unnest(array_prepend(c.instance, COALESCE(c.instances, '{}'))) AS n(instance)
 WHERE n.instance IS NOT NULL AND c.status <> 'archived'
 ORDER BY n.instance
