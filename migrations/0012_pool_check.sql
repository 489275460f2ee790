-- listener 0012: the check on campaigns.instances in PL/pgSQL.
--
-- 0009 wrote listener_valid_pool in SQL; a SQL function with subqueries is not inlined and is
-- planned again at every call, and a CHECK runs on every UPDATE of the row. The listener adds
-- each batch's LLM spend to its campaign's row, so every such write paid about 0.17 ms for
-- the check (a third of the statement on a 2-core machine). PL/pgSQL keeps its plans for the
-- session: 0.04 ms. Same signature and the same answers; NULL (no pool) returns at once.
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
