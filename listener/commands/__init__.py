"""The command line and what only its commands use."""
