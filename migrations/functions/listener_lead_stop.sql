-- Why a message may not begin for its lead (NULL: it may): the lead opted out, or was handed off
-- to a person since the message was made (a hand-off skips the lead's pending messages; this
-- catches the ones in flight then). The one place these reasons are written: the listener's
-- lead_stop (queries.sql) and listener_send_wait_v2 read them here; store_parts names the same
-- conditions as a filter. A plain expression, so Postgres inlines it where it is called.
CREATE OR REPLACE FUNCTION listener_lead_stop(
    opted_out boolean, handoff_at timestamptz, made_at timestamptz)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN opted_out THEN 'skipped: the lead opted out'
                WHEN handoff_at >= made_at THEN 'skipped: the lead was handed off' END
$$;
