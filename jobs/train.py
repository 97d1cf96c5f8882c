"""Entry point for `ray job submit --working-dir . -- python jobs/train.py [options]`.

Same options as `ynat-ray train`; the work lives in ynat_ray.train. The repo root goes
on sys.path so the job runs from an uploaded working dir on a cluster where ynat-ray isn't installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ynat_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])  # user mistakes: one line in the job's log, exit 2
