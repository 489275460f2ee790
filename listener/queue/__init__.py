"""The queue: a message's walk from claim to outcome, and the store of its rows."""
