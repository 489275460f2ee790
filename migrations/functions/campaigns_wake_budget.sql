-- A raised (or removed) budget, or a spend set back, wakes the messages waiting for it: they
-- are due now, and the NOTIFY (the same one campaign_messages_notify_update sends for them,
-- which Postgres folds into one) tells the listeners.
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaigns_wake_budget()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
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
