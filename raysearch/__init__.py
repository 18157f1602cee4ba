"""raysearch: search LoRA-family adapter configurations with Ray Tune, Optuna and MLflow.

The Python API (raysearch/api.py) is the front door; the `raysearch` command calls it."""
from raysearch.api import RaysearchError, Search, Trial, load, load_search, resume_search, run

__all__ = ["RaysearchError", "Search", "Trial", "load", "load_search", "resume_search", "run"]
