-- listener 0024: the listener's own tables are not Supabase's public roles'. A Supabase project
-- grants every table made in the public schema to anon and authenticated (its default
-- privileges), and PostgREST serves those roles to whoever holds the project's public key: the
-- replies of leads, the webhooks' payloads, the parts sent and the numbers would be theirs to
-- read and write. Revoked here where those roles exist (elsewhere nothing changes). The
-- listener connects as the tables' owner; service_role keeps what it was given. The tables
-- the listener shares with the back end (campaigns, campaign_runs, leads, campaign_messages)
-- keep their grants: they are the back end's too. The listener's triggers on those act with
-- the owner's rights (SECURITY DEFINER, migrations/functions), so a back end writing there as
-- authenticated needs nothing of these tables. A numbered file that makes a table revokes the
-- same (tests/integration/test_adoption.py checks every table).
DO $$
DECLARE
    role text;
    tbl text;
    seq regclass;
BEGIN
    FOREACH role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role);
        FOREACH tbl IN ARRAY ARRAY[
            'campaign_steps', 'delivery_updates_early', 'lead_replies', 'listener_adoption',
            'listener_campaign_days', 'listener_campaign_holds', 'listener_instances',
            'listener_migrations', 'listener_sender_holds', 'message_parts', 'sandbox_outbox',
            'sender_instances', 'sent_events', 'webhook_dead_letters', 'webhook_inbox'] LOOP
            CONTINUE WHEN to_regclass(tbl) IS NULL;
            EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', to_regclass(tbl), role);
            FOR seq IN
                SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                 WHERE d.refobjid = to_regclass(tbl) AND d.classid = 'pg_class'::regclass
                   AND s.relkind = 'S'
            LOOP
                EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %I', seq, role);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;
