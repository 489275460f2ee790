-- The messages' roll-up from their parts: delivered when every part is DELIVERY_ACK or later,
-- read when any part is READ or PLAYED, the error of a part that reported ERROR. Set once. The
-- times are never before the message's own sent_at (a message of several parts is sent when its
-- last part is recorded; its first may be read before).
CREATE OR REPLACE FUNCTION roll_up_delivery(p_message_ids uuid[]) RETURNS void
LANGUAGE sql AS $$
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
