-- The time zone a number's days and hours are counted in: its campaigns' when they agree,
-- else America/Sao_Paulo (also when they are judged in their leads' zones: 'lead').
CREATE OR REPLACE FUNCTION listener_sender_timezone(p_instance text, p_default text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN count(DISTINCT c.send_timezone) = 1 AND min(c.send_timezone) <> 'lead'
                THEN min(c.send_timezone)
                ELSE 'America/Sao_Paulo' END
      FROM campaigns c
     WHERE c.status <> 'archived' AND p_instance = ANY (listener_pool_of(c, p_default))
$$;
