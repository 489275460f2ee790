-- After a TRUNCATE of the queue: message_parts goes with it (what its foreign key did until
-- 0018).
CREATE OR REPLACE FUNCTION campaign_messages_truncate_parts()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE message_parts;
    RETURN NULL;
END
$$;
