"""The product's own error types: an error says whose fault it is.

`ynat-ray` prints a `YnatError` as one line and exits 2: the user asked for something that cannot work
(a bad flag, a malformed row, a checkpoint that is not there). Anything else is a bug and keeps its
traceback; that is why no plain `ValueError` is caught: one raised inside pandas, pyarrow or numpy is ours
to fix, not the user's.
"""

from __future__ import annotations


class YnatError(Exception):
    """Base of every error the CLI reports in one line (exit 2)."""


class UsageError(YnatError):
    """A command-line or config mistake: unknown or misplaced option, bad value, missing argument."""
