-- A pool (campaigns.instances) is a non-empty list of distinct, non-blank names; NULL (no
-- pool) is valid. The CHECK on campaigns calls it on every UPDATE of a campaign row (the
-- listener adds each batch's LLM spend there), so it is PL/pgSQL, which keeps its plans for
-- the session (about 0.04 ms a call), not SQL with subqueries (planned at every call).
CREATE OR REPLACE FUNCTION listener_valid_pool(p_pool text[])
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_pool IS NULL THEN
        RETURN true;
    END IF;
    RETURN cardinality(p_pool) > 0
       AND array_position(p_pool, NULL) IS NULL
       AND NOT EXISTS (SELECT 1 FROM unnest(p_pool) AS n WHERE btrim(n) = '')
       AND (SELECT count(DISTINCT n) FROM unnest(p_pool) AS n) = cardinality(p_pool);
END
$$;
