-- A try to classify a reply failed (the provider, an answer that is not a kind): the reply
-- stays unclassified and is tried again after `p_delay`; the usage of a billed call is kept
-- and its cost joins the campaign's spend all the same.
CREATE OR REPLACE FUNCTION reply_unclassified(
    p_reply uuid, p_error text, p_delay interval, p_prompt_tokens bigint,
    p_completion_tokens bigint, p_cost numeric)
RETURNS void
LANGUAGE plpgsql AS $$
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
