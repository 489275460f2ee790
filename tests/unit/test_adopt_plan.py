"""The pure parts of adoption: which statements of the migration files are left out on an
adopted database, and the words --dry-run prints for each statement."""

from __future__ import annotations

from listener.commands.adoption import Held
from listener.commands.migration_files import describe

HELD = Held(frozenset({"get_lead_full_context"}), frozenset({"idx_campaign_messages_open"}))


def test_statements_on_the_users_functions_and_indexes_are_left_out() -> None:
    create = "-- the context\nCREATE OR REPLACE FUNCTION get_lead_full_context(lead_ids uuid[])"
    assert HELD.leaves_out(create) == "your function get_lead_full_context stays as it is"
    assert HELD.leaves_out("DROP FUNCTION IF EXISTS public.get_lead_full_context(uuid)")
    assert HELD.leaves_out("COMMENT ON FUNCTION get_lead_full_context(uuid[]) IS 'x'")
    assert HELD.leaves_out("DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_open") == (
        "your index idx_campaign_messages_open stays as it is"
    )
    # The listener's own names, and statements that only mention a held name, go ahead.
    assert (
        HELD.leaves_out("CREATE OR REPLACE FUNCTION listener_get_lead_full_context(x uuid[])")
        is None
    )
    assert HELD.leaves_out("SELECT * FROM get_lead_full_context(ARRAY[]::uuid[])") is None
    assert not Held()
    assert Held().leaves_out(create) is None


def test_each_statement_says_what_it_does_to_which_table() -> None:
    assert describe("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON campaign_messages (x)") == (
        "builds index idx_a on campaign_messages"
    )
    assert describe("-- why\nALTER TABLE campaigns ADD COLUMN IF NOT EXISTS y text") == (
        "alters table campaigns: ADD COLUMN"
    )
    assert describe("CREATE TABLE IF NOT EXISTS leads (id uuid)") == (
        "creates table leads (when it does not exist)"
    )
    assert describe("DROP TRIGGER IF EXISTS t ON campaigns") == (
        "drops trigger t on campaigns (to create it again)"
    )
    assert describe("UPDATE campaign_messages SET a = 1") == "update rows of campaign_messages"


def test_the_migrate_that_adopts_leaves_the_adopted_constraints_and_indexes_alone() -> None:
    adopted = Held(
        indexes=frozenset({"idx_campaign_messages_sent_at"}),
        adopted=frozenset({"leads_timezone_check", "idx_campaign_messages_sent_campaign"}),
    )
    assert adopted.leaves_out("ALTER TABLE leads DROP CONSTRAINT IF EXISTS leads_timezone_check")
    assert adopted.leaves_out("ALTER TABLE public.leads\n    ADD CONSTRAINT leads_timezone_check")
    assert adopted.leaves_out("ALTER TABLE leads VALIDATE CONSTRAINT leads_timezone_check")
    assert adopted.leaves_out(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_campaign_messages_sent_campaign"
        " ON campaign_messages (sent_at)"
    ) == (
        "index idx_campaign_messages_sent_campaign: the adoption built the indexes of your"
        " tables as these files end up"
    )
    assert adopted.leaves_out(
        "DROP INDEX CONCURRENTLY IF EXISTS idx_campaign_messages_sent_campaign"
    )
    # A rename to the name of the user's index would fail: left out, now and later.
    assert adopted.leaves_out(
        "ALTER INDEX IF EXISTS idx_x RENAME TO idx_campaign_messages_sent_at"
    ) == ("your index idx_campaign_messages_sent_at keeps its name")
    # A statement doing more than that one thing runs; other names go ahead.
    assert (
        adopted.leaves_out(
            "ALTER TABLE leads ADD COLUMN tz text, ADD CONSTRAINT leads_timezone_check CHECK (x)"
        )
        is None
    )
    assert adopted.leaves_out("ALTER TABLE leads ADD CONSTRAINT leads_other CHECK (x)") is None
    assert adopted.leaves_out("CREATE INDEX idx_message_parts_first ON message_parts (x)") is None
