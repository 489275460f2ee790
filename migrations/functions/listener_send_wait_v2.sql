-- When a first part may go through the number at its slot (as listener_send_wait, which a
-- listener of an earlier release still calls), and whether it still goes: `stop` says why the
-- message's lead may have none of it (opted out, or handed off since the message was made),
-- and then the number is not reserved. The stop is read after the number's row is locked, in
-- a statement of its own, so it sees everything committed before what freed the number: read
-- in the caller's statement, its snapshot predates the lock's wait, and a lead who opted out
-- just before the number was freed was sent the message.
CREATE OR REPLACE FUNCTION listener_send_wait_v2(
    p_instance text, p_min numeric, p_stale numeric, p_message_id uuid)
RETURNS TABLE (wait numeric, reserved boolean, stop text)
LANGUAGE plpgsql AS $$
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
