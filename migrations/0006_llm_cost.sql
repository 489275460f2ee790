-- listener 0006: the LLM step's cost. Per message: the tokens and US dollars of every billed
-- LLM call (tries and re-asks, over all attempts) and the model that answered; per campaign:
-- fallback models, an optional budget and the running spend the budget is checked against.
-- New columns with constant defaults: no table rewrite, the lock is held only for the catalog.

ALTER TABLE campaigns
    ADD COLUMN IF NOT EXISTS fallback_models text[],
    ADD COLUMN IF NOT EXISTS budget_usd numeric(14, 6),
    ADD COLUMN IF NOT EXISTS spent_usd numeric(18, 10) NOT NULL DEFAULT 0;
ALTER TABLE campaigns DROP CONSTRAINT IF EXISTS campaigns_budget_check;
ALTER TABLE campaigns
    ADD CONSTRAINT campaigns_budget_check CHECK (budget_usd IS NULL OR budget_usd >= 0);
COMMENT ON COLUMN campaigns.fallback_models IS
    'models OpenRouter tries in order after the primary; NULL = LISTENER_FALLBACK_MODELS';
COMMENT ON COLUMN campaigns.budget_usd IS
    'once spent_usd reaches it, messages that still need the LLM wait (wait_reason budget)';
COMMENT ON COLUMN campaigns.spent_usd IS
    'sum of campaign_messages.cost_usd, kept by the listener''s writes that store the usage';

ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS model text,
    ADD COLUMN IF NOT EXISTS model_fallback boolean,
    ADD COLUMN IF NOT EXISTS prompt_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS completion_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cost_usd numeric(18, 10) NOT NULL DEFAULT 0;
COMMENT ON COLUMN campaign_messages.model IS
    'the model that answered the message''s last billed LLM call (the reply''s model)';
COMMENT ON COLUMN campaign_messages.model_fallback IS
    'true when that model was one of the fallbacks, not the primary';
COMMENT ON COLUMN campaign_messages.cost_usd IS
    'US dollars of every billed LLM call of the message (usage.cost), summed';

-- A raised (or removed) budget, or a spend set back, wakes the messages waiting for it: they
-- are due now, and the NOTIFY (the same one campaign_messages_notify_update sends for them,
-- which Postgres folds into one) tells the listeners.
CREATE OR REPLACE FUNCTION campaigns_wake_budget()
RETURNS trigger
LANGUAGE plpgsql AS $$
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

DROP TRIGGER IF EXISTS campaigns_wake_budget ON campaigns;
CREATE TRIGGER campaigns_wake_budget
    AFTER UPDATE OF budget_usd, spent_usd ON campaigns
    FOR EACH ROW
    WHEN (NEW.budget_usd IS DISTINCT FROM OLD.budget_usd OR NEW.spent_usd < OLD.spent_usd)
    EXECUTE FUNCTION campaigns_wake_budget();
