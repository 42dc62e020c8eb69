"""`python -m adamlab <command> [flags]`: the same as the `adamlab` command."""

import sys

from adamlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
