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
