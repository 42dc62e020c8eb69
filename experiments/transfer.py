"""The transfer-learning study (see adamlab.transfer and configs/transfer_digits.py):
writes a report directory (config, results CSV/JSON, summary.md, plots).

    python experiments/transfer.py [--seeds N] [--report_dir reports/transfer]
        [--config configs/transfer_digits.py] [--config.<field>=<value>]
"""

import pathlib
import sys

from adamlab.experiments import studies

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "transfer_digits.py"

if __name__ == "__main__":
    sys.exit(studies.main("transfer", str(CONFIG)))
