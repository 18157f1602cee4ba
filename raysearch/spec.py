"""The experiment file: one YAML file describes one search.

`load_spec()` reads the file, applies `--set key=value` overrides and CLI options,
validates the result in two passes and reports *every* problem at once, each with
its YAML path (`search.space.rank.choice[0]`), the bad value and what is allowed:

1. pydantic checks shapes, types and ranges (`extra="forbid"`: unknown keys are errors);
2. `_semantic_problems()` checks what needs the whole file: dimension names against
   the adapter registry, which variants can use which dimension, `when` conditions,
   objective names, and the grid size.

Only `raysearch/space.py` turns the `space` section into Optuna calls.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from types import UnionType as _UnionType
from pathlib import Path
from typing import Any, Literal, Sequence, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The adapter registry (name -> class with ClassVar `hyperparams`). Imported lazily by
# `_adapters()` because it imports torch, which `raysearch --help` should not pay for.
# Tests replace it with a fake registry by monkeypatching this module-level name.
ADAPTERS: dict[str, Any] | None = None

TRAIN_DIMENSIONS = frozenset({"lr", "weight_decay", "warmup_ratio", "epochs", "batch_size"})
TASK_DIMENSIONS = frozenset({"target"})  # which layers are adapted: attention, attention_mlp, all_linear
DEFAULT_STORAGE = "./raysearch_results"
_SCALAR_TYPES = (str, int, float, bool, type(None))  # what Optuna's suggest_categorical accepts
_MISSING: Any = object()


def _adapters() -> dict[str, Any]:
    global ADAPTERS
    if ADAPTERS is None:
        from trainables.adapters import ADAPTERS as registry

        ADAPTERS = registry
    return ADAPTERS


class _Model(BaseModel):
    # Attribute docstrings become field descriptions, so they reach `--help` and docs.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
CAUSAL_LM_METRICS = ("answer_accuracy",)
_METRICS_HELP = "must be one of 'accuracy', 'f1' or 'matthews' (classification) or 'answer_accuracy' (causal_lm)"
# Fields that only one task type reads: set for the other type they are an error.
CAUSAL_LM_ONLY = ("prompt_template", "answer_pattern", "max_new_tokens", "max_generation_examples", "scoring")
CLASSIFICATION_ONLY = ("text_fields", "label_field")


class SourceSpec(_Model):
    """One source of instruction records (task.type causal_lm). A file of instruction records
    needs `path` only; any labelled table (csv/tsv/json/parquet, e.g. SST-2) becomes instruction
    records through `instruction` and `output`, templates over its columns, where `{answer}` is
    the label written as `label_names[label]`."""

    path: str
    """A file, a folder with train.* and validation.*, or hf:<id>[:<config>]."""
    name: str | None = None
    """Name in per-source scores (`raysearch evaluate`); default: the file name up to its first dot."""
    instruction: str | None = None
    """Template of the instruction over the columns, e.g. "Review: {sentence}\nPositive or negative?".
    None: the source already holds instruction records (instruction, input, output, answer)."""
    output: str = "{answer}"
    """Template of the response the model learns; `{answer}` is the gold answer."""
    label_field: str = "label"
    """Column with the label, when `instruction` is set."""
    label_names: list[str] | None = None
    """Answer word of label 0, 1, ... (labels that are already words are used as they are)."""
    max_train_examples: int | None = Field(None, gt=0)
    """This source's share of the training set (default: task.max_train_examples)."""
    max_eval_examples: int | None = Field(None, gt=0)
    """This source's validation records (default: task.max_eval_examples)."""

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        return _absolute(value)


def _absolute(value: str) -> str:
    # Ray runs trials in their own working directory: an existing relative local path is
    # made absolute here, on the driver, where it was meant.
    if value.startswith(("hf:", "builtin:")) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


