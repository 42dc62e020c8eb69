r"""Study: final loss and accuracy against the peak learning rate, ours and optax, per optimizer.

    python experiments/sweep_learning_rate.py --workdir runs/sweep_learning_rate
    python experiments/sweep_learning_rate.py --optimizers adam,adamw --seeds 3   # any flag of
                                                                                  # adamlab sweep

`adamlab sweep` with the study's defaults (later flags override them): configs/
sweep_learning_rate.py (digits, 12 epochs, warmup-cosine), learning rates 1e-4..1e-1 (8,
log-spaced), seeds 0 and 1, adam/nadam/radam/adabelief, ours and the optax twin in lockstep.
Each optimizer's 32 runs are one compiled program. The report (results.csv, summary.md,
sweep.png, `<optimizer>/members/`) goes to --workdir. The figure in docs/ was made by this
script.
"""

import pathlib
import sys

from adamlab import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULTS = (
    f"--config={ROOT / 'configs' / 'sweep_learning_rate.py'}",
    "--sweep=optimizer.learning_rate=1e-4:1e-1:8",
    "--seeds=2",
    "--optimizers=adam,nadam,radam,adabelief",
    "--implementations=ours,optax",
)


def command_line(argv: list[str]) -> list[str]:
    """The command line of `adamlab sweep` with DEFAULTS, then the given flags (which win)."""
    return ["adamlab", "sweep", *DEFAULTS, *argv[1:]]


if __name__ == "__main__":
    cli.console(command_line(sys.argv))
