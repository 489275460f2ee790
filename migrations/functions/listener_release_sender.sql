-- The number is back: end its hold and make its waiting messages due now (the messages of
-- every campaign whose pool holds it that wait for a sender, except started ones that wait
-- for another number). A move of its messages aside still under way (listener_sender_holds)
-- ends: its runner's next batch finds it gone. Returns how many messages it made due.
CREATE OR REPLACE FUNCTION listener_release_sender(
    p_instance text, p_default text, p_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE listener_instances
       SET held_reason = NULL, held_since = NULL, held_until = NULL, released_at = p_at,
           updated_at = now()
     WHERE instance = p_instance;
    DELETE FROM listener_sender_holds WHERE instance = p_instance;
    RETURN listener_wake_sender(p_instance, p_default,
                                listener_number_holds() || 'no sender'::text, p_at);
END
$$;