class TaskSpec(_Model):
    type: Literal["classification", "causal_lm"] = "classification"
    """What the model learns: `classification` (a sequence-classification head on the text) or
    `causal_lm` (instruction tuning of a decoder: loss on the response tokens, answers read
    from greedy generation). See docs/causal_lm.md."""
    dataset: str | list[str | SourceSpec] = "builtin:demo"
    """`hf:<id>[:<config>]`, a local file (csv/tsv/json/jsonl/parquet) or directory, or `builtin:demo`
    (classification only). causal_lm: records with `instruction`, optional `input`, `output`, optional
    `answer`; or a list of sources (paths or `{path, instruction, output, label_names}`) mixed
    into one training set, each split on its own."""
    test_fraction: float = Field(0.0, ge=0, lt=1)
    """Share of each source's training file held out as a test split before anything else is
    carved from it (seeded by `test_seed` alone, the same in every trial): never trained on,
    never used to select; `raysearch evaluate` scores it. 0: no test split."""
    test_seed: int = 0
    """Seed of the test split's draw (independent of train.seed)."""
    max_test_examples: int | None = Field(None, gt=0)
    """Score at most this many test records (per source; None: all)."""
    text_fields: list[str] | None = None
    """classification: columns holding the input text (one or two); None picks them automatically."""
    label_field: str = "label"
    """classification: column holding the class label."""
    max_length: int = Field(64, gt=0)
    """Tokens per example after truncation (causal_lm: prompt + response + EOS)."""
    metric: str = "accuracy"
    """Validation metric, reported as `val_<metric>`: accuracy, f1 or matthews for classification;
    answer_accuracy (the default) for causal_lm."""
    max_train_examples: int | None = Field(None, gt=0)
    """Use at most this many training examples (None: all)."""
    max_eval_examples: int | None = Field(None, gt=0)
    """Use at most this many validation examples (None: all); causal_lm: for `val_loss`."""
    prompt_template: str = "alpaca"
    """causal_lm: `alpaca` (the LLM-Adapters/DoRA format), `chat` (the tokenizer's chat template),
    or a template string with `{instruction}` and optionally `{input}`; the response follows it."""
    answer_pattern: str = "auto"
    """causal_lm: how the answer is read from generated text: true_false, choice (answer1..5,
    solution1..2, ending1..4, option1..2), commonsense (either), letter (A-E), number, a regular
    expression (group 1, else the match), or `auto` (the built-in that reads the gold answers)."""
    max_new_tokens: int = Field(32, gt=0)
    """causal_lm: tokens generated per validation record for answer accuracy."""
    max_generation_examples: int | None = Field(128, gt=0)
    """causal_lm: validation records answered at each evaluation (None: all); answering costs
    far more than the loss, this keeps evaluation a small part of a trial."""
    scoring: Literal["generate", "loglik"] = "generate"
    """causal_lm: how an answer is chosen: `generate` (greedy generation, the answer read by
    `answer_pattern`) or `loglik` (the candidate answer whose response has the highest
    log-likelihood, as lm-evaluation-harness scores multiple choice; candidates from the
    instruction's "Answer format: a/b/c" line, else every gold answer of the record's source)."""
    target: Literal["attention", "attention_mlp", "all_linear"] = "attention"
    """Layers adapted when adapter.target_modules is unset: the attention projections, or
    attention + MLP projections (as the LLaMA seeds do; known per architecture), or every
    linear layer outside the task head (PEFT's `all-linear`; any architecture). A search
    dimension too: `target: {choice: [attention, all_linear]}`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Weights of the frozen base model and the compute: `auto` is bf16 on GPUs that support it
    and fp32 on CPU; adapters are always trained in fp32."""

    @field_validator("dataset")
    @classmethod
    def _absolute_dataset(cls, value: str | list) -> str | list:
        if isinstance(value, str):
            return _absolute(value)
        return [_absolute(item) if isinstance(item, str) else item for item in value]

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, value: str) -> str:
        if value not in CLASSIFICATION_METRICS + CAUSAL_LM_METRICS:
            raise ValueError(_METRICS_HELP)
        return value

    @field_validator("prompt_template")
    @classmethod
    def _check_prompt_template(cls, value: str) -> str:
        from trainables.instructions import check_template  # stdlib + torch, no model code

        check_template(value)
        return value

    @field_validator("answer_pattern")
    @classmethod
    def _check_answer_pattern(cls, value: str) -> str:
        from trainables.answers import check_pattern

        check_pattern(value)
        return value

    @model_validator(mode="after")
    def _default_metric(self) -> TaskSpec:
        if self.type == "causal_lm" and "metric" not in self.model_fields_set:
            self.metric = "answer_accuracy"
        return self


