-- Why a number is held (listener_instances.held_reason): not connected, restricted by WhatsApp,
-- or unknown to Evolution (a 404). The one list of them: the functions that move or wake a
-- held number's messages read it here, and the listener's own (pacing/holds.py NUMBER_HOLDS)
-- is held to it by tests/integration/test_holds.py.
CREATE OR REPLACE FUNCTION listener_number_holds()
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['instance down', 'instance restricted', 'unknown to Evolution']
$$;
