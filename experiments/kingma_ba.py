"""The kingma ba study (see adamlab.studies and configs/kingma_ba_digits.py):
writes a report directory (config, results CSV/JSON, summary.md, plots).

    python experiments/kingma_ba.py [--seeds N] [--report_dir reports/kingma_ba]
        [--config configs/kingma_ba_digits.py] [--config.<field>=<value>]
"""

import pathlib
import sys

from adamlab.experiments import studies

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "kingma_ba_digits.py"

if __name__ == "__main__":
    sys.exit(studies.main("kingma_ba", str(CONFIG)))
