"""`adamlab study batch_size`: see adamlab/experiments/studies.py and experiments/README.md."""

import sys

from adamlab import cli

if __name__ == "__main__":
    cli.console(["adamlab", "study", "batch_size", *sys.argv[1:]])