class TrainSpec(_Model):
    epochs: float = Field(3, gt=0)
    """Passes over the training set; fractions allowed."""
    batch_size: int = Field(32, gt=0)
    """Global batch size, split across the trial's workers."""
    lr: float = Field(5e-4, gt=0)
    """Peak learning rate (AdamW, linear warm-up then linear decay)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Fraction of the steps spent warming up the learning rate."""
    eval_every_steps: int = Field(50, gt=0)
    """Evaluate and report to Tune every this many optimizer steps (and at the end)."""
    seed: int = 0
    """Seed for model init, data order and dropout."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    max_failures: int = Field(0, ge=-1)
    """Times a trial is restarted from its last checkpoint after an exception or a lost worker
    (-1: without limit). Node preemptions are retried apart from this count."""
    keep_checkpoints: int = Field(2, gt=0)
    """Checkpoints (adapter, optimizer, schedule and step, written at each evaluation) kept per trial."""


class AdapterSpec(_Model):
    # Besides these shared fields, a variant's own options (GoRA's `gora_gamma`, SoRA's
    # `sparsity_lambda`...) may be set here; `_adapter_option_problems` checks them
    # against the variants' `options` models.
    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    variant: str = "lora"
    """Adapter variant used when the space has no `variant` dimension."""
    rank: int = Field(8, gt=0)
    """Rank r of the low-rank update."""
    alpha: float = Field(16, gt=0)
    """alpha in the scale `alpha / r**p`."""
    scaling: str | float = "lora"
    """Exponent p of the scale: 'lora' (p=1), 'rora' or 'rslora' (p=0.5), or a number in [0, 1]."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    loraplus_ratio: float | None = Field(None, gt=0)
    """LoRA+: learning rate of B divided by that of A; None is the variant's default (16 for loraplus, else 1)."""
    target_modules: list[str] | None = None
    """Module names to adapt; None picks the attention/MLP projections for the architecture."""

    @field_validator("scaling", mode="before")
    @classmethod
    def _check_scaling(cls, value: Any) -> Any:
        # Before the `str | float` union runs, so a bad value gives one message, not one per member.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("must be 'lora', 'rora', 'rslora' or a number in [0, 1]")
        from trainables.adapters.base import scaling_exponent

        scaling_exponent(value)  # raises ValueError with the allowed values
        return value


class Dimension(_Model):
    """One search dimension: exactly one of `choice`, `uniform`, `loguniform`, `int`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)

    choice: list[Any] | None = None
    """Categorical values (strings, numbers, booleans)."""
    uniform: tuple[float, float] | None = None
    """Float range [low, high]."""
    loguniform: tuple[float, float] | None = None
    """Float range [low, high] sampled on a log scale; low > 0."""
    int_: tuple[int, int] | None = Field(None, alias="int")
    """Integer range [low, high], both included."""
    log: bool = False
    """Sample `uniform`/`int` on a log scale."""
    step: float | None = None
    """Discretization step for `uniform`/`int`; cannot be combined with `log`."""
    when: dict[str, list[Any]] | None = None
    """Sample this dimension only when each named `choice` dimension took one of the listed values."""

    @field_validator("choice")
    @classmethod
    def _check_choice(cls, values: list[Any] | None) -> list[Any] | None:
        if values is None:
            return values
        if not values:
            raise ValueError("must list at least one value")
        for value in values:
            if not isinstance(value, _SCALAR_TYPES):
                raise ValueError(f"values must be strings, numbers or booleans, got {value!r}")
        return values

    @field_validator("uniform", "loguniform", "int_", mode="before")
    @classmethod
    def _check_pair(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, (list, tuple)) or len(value) != 2):
            raise ValueError("must be a list [low, high]")
        return value

    @field_validator("uniform", "loguniform")
    @classmethod
    def _check_float_range(cls, value: tuple[float, float] | None, info: Any) -> Any:
        if value is None:
            return value
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("low and high must be finite numbers")
        if info.field_name == "loguniform" and low <= 0:
            raise ValueError(f"low must be > 0 for a log scale, got {low}")
        if low >= high:
            raise ValueError(f"low must be < high, got [{low}, {high}]")
        return value

    @field_validator("int_")
    @classmethod
    def _check_int_range(cls, value: tuple[int, int] | None) -> Any:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"low must be <= high, got [{value[0]}, {value[1]}]")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> Dimension:
        given = [k for k in ("choice", "uniform", "loguniform", "int") if self._raw(k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of choice, uniform, loguniform, int (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if self.log and kind not in ("uniform", "int"):
            raise ValueError(f"`log` applies to `uniform` and `int` only (`{kind}` given)")
        if self.step is not None:
            if kind not in ("uniform", "int"):
                raise ValueError(f"`step` applies to `uniform` and `int` only (`{kind}` given)")
            if self.log:
                raise ValueError("Optuna cannot combine `log: true` with `step`; drop one of them")
            if self.step <= 0 or (kind == "int" and self.step != int(self.step)):
                raise ValueError(f"`step` must be a positive {'integer' if kind == 'int' else 'number'}, got {self.step}")
        if self.log and kind != "loguniform":
            low = self.bounds[0]
            if (kind == "int" and low < 1) or (kind == "uniform" and low <= 0):
                raise ValueError(f"`log: true` needs low {'>= 1' if kind == 'int' else '> 0'}, got {low}")
        return self

    def _raw(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform", "int"]:
        """Which of the four forms this dimension uses."""
        for kind in ("choice", "uniform", "loguniform", "int"):
            if self._raw(kind) is not None:
                return kind  # type: ignore[return-value]
        raise AssertionError("validated Dimension has no kind")

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a range dimension."""
        value = self._raw(self.kind)
        if self.kind == "choice":
            raise TypeError("a choice dimension has no bounds")
        return value[0], value[1]

    @property
    def is_log(self) -> bool:
        return self.kind == "loguniform" or self.log


