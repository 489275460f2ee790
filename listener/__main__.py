"""`python -m listener` is the `listener` command."""

from listener.commands.cli import console

if __name__ == "__main__":
    console()
