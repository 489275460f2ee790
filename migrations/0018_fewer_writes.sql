-- listener 0018: fewer writes per message.
--
-- message_parts loses its foreign key to campaign_messages. The key's check ran for every part
-- recorded, in the statement that had just updated the message's row: an index probe and a
-- KEY SHARE lock on that row, which is one more WAL record and one more dirtied tuple per part
-- (the row is ours and locked by the update already, so the check can never fail there; the
-- record_parts statement inserts parts only for rows it updated). What the key did besides,
-- delete a message's parts with it, the statement triggers below do: a DELETE (directly or
-- cascaded from its campaign) deletes the parts of the rows it deleted, a TRUNCATE truncates
-- message_parts too. Both functions live in functions/; they are created here as well so the
-- cascade holds from the moment the key is gone (the trigger needs its function at once).
ALTER TABLE message_parts DROP CONSTRAINT IF EXISTS message_parts_message_id_fkey;

CREATE OR REPLACE FUNCTION campaign_messages_notify_delete()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    DELETE FROM message_parts p USING old_rows o WHERE p.message_id = o.id;
    FOR r IN
        SELECT run_id,
               count(*)::integer AS total,
               (count(*) FILTER (WHERE status = 'sent'))::integer AS sent,
               (count(*) FILTER (WHERE status = 'failed'))::integer AS failed,
               (count(*) FILTER (WHERE status = 'skipped'))::integer AS skipped
          FROM old_rows WHERE run_id IS NOT NULL GROUP BY run_id ORDER BY run_id
    LOOP
        PERFORM campaign_runs_apply(r.run_id, -r.total, -r.sent, -r.failed, -r.skipped);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION campaign_messages_truncate_parts()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE message_parts;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS campaign_messages_after_truncate ON campaign_messages;
CREATE TRIGGER campaign_messages_after_truncate
    AFTER TRUNCATE ON campaign_messages
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_messages_truncate_parts();