class EarlyStoppingSpec(_Model):
    scheduler: Literal["moasha", "asha", "none"] | None = None
    """`moasha` stops trials that no Pareto-better set of trials leaves room for at a rung
    (non-dominated sorting on `metrics`; the default with two or more objectives); `asha`
    stops trials whose one `metric` lags (the default with one objective); `none` runs every
    trial to the end."""
    metric: str = "val_loss"
    """Reported metric ASHA compares (`val_loss` or `val_<task.metric>`)."""
    metrics: dict[str, Literal["max", "min"]] | None = None
    """What MOASHA ranks trials on at a rung, name -> max/min (e.g. `{val_loss: min,
    adapter_params: min}`). Default: the search's objectives themselves; on SST-2 an early
    val_loss predicted the final accuracy no better than the early accuracy did
    (docs/benchmarks.md §3, "Early stopping with two objectives")."""
    grace_period: int = Field(1, ge=1)
    """Evaluations a trial makes before it can be stopped."""
    reduction_factor: float = Field(2, gt=1)
    """ASHA and MOASHA keep 1/reduction_factor of the trials at each rung (2: a trial must be in
    the better half of those that reached its rung; 3 stops more, and lost more of the front
    and of the best trial in docs/benchmarks.md §3)."""


def rung_metrics(objectives: dict[str, str], stopping: EarlyStoppingSpec) -> dict[str, str]:
    """What MOASHA ranks on: `early_stopping.metrics`, or the objectives themselves."""
    return dict(stopping.metrics or objectives)


class SearchSpec(_Model):
    objectives: dict[str, Literal["max", "min"]] = Field(
        default_factory=lambda: {"val_accuracy": "max", "adapter_params": "min"}
    )
    """Metrics to optimize and their direction; two or more give a Pareto front."""
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    """Optuna sampler. `grid` tries every combination of the `choice` dimensions."""
    num_trials: int = Field(24, gt=0)
    """Trials to run (for `grid`: leave unset, the grid size is used)."""
    max_concurrent: int = Field(2, gt=0)
    """Trials running at the same time."""
    seed: int = 0
    """Sampler seed."""
    startup_trials: int | None = Field(None, ge=1)
    """tpe: trials sampled at random before TPE's model takes over (Optuna's n_startup_trials);
    None: Optuna's default, 10, best for ~8 trials; 5 did better at 16 (docs/benchmarks.md §3).
    The file's own configuration (start_with_defaults) counts as one."""
    fail_fast: int = Field(3, ge=0)
    """Stop the search when the first this-many trials to end all failed with the same error
    (a bad setting would fail every trial the same way); 0: never."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """How unpromising trials are stopped early."""
    start_with_defaults: bool = True
    """The first trial is the configuration the experiment file itself gives (its `adapter:`,
    `train:` and `task.target` values for the searched dimensions), so the search is never
    worse than the file's defaults; a dimension whose default its range or choices exclude is
    sampled. Not for `grid`."""
    space: dict[str, Dimension]
    """The search dimensions, by name (adapter hyperparameters, `variant`, and lr/weight_decay/...)."""

    @field_validator("space")
    @classmethod
    def _check_space(cls, value: dict[str, Dimension]) -> dict[str, Dimension]:
        if not value:
            raise ValueError("must define at least one dimension, e.g. `rank: {choice: [4, 8, 16]}`")
        return value

    @model_validator(mode="after")
    def _default_scheduler(self) -> "SearchSpec":
        """No scheduler named: MOASHA for two or more objectives, ASHA for one."""
        if self.early_stopping.scheduler is None:
            self.early_stopping.scheduler = "moasha" if len(self.objectives) >= 2 else "asha"
        return self


class ResourcesSpec(_Model):
    workers_per_trial: int = Field(1, gt=0)
    """Ray Train workers (processes, usually one per GPU) in each trial."""
    cpus_per_worker: float = Field(1, gt=0)
    """CPUs each worker reserves."""
    gpus_per_worker: float = Field(0, ge=0)
    """GPUs each worker reserves (0: train on CPU)."""
    inline_single_worker: bool = True
    """A trial of one worker runs its training loop in its Tune function's own process, with
    no Ray Train worker group (that group costs a controller and a worker process, ~14 s per
    trial). false: every trial is a Ray Train run. Trials of 2+ workers always are."""

    @property
    def inline(self) -> bool:
        """Whether trials run in their Tune function's process (see inline_single_worker)."""
        return self.inline_single_worker and self.workers_per_trial == 1


