-- After a TRUNCATE of the queue: message_parts goes with it (what its foreign key did until
-- 0018).
-- SECURITY DEFINER: see README.md, the triggers' rights.
CREATE OR REPLACE FUNCTION campaign_messages_truncate_parts()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE message_parts;
    RETURN NULL;
END
$$;
