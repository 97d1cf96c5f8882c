"""Entry point for `ray job submit --working-dir . -- python jobs/predict.py [options]`.

Same options as `ynat-ray predict-batch`; the work lives in ynat_ray.batch. The repo root
goes on sys.path so the job runs from an uploaded working dir on a cluster where ynat-ray isn't installed
(Ray also puts the working dir first on PYTHONPATH for the driver and every worker it starts).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ynat_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["predict-batch", *sys.argv[1:]])  # user mistakes: one line in the job's log, exit 2