class TrackingSpec(_Model):
    mlflow_uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI."""


class Spec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Experiment name (default: the file name without `.yaml`); names the MLflow experiment and results folder."""
    model: str = "builtin:minilm"
    """HF model id, local path, or offline built-ins: `builtin:minilm` (encoder, classification),
    `builtin:smollm2` (SmolLM2-135M-Instruct, causal_lm), `builtin:tiny-llama` (random, tests)."""
    trust_remote_code: bool = False
    """Let transformers run the Python code a model's repository ships (off: only built-in architectures)."""
    task: TaskSpec = Field(default_factory=TaskSpec)
    """The data and the metric."""
    train: TrainSpec = Field(default_factory=TrainSpec)
    """Training hyperparameters (defaults for the dimensions not searched)."""
    adapter: AdapterSpec = Field(default_factory=AdapterSpec)
    """Adapter hyperparameters (defaults for the dimensions not searched)."""
    search: SearchSpec
    """What to search and how."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """What each trial reserves."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Where results are recorded."""
    storage: str | None = None
    """Ray Tune storage (a local dir, or s3://, gs://, NFS for multi-node); None: ./raysearch_results."""

    @property
    def storage_dir(self) -> str:
        """Where this experiment's results live: `<storage>/<name>`, absolute for local paths."""
        root = self.storage or DEFAULT_STORAGE
        if "://" in root:
            return f"{root.rstrip('/')}/{self.name}"
        return str(Path(root).expanduser().resolve() / self.name)


# --- errors -------------------------------------------------------------------------


