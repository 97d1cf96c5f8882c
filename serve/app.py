"""Entry point for Ray Serve's CLI: `serve run serve.app:app`, `serve build serve.app:app`, and config files.

- `YNAT_CHECKPOINT=DIR serve run serve.app:app` (from the repository root) serves the checkpoint in DIR.
- `serve run serve.app:app_builder checkpoint=DIR max_replicas=4` passes `ynat-ray serve` options as arguments
  (Serve validates them into `ynat_ray.serving.app.ServeAppArgs`; `config=FILE` reads an options file).
- `serve run serve/config.yaml` / `serve deploy serve/config.yaml` pass them as `args:`.

All logic lives in `ynat_ray.serving.app`; this file only picks the checkpoint. `app` is built on first
access (PEP 562), so importing `app_builder` never needs YNAT_CHECKPOINT.
"""

from __future__ import annotations

from typing import Any

from ynat_ray.serving.app import ServeAppArgs, app_builder


def __getattr__(name: str) -> Any:
    if name == "app":
        return app_builder(ServeAppArgs())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
