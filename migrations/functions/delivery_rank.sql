-- How far a status is along; ERROR is final (9), unknown statuses are ignored (0).
CREATE OR REPLACE FUNCTION delivery_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
               WHEN 'PENDING' THEN 1 WHEN 'SERVER_ACK' THEN 2 WHEN 'DELIVERY_ACK' THEN 3
               WHEN 'READ' THEN 4 WHEN 'PLAYED' THEN 5 WHEN 'ERROR' THEN 9 ELSE 0 END
$$;
