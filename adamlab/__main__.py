"""`python -m adamlab <command> [flags]`: the same as the `adamlab` command."""

from adamlab.cli import console

if __name__ == "__main__":
    console()
