-- Every SQL statement the listener runs, named. Blocks start with `-- name --`,
-- then a comment line describing the query, then the query. Loaded by listener/queries.py.

-- claim --
-- Take up to %(limit)s due rows. SKIP LOCKED lets listeners share the queue without waiting on
-- each other; the lease (locked_by, locked_until) says who has a row and until when. Rows of
-- paused campaigns stay pending and are passed over.
WITH due AS (
    SELECT m.id
      FROM campaign_messages m
     WHERE m.status = 'pending'
       AND m.scheduled_at <= now()
       AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id AND c.status = 'paused')
     ORDER BY m.scheduled_at
     LIMIT %(limit)s
       FOR UPDATE OF m SKIP LOCKED
)
UPDATE campaign_messages m
   SET status = 'processing',
       attempts = m.attempts + 1,
       locked_by = %(worker)s,
       locked_until = now() + %(lease)s,
       started_at = now(),
       updated_at = now()
  FROM due, campaigns c
 WHERE m.id = due.id AND c.id = m.campaign_id
RETURNING m.id, m.campaign_id, m.lead_id, m.run_id, m.attempts, m.content, m.parts,
          m.parts_sent, m.provider_message_ids, m.scheduled_at,
          c.prompt AS campaign_prompt, c.model AS campaign_model,
          c.instance AS campaign_instance, c.status AS campaign_status, c.name AS campaign_name

-- lead_contexts --
-- Every lead's context for a whole batch in one round trip.
SELECT lead_id, context FROM get_lead_full_context(%(lead_ids)s::uuid[])

-- store_parts --
-- Fix the text and parts of messages before their first part goes out (guarded by the lease).
UPDATE campaign_messages m
   SET generated_text = v.generated_text,
       parts = v.parts,
       updated_at = now()
  FROM unnest(%(ids)s::uuid[], %(texts)s::text[], %(parts)s::jsonb[]) AS v(id, generated_text, parts)
 WHERE m.id = v.id AND m.status = 'processing' AND m.locked_by = %(worker)s
RETURNING m.id

-- record_parts --
-- Record accepted parts; the last part of a message completes it as sent in the same write.
-- Guarded by state, owner and the part number expected, so nothing is recorded twice.
UPDATE campaign_messages m
   SET parts_sent = v.part_no + 1,
       provider_message_ids = m.provider_message_ids || jsonb_build_array(v.provider_id),
       status = CASE WHEN v.final THEN 'sent' ELSE m.status END,
       sent_at = CASE WHEN v.final THEN now() ELSE m.sent_at END,
       last_error = CASE WHEN v.final THEN NULL ELSE m.last_error END,
       locked_by = CASE WHEN v.final THEN NULL ELSE m.locked_by END,
       locked_until = CASE WHEN v.final THEN NULL ELSE m.locked_until END,
       updated_at = now()
  FROM unnest(%(ids)s::uuid[], %(part_nos)s::int[], %(provider_ids)s::text[], %(finals)s::bool[])
       AS v(id, part_no, provider_id, final)
 WHERE m.id = v.id AND m.status = 'processing' AND m.locked_by = %(worker)s
   AND m.parts_sent = v.part_no
RETURNING m.id

-- finish --
-- Leave `processing` for another state: retry later (pending with a new time), failed,
-- skipped, or handed back. `refund` gives back the attempt the claim counted.
UPDATE campaign_messages m
   SET status = v.status,
       scheduled_at = COALESCE(v.scheduled_at, m.scheduled_at),
       attempts = GREATEST(m.attempts - v.refund, 0),
       last_error = COALESCE(v.last_error, m.last_error),
       locked_by = NULL,
       locked_until = NULL,
       updated_at = now()
  FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(scheduled)s::timestamptz[],
              %(refunds)s::int[], %(errors)s::text[])
       AS v(id, status, scheduled_at, refund, last_error)
 WHERE m.id = v.id AND m.status = 'processing' AND m.locked_by = %(worker)s
RETURNING m.id

-- renew_leases --
-- A live worker extends the lease of what it still holds; ids missing from the result were
-- taken from it (their lease expired) and must not be worked on any more.
UPDATE campaign_messages
   SET locked_until = now() + %(lease)s
 WHERE id = ANY (%(ids)s::uuid[]) AND status = 'processing' AND locked_by = %(worker)s
RETURNING id

-- rescue_expired --
-- Rows whose worker died: back to pending at once, keeping the attempt the dead worker spent,
-- or failed when that was the last one.
UPDATE campaign_messages
   SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       last_error = CASE WHEN attempts >= %(max_attempts)s
                         THEN 'failed: the worker stopped during the last attempt (lease of '
                              || COALESCE(locked_by, '?') || ' expired)'
                         ELSE 'lease of ' || COALESCE(locked_by, '?') || ' expired; taken back'
                    END,
       scheduled_at = CASE WHEN attempts >= %(max_attempts)s THEN scheduled_at ELSE now() END,
       locked_by = NULL,
       locked_until = NULL,
       updated_at = now()
 WHERE id IN (SELECT id FROM campaign_messages
               WHERE status = 'processing' AND locked_until < now()
               ORDER BY locked_until
               LIMIT 1000
                 FOR UPDATE SKIP LOCKED)
RETURNING id, status

-- next_due --
-- When the next pending row comes due, to set the wake-up timer.
SELECT min(scheduled_at) AS next_due
  FROM campaign_messages
 WHERE status = 'pending' AND scheduled_at > now()

-- sweep_old --
-- The seed's sweep: skip pending rows due longer ago than the age limit.
SELECT mark_old_campaign_messages_as_skipped(%(max_age)s) AS skipped

-- listen_check --
-- Is the LISTEN connection still listening? (A half-open connection raises no error.)
SELECT count(*) AS n FROM pg_listening_channels() AS c WHERE c = 'campaign_messages'

-- sandbox_send --
-- The sandbox sender's "delivery": one row per accepted part.
INSERT INTO sandbox_outbox (instance, number, text, provider_message_id)
SELECT * FROM unnest(%(instances)s::text[], %(numbers)s::text[], %(texts)s::text[],
                     %(provider_ids)s::text[])

-- backlog --
-- Pending rows already due (a gauge on /metrics).
SELECT count(*) AS due FROM campaign_messages WHERE status = 'pending' AND scheduled_at <= now()