@dataclass
class Problem:
    path: str
    """YAML path of the bad value, e.g. `search.space.rank.choice[0]`."""
    value: Any
    """The bad value (`_MISSING` when the key is absent)."""
    message: str
    """What is wrong and what is allowed."""

    def __str__(self) -> str:
        if self.value is _MISSING:
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


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, _UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc` (None if not a model)."""
    tp: Any = Spec
    for part in loc:
        tp = _unwrap_optional(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap_optional(tp)
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


def _message(error: dict[str, Any]) -> str:
    """A readable message for one pydantic error, naming what is allowed."""
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f"; allowed: {_keys(model)}" if model else ""
        return f"unknown key{allowed}"
    if kind == "missing":
        return "required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        model = _model_at(loc)
        if model is Dimension:
            return "must be a mapping like {choice: [...]}, {uniform: [low, high]}, {loguniform: [low, high]} or {int: [low, high]}"
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


def _problems_from_validation(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors():
        value = _MISSING if item["type"] == "missing" else item.get("input", _MISSING)
        problems.append(Problem(_path(item["loc"]), value, _message(item)))
    return problems


# --- semantic checks ----------------------------------------------------------------


def _field_problems(model: type[BaseModel], field: str, value: Any) -> list[str]:
    """Messages for `value` as `model.field` (empty list when valid)."""
    if field == "target_modules" and value is not None:
        value = [value]  # a choice value names one module set
    try:
        model.model_validate({field: value})
    except ValidationError as error:
        return [_message(item) for item in error.errors()]
    return []


def _dimension_value_problems(name: str, dim: Dimension, model: type[BaseModel]) -> list[Problem]:
    base = f"search.space.{name}"
    problems = []
    if dim.kind == "choice":
        for i, value in enumerate(dim.choice or []):
            problems += [Problem(f"{base}.choice[{i}]", value, m) for m in _field_problems(model, name, value)]
        return problems
    annotation = _unwrap_optional(model.model_fields[name].annotation)
    if annotation is int and dim.kind != "int":
        problems.append(Problem(f"{base}.{dim.kind}", list(dim.bounds),
                                f"`{name}` is an integer; use `int: [low, high]` (add `log: true` for a log scale)"))
    if annotation not in (int, float):
        problems.append(Problem(f"{base}.{dim.kind}", list(dim.bounds),
                                f"`{name}` is not numeric; use `choice: [...]`"))
        return problems
    for i, value in enumerate(dim.bounds):
        problems += [Problem(f"{base}.{dim.kind}[{i}]", value, m) for m in _field_problems(model, name, value)]
    return problems


def _when_problems(space: dict[str, Dimension]) -> list[Problem]:
    problems = []
    for name, dim in space.items():
        for key, values in (dim.when or {}).items():
            path = f"search.space.{name}.when.{key}"
            parent = space.get(key)
            if key == name:
                problems.append(Problem(path, values, "a dimension cannot depend on itself"))
            elif parent is None:
                problems.append(Problem(path, values, f"no dimension named '{key}'; `when` can name: "
                                        + ", ".join(n for n, d in space.items() if d.kind == "choice" and n != name)))
            elif parent.kind != "choice":
                problems.append(Problem(path, values, f"'{key}' is a `{parent.kind}` dimension; `when` can only name `choice` dimensions"))
            elif not values:
                problems.append(Problem(path, values, f"must list at least one of {parent.choice}"))
            else:
                for i, value in enumerate(values):
                    if value not in parent.choice:  # type: ignore[operator]
                        problems.append(Problem(f"{path}[{i}]", value, f"not a choice of '{key}'; choices: {parent.choice}"))
    if not problems:
        cycle = _find_cycle(space)
        if cycle:
            problems.append(Problem(f"search.space.{cycle[0]}.when", space[cycle[0]].when,
                                    "`when` conditions form a cycle: " + " -> ".join(cycle)))
    return problems


def _find_cycle(space: dict[str, Dimension]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if state.get(name) == 1:
            return stack[stack.index(name):] + [name]
        if state.get(name) == 2 or name not in space:
            return None
        state[name] = 1
        for parent in space[name].when or {}:
            found = visit(parent, stack + [name])
            if found:
                return found
        state[name] = 2
        return None

    for name in space:
        found = visit(name, [])
        if found:
            return found
    return None


def _variant_problems(spec: Spec, adapters: dict[str, Any]) -> list[Problem]:
    space, registered = spec.search.space, sorted(adapters)
    problems = []
    if spec.adapter.variant not in adapters:
        problems.append(Problem("adapter.variant", spec.adapter.variant, f"unknown variant; registered: {registered}"))
    variant_dim = space.get("variant")
    if variant_dim is None:
        return problems
    if variant_dim.kind != "choice":
        return problems + [Problem("search.space.variant", variant_dim.model_dump(by_alias=True, exclude_defaults=True),
                                   f"must be a `choice` of variants; registered: {registered}")]
    for i, value in enumerate(variant_dim.choice or []):
        if value not in adapters:
            problems.append(Problem(f"search.space.variant.choice[{i}]", value, f"unknown variant; registered: {registered}"))
    return problems


def _usable_problems(spec: Spec, adapters: dict[str, Any]) -> list[Problem]:
    """Every variant that can be active when an adapter dimension is sampled must accept it."""
    space, problems = spec.search.space, []
    variant_dim = space.get("variant")
    if variant_dim is not None and variant_dim.kind == "choice":
        candidates = [v for v in variant_dim.choice or [] if v in adapters]
    else:
        candidates = [spec.adapter.variant] if spec.adapter.variant in adapters else []
    for name, dim in space.items():
        if name == "variant" or name in TRAIN_DIMENSIONS | TASK_DIMENSIONS or not any(name in c.hyperparams for c in adapters.values()):
            continue  # unknown names are reported once, as unknown
        allowed = (dim.when or {}).get("variant")
        active = [v for v in candidates if allowed is None or v in allowed]
        refused = [v for v in active if name not in adapters[v].hyperparams]
        if not refused:
            continue
        able = [v for v in candidates if name in adapters[v].hyperparams]
        if not able:
            users = sorted(v for v, cls in adapters.items() if name in cls.hyperparams)
            where = "the variant dimension" if variant_dim is not None else "adapter.variant"
            problems.append(Problem(f"search.space.{name}", dim.model_dump(by_alias=True, exclude_defaults=True),
                                    f"no variant in {where} ({', '.join(candidates)}) can use '{name}'; "
                                    f"variants that can: {', '.join(users)}"))
        else:
            problems.append(Problem(f"search.space.{name}", dim.model_dump(by_alias=True, exclude_defaults=True),
                                    f"variant '{refused[0]}' cannot use '{name}'; "
                                    f"add `when: {{variant: [{', '.join(able)}]}}`"))
    return problems


def _option_models(adapters: dict[str, Any], name: str) -> list[type[BaseModel]]:
    """The distinct `options` models of the variants that declare option `name`."""
    models = []
    for cls in adapters.values():
        options = getattr(cls, "options", None)
        if options is not None and name in options.model_fields and options not in models:
            models.append(options)
    return models


def _adapter_option_problems(spec: Spec, adapters: dict[str, Any]) -> list[Problem]:
    """Keys of `adapter:` beyond the shared fields must be some variant's option, with a valid value."""
    problems = []
    for key, value in (spec.adapter.model_extra or {}).items():
        models = _option_models(adapters, key)
        if not models:
            known = sorted(set(AdapterSpec.model_fields) | {
                f for cls in adapters.values() for f in getattr(getattr(cls, "options", None), "model_fields", {})})
            problems.append(Problem(f"adapter.{key}", value, f"unknown adapter option; allowed: {', '.join(known)}"))
            continue
        for model in models:
            problems += [Problem(f"adapter.{key}", value, m) for m in _field_problems(model, key, value)
                         if Problem(f"adapter.{key}", value, m) not in problems]
    return problems


def _semantic_problems(spec: Spec) -> list[Problem]:
    adapters = _adapters()
    space = spec.search.space
    adapter_dims = set().union(*(cls.hyperparams for cls in adapters.values())) if adapters else set()
    allowed = {"variant"} | TRAIN_DIMENSIONS | TASK_DIMENSIONS | adapter_dims
    problems = _variant_problems(spec, adapters)
    for name, dim in space.items():
        if name not in allowed:
            problems.append(Problem(f"search.space.{name}", dim.model_dump(by_alias=True, exclude_defaults=True),
                                    f"unknown dimension; allowed: {', '.join(sorted(allowed))}"))
        elif name in TrainSpec.model_fields and name != "variant":
            problems += _dimension_value_problems(name, dim, TrainSpec)
        elif name in TASK_DIMENSIONS:
            problems += _dimension_value_problems(name, dim, TaskSpec)
        elif name in AdapterSpec.model_fields and name != "variant":
            problems += _dimension_value_problems(name, dim, AdapterSpec)
        else:
            for options in _option_models(adapters, name):
                problems += [p for p in _dimension_value_problems(name, dim, options) if p not in problems]
    problems += _adapter_option_problems(spec, adapters)
    problems += _usable_problems(spec, adapters)
    when_problems = _when_problems(space)
    problems += when_problems

    problems += _task_problems(spec)
    problems += _objective_problems(spec)
    metrics = {f"val_{spec.task.metric}", "val_loss", "adapter_params"}
    stop_metric = spec.search.early_stopping.metric
    if stop_metric not in metrics - {"adapter_params"}:
        problems.append(Problem("search.early_stopping.metric", stop_metric,
                                f"must be val_loss or val_{spec.task.metric}"))
    for name in spec.search.early_stopping.metrics or {}:
        if name not in metrics:
            problems.append(Problem(f"search.early_stopping.metrics.{name}", name,
                                    f"MOASHA ranks on reported metrics: {', '.join(sorted(metrics))}"))

    if spec.search.sampler == "grid" and not when_problems:
        problems += _grid_problems(spec.search)
    return problems


def _objective_problems(spec: Spec) -> list[Problem]:
    metrics = {f"val_{spec.task.metric}", "val_loss", "adapter_params"}
    if not spec.search.objectives:
        return [Problem("search.objectives", {}, f"name at least one objective among: {', '.join(sorted(metrics))}")]
    problems = []
    for key in spec.search.objectives:
        if key not in metrics:
            hint = ""
            if "objectives" not in spec.search.model_fields_set:
                hint = (f"; the default objectives name val_accuracy: set search.objectives, "
                        f"e.g. {{val_{spec.task.metric}: max, adapter_params: min}}")
            problems.append(Problem(f"search.objectives.{key}", key,
                                    f"unknown metric; reported metrics: {', '.join(sorted(metrics))} "
                                    f"(task.metric is '{spec.task.metric}'){hint}"))
    return problems


def dataset_paths(task: TaskSpec) -> list[tuple[str, str]]:
    """(YAML path, data path) of every source of the task."""
    if isinstance(task.dataset, str):
        return [("task.dataset", task.dataset)]
    return [(f"task.dataset[{i}]" + ("" if isinstance(item, str) else ".path"),
             item if isinstance(item, str) else item.path) for i, item in enumerate(task.dataset)]


def source_name(item: str | SourceSpec) -> str:
    """A source's name in per-source scores: its `name`, else its file name up to the first dot."""
    if isinstance(item, SourceSpec) and item.name:
        return item.name
    from trainables.files import source_name as default_name  # no heavy imports

    return default_name(item if isinstance(item, str) else item.path)


def _task_problems(spec: Spec) -> list[Problem]:
    """What the task type rules out: metrics, fields and models of the other type."""
    from trainables.models import CAUSAL_LM_BUILTINS

    task, problems = spec.task, []
    causal = task.type == "causal_lm"
    allowed = CAUSAL_LM_METRICS if causal else CLASSIFICATION_METRICS
    if task.metric not in allowed:
        names = [f"'{m}'" for m in allowed]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        problems.append(Problem("task.metric", task.metric, f"task.type {task.type} reports {listed}"))
    for name in CLASSIFICATION_ONLY if causal else CAUSAL_LM_ONLY:
        if getattr(task, name) == TaskSpec.model_fields[name].default:
            continue  # a default is no choice (and a dumped-and-reloaded spec holds every field)
        problems.append(Problem(f"task.{name}", getattr(task, name), "only used when task.type is "
                                + ("classification" if causal else "causal_lm")))
    if not causal and not isinstance(task.dataset, str):
        problems.append(Problem("task.dataset", task.dataset, "a list of sources is for task.type causal_lm; "
                                "classification reads one dataset"))
    for where, path in dataset_paths(task):
        if causal and path.startswith("builtin:"):
            problems.append(Problem(where, path, "causal_lm needs instruction records: a .json/.jsonl file, a "
                                    "folder or hf:<id> (e.g. ../shared/data/commonsense/boolq.train.json)"))
    if causal and not isinstance(task.dataset, str):
        names = [source_name(item) for item in task.dataset]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(Problem("task.dataset", repeated, "two sources share a name; give them distinct `name`s"))
    if causal and spec.model == "builtin:minilm":
        problems.append(Problem("model", spec.model, "builtin:minilm is an encoder (classification only); use a "
                                "causal-LM hub id or folder, builtin:smollm2 (pretrained, offline) or builtin:tiny-llama "
                                "(random weights, for tests)"))
    if not causal and spec.model in CAUSAL_LM_BUILTINS:
        what = ("a causal LM with random weights, for task.type causal_lm tests" if spec.model == "builtin:tiny-llama"
                else "a causal LM (decoder): use it with task.type causal_lm")
        problems.append(Problem("model", spec.model, what))
    return problems


def _grid_problems(search: SearchSpec) -> list[Problem]:
    from raysearch.space import grid_points  # space.py imports optuna; only grid needs it here

    if not any(dim.kind == "choice" for dim in search.space.values()):
        return [Problem("search.sampler", "grid", "grid needs at least one `choice` dimension")]
    size = len(grid_points(search.space))
    if "num_trials" in search.model_fields_set and search.num_trials != size:
        return [Problem("search.num_trials", search.num_trials,
                        f"the grid has {size} points; remove num_trials or set it to {size}")]
    return []


# --- loading ------------------------------------------------------------------------


def _apply_override(data: dict[str, Any], key: str, value: Any) -> Problem | None:
    parts = key.split(".")
    if not all(parts):
        return Problem("--set", key, "key must be a dotted path like search.num_trials")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return Problem("--set", key, f"'{'.'.join(parts[:i + 1])}' is not a mapping, cannot set '{key}'")
        node = child
    node[parts[-1]] = value
    return None


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str], options: dict[str, Any]) -> list[Problem]:
    problems = []
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            problems.append(Problem("--set", override, "must be key=value, e.g. search.num_trials=8"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problems.append(Problem("--set", override, f"value is not valid YAML: {error}"))
            continue
        problem = _apply_override(data, key.strip(), value)
        if problem:
            problems.append(problem)
    for key, value in options.items():  # CLI options: raw values, validated like the file
        if value is not None:
            problem = _apply_override(data, key, value)
            if problem:
                problems.append(problem)
    return problems


def _validate(data: dict[str, Any], source: str, problems: list[Problem]) -> Spec:
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        raise SpecError(problems + _problems_from_validation(error), source) from None
    problems = problems + _semantic_problems(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


def spec_from_dict(data: dict[str, Any], *, source_name: str = "experiment") -> Spec:
    """Validate an already-parsed experiment; `name` defaults to `source_name`."""
    data = dict(data)
    data.setdefault("name", source_name)
    return _validate(data, f"experiment '{source_name}'", [])


def load_spec(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    name: str | None = None,
    num_trials: int | None = None,
    mlflow_uri: str | None = None,
    storage: str | None = None,
) -> Spec:
    """Read, override and validate an experiment file; raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError([Problem("<file>", source, f"cannot read the experiment file: {error.strerror or error}")], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError([Problem("<file>", source, f"invalid YAML: {error}")], source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([Problem("<file>", data, "the top level must be a mapping (name:, search:, ...)")], source)
    options = {"name": name, "search.num_trials": num_trials, "tracking.mlflow_uri": mlflow_uri, "storage": storage}
    problems = _apply_overrides(data, overrides, options)
    data.setdefault("name", path.stem)
    return _validate(data, source, problems)
