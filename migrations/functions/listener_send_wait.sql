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
