"""What is wrong with an experiment file: `Problem`s (YAML path, bad value, what is allowed),
`SpecError` listing them all, the strict base model of every section (and the rule for the
local paths in them), and the translation of pydantic's errors into problems that name what
is allowed."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from types import UnionType as _UnionType
from typing import Any, Sequence, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

MISSING: Any = object()  # a Problem's value when the key is absent


def absolute(value: str) -> str:
    """A local path of the file made absolute (sources, calibration data); ids and URIs as given."""
    # Ray runs trials in their own working directory: an existing relative local path is
    # made absolute here, on the driver, where it was meant.
    if value.startswith(("hf:", "builtin:")) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


class StrictModel(BaseModel):
    """A section of the experiment file: unknown keys are errors; attribute docstrings become
    field descriptions, so they reach `--help` and the docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@dataclass
class Problem:
    path: str
    """YAML path of the bad value, e.g. `search.space.rank.choice[0]`."""
    value: Any
    """The bad value (`MISSING` when the key is absent)."""
    message: str
    """What is wrong and what is allowed."""

    def __str__(self) -> str:
        if self.value is MISSING:
            return f"{self.path}: {self.message}"
        shown = repr(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.path} = {shown}: {self.message}"


class SpecError(Exception):
    """The experiment file is invalid; `.problems` lists every problem found."""

    def __init__(self, problems: list[Problem], source: str = "experiment file") -> None:
        self.problems = problems
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''} in {self.source}:"]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def _path(loc: Sequence[str | int]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<file>"


def unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, _UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc` under `root` (None if not a model)."""
    tp: Any = root
    for part in loc:
        tp = unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = unwrap_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(f.alias or name for name, f in model.model_fields.items())


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "string_pattern_mismatch": "must start with a letter or digit and contain only letters, digits, '_', '.', '-'",
}


def message(error: dict[str, Any], root: type[BaseModel]) -> str:
    """A readable message for one pydantic error of `root`, naming what is allowed."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = f"; allowed: {_keys(model)}" if model else ""
        return f"unknown key{allowed}"
    if kind == "missing":
        return "required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(root, loc)
        if getattr(model, "mapping_help", None):  # a model's own words for its shape (space.Dimension)
            return model.mapping_help
        if model is not None:
            return f"must be a mapping with keys: {_keys(model)}"
        return "must be a mapping"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    template = _MESSAGES.get(kind)
    if template is not None:
        try:
            ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in error.get("ctx", {}).items()}
            return template.format(**ctx)
        except (KeyError, IndexError):
            pass
    return error["msg"]


def problems_from_validation(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """One Problem per pydantic error of validating `root`."""
    problems = []
    for item in error.errors():
        value = MISSING if item["type"] == "missing" else item.get("input", MISSING)
        problems.append(Problem(_path(item["loc"]), value, message(item, root)))
    return problems
