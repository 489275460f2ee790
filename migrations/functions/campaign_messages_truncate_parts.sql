-- After a TRUNCATE of the queue: message_parts goes with it (what its foreign key did until
-- 0018).
-- SECURITY DEFINER: it acts for whoever writes the row (a back end as Supabase's
-- authenticated, held to the user's RLS and granted none of the listener's own tables) with
-- the rights of the tables' owner; its search_path is the one it was created with.
CREATE OR REPLACE FUNCTION campaign_messages_truncate_parts()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE message_parts;
    RETURN NULL;
END
$$;
