"""Entry point for `ray job submit --working-dir . -- python jobs/train.py [options]`.

Same options as `ynat-ray train` (one YnatConfig); the work lives in ynat_ray.train.
"""

from ynat_ray.cli import cmd_train

if __name__ == "__main__":
    import sys

    cmd_train(sys.argv[1:])
