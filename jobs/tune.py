"""Entry point for `ray job submit --working-dir . -- python jobs/tune.py [options]`.

Same options as `ynat-ray tune` (one YnatConfig plus --space, --num_samples, ...); the work lives in ynat_ray.tune.
The repo root goes on sys.path so the job runs from an uploaded working dir on a cluster where ynat-ray isn't installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ynat_ray.cli import cmd_tune  # noqa: E402

if __name__ == "__main__":
    cmd_tune(sys.argv[1:])
