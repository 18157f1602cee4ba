"""What the driver may know about the worker, stated once and free of torch: the keys of the
result each evaluation reports, the status a trial's last result means, and the names an
experiment file may use (built-in models, scaling rules, prompt templates, answer patterns).

The worker (trainables/loop.py) writes results under these keys; the driver (raysearch/)
reads them through this module. The worker's code the driver calls (the trial function, the
adapter registry, the scoring, what preflight probes) it reaches through trainables/entry.py
only; this module imports nothing of the worker but its answer patterns, so every worker
module can import it.
"""
from __future__ import annotations

import math
import string
from typing import Any, Mapping

from trainables.answers import PATTERN_NAMES, check_pattern  # stdlib only

# --- the reported result: one per evaluation ----------------------------------------
STEP = "step"  # optimizer steps taken
EVALUATION = "evaluation"  # evaluations so far: the schedulers' clock (a restart continues it)
FINAL = "final"  # true on the trial's last evaluation
DIVERGED = "diverged"  # true when the loss became NaN/inf: then FINAL too, and no val_* keys
VAL_LOSS = "val_loss"  # and val_<task.metric>: see `val_metric`
ADAPTER_PARAMS = "adapter_params"  # live adapter parameters: what the export ships
BUDGET_SETTLED = "budget_settled"  # false while an adaptive variant's schedule still moves its budget
RANK_ALLOCATION = "rank_allocation"  # JSON object: module -> live rank
RESUMED_FROM_STEP = "resumed_from_step"  # present when this run of the trial started from a checkpoint
SCALING_EXPONENT = "scaling_exponent"  # p in alpha / r**p, as the variant applies it
EFFECTIVE_LORAPLUS_RATIO = "effective_loraplus_ratio"  # B's lr / A's lr, as the variant applies it
CHECKPOINT_PATH = "checkpoint_path"  # a Ray Train run's checkpoint, forwarded by its Tune function


# Every evaluation reports at least these (and val_<task.metric>); a diverged trial's one
# report has STEP, ADAPTER_PARAMS, DIVERGED and FINAL only.
REPORTED = (STEP, EVALUATION, FINAL, DIVERGED, VAL_LOSS, ADAPTER_PARAMS, BUDGET_SETTLED, RANK_ALLOCATION,
            SCALING_EXPONENT, EFFECTIVE_LORAPLUS_RATIO)


def val_metric(metric: str) -> str:
    """The reported key of a task metric (`accuracy` -> `val_accuracy`)."""
    return f"val_{metric}"


# --- what a trial's last result means -----------------------------------------------
COMPLETED, EARLY_STOPPED, DIVERGED_STATUS, ERROR = "completed", "early_stopped", "diverged", "error"
FINISHED = (COMPLETED, EARLY_STOPPED)  # ended without failing


def trial_status(result: Mapping[str, Any] | None) -> str:
    """A trial that ended without an error: `diverged`, `completed` (its last evaluation ran)
    or `early_stopped` (ended by the scheduler before its last evaluation)."""
    result = result or {}
    if result.get(DIVERGED):
        return DIVERGED_STATUS
    if result.get(FINAL):
        return COMPLETED
    return EARLY_STOPPED


def ran_to_the_end(result: Mapping[str, Any] | None) -> bool:
    """Whether the result is a trial's last evaluation, trained to the end without diverging."""
    return trial_status(result) == COMPLETED


# --- names an experiment file may use -----------------------------------------------
# Which section of the experiment a sampled dimension sets: these `train:` fields, these
# `task:` fields, and everything else (variant, rank, alpha, variant options) `adapter:`.
SEED_DIMENSION = "seed"  # train.seed; a comparison's replicates (search.seeds > 1) are this dimension
TRAIN_DIMENSIONS = frozenset({"lr", "weight_decay", "warmup_ratio", "epochs", "batch_size", SEED_DIMENSION})
TASK_DIMENSIONS = frozenset({"target"})  # which layers are adapted: attention, attention_mlp, all_linear


