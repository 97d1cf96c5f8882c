"""Copy docs/serving.md, docs/batch.md and docs/cluster.md into README.md between their BEGIN/END markers.

Why: the README is the front door and must show the same text as the docs; editing one place and running
`python docs/sync_readme.py` keeps them equal (tests/test_docs.py checks they are).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {"SERVING": "docs/serving.md", "BATCH": "docs/batch.md", "CLUSTER": "docs/cluster.md"}


def synced(readme: str) -> str:
    """README text with every block replaced by its doc file."""
    for name, doc in BLOCKS.items():
        body = (ROOT / doc).read_text(encoding="utf-8").rstrip("\n")
        pattern = re.compile(rf"(<!-- BEGIN {name} \(from {re.escape(doc)}\) -->\n).*?(\n<!-- END {name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no {name} block")
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), readme)
    return readme


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(synced(path.read_text(encoding="utf-8")), encoding="utf-8")
    print("README.md synced with", ", ".join(BLOCKS.values()))
