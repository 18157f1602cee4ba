"""raysearch: search LoRA-family adapter configurations with Ray Tune, Optuna and MLflow.

The Python API (raysearch/api.py) is the front door: `raysearch.run(...)` and the names in
`__all__` are loaded from it when first used, so that importing a submodule (the CLI, a
worker) does not import the API, and no module imports its own package's front door. The
folders follow a search: `experiment/` (the file read and checked), `search/` (the search
running), `records/` (MLflow written and read back)."""
from __future__ import annotations

from typing import Any

__all__ = ["Evaluation", "Exported", "RaysearchError", "Report", "Search", "Trial", "cells", "evaluate", "export",
           "leaderboard", "load", "load_search", "report", "resume_search", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from raysearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'raysearch' has no attribute {name!r}")
