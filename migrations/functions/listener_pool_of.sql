-- The campaigns whose pool holds p_instance (p_default: the name of campaigns with neither
-- instances nor instance, EVOLUTION_INSTANCE).
CREATE OR REPLACE FUNCTION listener_pool_of(c campaigns, p_default text)
RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(c.instances, ARRAY[COALESCE(c.instance, p_default, 'sandbox')])
$$;
