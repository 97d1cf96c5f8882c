"""The README shows the same serving, batch and cluster text as docs/ (synced by docs/sync_readme.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_blocks_equal_their_docs() -> None:
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "docs" / "sync_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert module.synced(readme) == readme, "README.md is out of date: run `python docs/sync_readme.py`"
