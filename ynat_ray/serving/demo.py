"""The /demo page: one self-contained HTML file with the model's topics filled in.

The page must work offline and behind a firewall, so it loads nothing from anywhere: everything is inline,
and `DEMO_CSP` makes the browser enforce it (a stray CDN link would be blocked, not silently fetched). It
may call its own origin only, which is where `predict` lives whatever the route prefix.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources

DEMO_TOPICS_SLOT = "__YNAT_TOPICS__"
DEMO_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def demo_page(labels: Sequence[str]) -> str:
    """The /demo HTML with the model's topics filled in.

    Read through importlib.resources rather than a path built from `__file__`: the replica may run from an
    installed wheel or a cluster's unpacked working dir, not from the directory this driver imported.
    """
    page = (resources.files("ynat_ray") / "assets" / "demo.html").read_text(encoding="utf-8")  # in the wheel via package-data
    if DEMO_TOPICS_SLOT not in page:
        raise RuntimeError(f"ynat_ray/assets/demo.html has no {DEMO_TOPICS_SLOT} slot for the topics")
    return page.replace(DEMO_TOPICS_SLOT, html.escape(" · ".join(labels)))
