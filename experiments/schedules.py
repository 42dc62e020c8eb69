"""The schedules study (see adamlab.studies and configs/study_schedules.py):
writes a report directory (config, results CSV/JSON, summary.md, plots).

    python experiments/schedules.py [--seeds N] [--report_dir reports/schedules]
        [--config configs/study_schedules.py] [--config.<field>=<value>]
"""

import pathlib
import sys

from adamlab.experiments import studies

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "study_schedules.py"

if __name__ == "__main__":
    sys.exit(studies.main("schedules", str(CONFIG)))
