-- A paused campaign's messages wait in the queue; when it becomes active again, wake the
-- listeners so they go at once.
CREATE OR REPLACE FUNCTION campaigns_notify_resume()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE n.status = 'active' AND o.status <> 'active') THEN
        PERFORM pg_notify('campaign_messages', extract(epoch FROM now())::text);
    END IF;
    RETURN NULL;
END
$$;
