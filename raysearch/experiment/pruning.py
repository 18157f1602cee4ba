"""The `pruning:` section of the experiment file (pydantic) and the plain dicts the worker builds
a pruned base model from (trainables/pruning.py, reached through trainables/entry.py). What the
file alone can say is checked in `checks.py`; the model's shape and the calibration data in
`model_probe.py`, before anything starts."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from raysearch.experiment.problems import StrictModel as _Model, absolute


class CalibrationSpec(_Model):
    """The texts the `taylor` importance is measured on (trainables/pruning.py)."""

    data: str | None = None
    """A local .json/.jsonl/.csv/.tsv/.parquet file; a record's text is its `text`, else its
    Alpaca prompt (instruction, input) followed by its `output`. None: the experiment's own first
    source (a local file or folder of records), its test split (task.test_fraction) left out."""
    examples: int = Field(32, gt=0)
    """Records drawn from the file (with `seed`); the file must hold at least this many readable ones."""
    max_tokens: int = Field(256, ge=2)
    """Tokens per record at most (the tokenizer's BOS included); longer ones are cut."""
    seed: int = 0
    """Seed of the draw of the records."""

    @field_validator("data")
    @classmethod
    def _absolute_data(cls, value: str | None) -> str | None:
        return None if value is None else absolute(value)


def _fraction(value: float | None, low_open: bool, what: str) -> float | None:
    if value is None:
        return value
    inside = (0 < value < 1) if low_open else (0 <= value < 1)
    if not inside:  # NaN fails both comparisons
        raise ValueError(f"must be in {'(0, 1)' if low_open else '[0, 1)'}: the fraction of {what} every layer "
                         "loses (0.5 removes half; 1 would remove them all)")
    return value


class PruningSpec(_Model):
    """Structured pruning of the base model before any adapter is trained (LLM-Pruner style,
    trainables/pruning.py): whole KV groups (a key/value head and the query heads sharing it)
    and MLP channels removed uniformly per layer, ranked by importance within the layer, giving
    a smaller dense model of the same architecture, built once per recipe and cached."""

    ratio: float | None = None
    """Fraction of the KV groups and of the MLP channels every layer loses, in (0, 1); rounded
    half up per layer (0.5 of 3 KV groups removes 2). Required unless both of the next two are set."""
    attention_ratio: float | None = None
    """Fraction of the KV groups removed, in [0, 1) (0: attention untouched); default: `ratio`."""
    mlp_ratio: float | None = None
    """Fraction of the MLP channels removed, in [0, 1) (0: MLP untouched); default: `ratio`."""
    importance: Literal["taylor", "magnitude"] = "taylor"
    """How groups are ranked: `taylor`, sum of |w · dL/dw| over the group's weights on the
    calibration texts (LLM-Pruner's element-wise first order); `magnitude`, the L2 norm of the
    group's weights (no calibration data)."""
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    """The calibration texts (`taylor` only)."""

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, value: float | None) -> float | None:
        return _fraction(value, True, "KV groups and MLP channels")

    @field_validator("attention_ratio")
    @classmethod
    def _check_attention_ratio(cls, value: float | None) -> float | None:
        return _fraction(value, False, "KV groups")

    @field_validator("mlp_ratio")
    @classmethod
    def _check_mlp_ratio(cls, value: float | None) -> float | None:
        return _fraction(value, False, "MLP channels")

    def effective(self) -> tuple[float | None, float | None]:
        """(attention ratio, MLP ratio) as applied: each its own field, else `ratio`."""
        return (self.ratio if self.attention_ratio is None else self.attention_ratio,
                self.ratio if self.mlp_ratio is None else self.mlp_ratio)


def pruning_config(spec: Any) -> dict[str, Any] | None:
    """What the worker reads a pruning recipe from (trainables/pruning.py `pruning_recipe`): a
    `Spec`'s model, task and pruning section as plain dicts; None without pruning."""
    if spec.pruning is None:
        return None
    return {"model": spec.model, "task": spec.task.model_dump(), "pruning": spec.pruning.model_dump()}
