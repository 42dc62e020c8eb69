"""`adamlab study transfer`: see adamlab/experiments/studies.py and experiments/README.md."""

import sys

from adamlab import cli

if __name__ == "__main__":
    cli.console(["adamlab", "study", "transfer", *sys.argv[1:]])
