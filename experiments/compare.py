r"""Study: every optimizer of adamlab.optim against its optax twin, full digits runs, 3 seeds.

    python experiments/compare.py --workdir runs/compare_all
    python experiments/compare.py --seeds 5 --optimizers adam,nadam   # any flag of adamlab compare

`adamlab compare` with the study's defaults (later flags override them): configs/digits.py
(24 epochs, the `adamlab train` runs), every optimizer of `adamlab.optim.names()`, seeds 0-2.
Per optimizer, ours and the twin train in lockstep from the same initialisation on the same
batches, all seeds in one program; the report (results.csv, summary.md, curves.png, and
`<optimizer>/members/` with each run's metrics) goes to --workdir.
"""

import pathlib
import sys

from adamlab import cli, optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULTS = (
    f"--config={ROOT / 'configs' / 'digits.py'}",
    "--seeds=3",
    f"--optimizers={','.join(optim.names())}",
)


def command_line(argv: list[str]) -> list[str]:
    """The command line of `adamlab compare` with DEFAULTS, then the given flags (which win)."""
    return ["adamlab", "compare", *DEFAULTS, *argv[1:]]


if __name__ == "__main__":
    cli.console(command_line(sys.argv))
