"""The batch size study (see adamlab.studies and configs/study_batch_size.py):
writes a report directory (config, results CSV/JSON, summary.md, plots).

    python experiments/batch_size.py [--seeds N] [--report_dir reports/batch_size]
        [--config configs/study_batch_size.py] [--config.<field>=<value>]
"""

import pathlib
import sys

from adamlab.experiments import studies

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "study_batch_size.py"

if __name__ == "__main__":
    sys.exit(studies.main("batch_size", str(CONFIG)))
