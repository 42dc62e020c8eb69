"""The weight decay study (see adamlab.studies and configs/study_weight_decay.py):
writes a report directory (config, results CSV/JSON, summary.md, plots).

    python experiments/weight_decay.py [--seeds N] [--report_dir reports/weight_decay]
        [--config configs/study_weight_decay.py] [--config.<field>=<value>]
"""

import pathlib
import sys

from adamlab.experiments import studies

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "study_weight_decay.py"

if __name__ == "__main__":
    sys.exit(studies.main("weight_decay", str(CONFIG)))