def section_of(dimension: str) -> str:
    """`train`, `task` or `adapter`: the section of the experiment a sampled dimension overrides."""
    return "train" if dimension in TRAIN_DIMENSIONS else "task" if dimension in TASK_DIMENSIONS else "adapter"


BUILTIN_MODELS = ("builtin:minilm", "builtin:tiny-llama", "builtin:smollm2")
CAUSAL_LM_BUILTINS = ("builtin:tiny-llama", "builtin:smollm2")  # decoders: task.type causal_lm only
IN_MEMORY_BUILTINS = ("builtin:tiny-llama",)  # built from a config on the spot, no files

SCALING_NAMES = {"lora": 1.0, "rora": 0.5, "rslora": 0.5}


def scaling_exponent(scaling: str | float) -> float:
    """`s = alpha / r**p`: 'lora' -> p=1, 'rora'/'rslora' -> p=0.5, or a number in [0, 1]."""
    if isinstance(scaling, str):
        if scaling in SCALING_NAMES:
            return SCALING_NAMES[scaling]
        try:
            scaling = float(scaling)
        except ValueError:
            raise ValueError(f"scaling must be one of {sorted(SCALING_NAMES)} or a number in [0, 1], got {scaling!r}") from None
    p = float(scaling)
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"scaling exponent must be in [0, 1], got {p}")
    return p


TEMPLATE_NAMES = ("alpaca", "chat")
PLACEHOLDERS = ("instruction", "input")


def check_template(template: str) -> None:
    """Raise ValueError unless `template` is `alpaca`, `chat`, or a format string using {instruction}."""
    if template in TEMPLATE_NAMES:
        return
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"not a valid template ({error}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; a template may use {{instruction}} and {{input}} "
                         f"(or be one of {', '.join(TEMPLATE_NAMES)})")
    if "instruction" not in fields:
        raise ValueError(f"must contain {{instruction}} (or be one of {', '.join(TEMPLATE_NAMES)})")


def choice_problems(path: str, limit: int = 5) -> list[str]:
    """Why records of the JSON/JSONL instruction file `path` that offer options cannot be read as
    multiple choice ("record N: ..."; N counts from 1), at most `limit`; [] when all can. Every
    record is read (json, no model): the LLM-Adapters files take well under a second."""
    from trainables.choices import ChoiceError, read_choice
    from trainables.files import read_json_records  # json only: no datasets in the driver

    problems = []
    for number, record in enumerate(read_json_records(path), start=1):
        try:
            read_choice(record)
        except ChoiceError as error:
            problems.append(f"record {number}: {error}")
            if len(problems) >= limit:
                break
    return problems


def data_problems(path: str, **needs: Any) -> list[str]:
    """Why a local data file cannot feed the task (trainables/records.py, stdlib only)."""
    from trainables.records import data_problems as problems

    return problems(path, **needs)


__all__ = [
    "ADAPTER_PARAMS", "BUDGET_SETTLED", "BUILTIN_MODELS", "CAUSAL_LM_BUILTINS", "CHECKPOINT_PATH", "COMPLETED",
    "DIVERGED", "DIVERGED_STATUS", "EARLY_STOPPED", "EFFECTIVE_LORAPLUS_RATIO", "ERROR", "EVALUATION", "FINAL",
    "FINISHED", "IN_MEMORY_BUILTINS", "PATTERN_NAMES", "PLACEHOLDERS", "RANK_ALLOCATION", "REPORTED", "RESUMED_FROM_STEP",
    "SCALING_EXPONENT", "SCALING_NAMES", "STEP", "TASK_DIMENSIONS", "TEMPLATE_NAMES", "TRAIN_DIMENSIONS", "VAL_LOSS",
    "check_pattern", "check_template", "choice_problems", "data_problems", "ran_to_the_end", "scaling_exponent", "section_of", "trial_status", "val_metric",
]
