"""The sections of the experiment file as pydantic models (`Spec` and its parts): their fields,
defaults, per-field checks and help text. Checks that need the whole file are in
`raysearch/experiment/checks.py`; reading a file is `raysearch/experiment/spec.py`."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from raysearch.experiment.problems import StrictModel as _Model, absolute as _absolute
from raysearch.experiment.pruning import PruningSpec
from raysearch.experiment.space import Dimension, grid_points
from trainables.contract import SEED_DIMENSION

DEFAULT_STORAGE = "./raysearch_results"


CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
CAUSAL_LM_METRICS = ("answer_accuracy",)
_METRICS_HELP = "must be one of 'accuracy', 'f1' or 'matthews' (classification) or 'answer_accuracy' (causal_lm)"
# Fields that only one task type reads: set for the other type they are an error.
CAUSAL_LM_ONLY = ("prompt_template", "answer_pattern", "max_new_tokens", "max_generation_examples", "scoring",
                  "train_on")
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
    scoring: Literal["generate", "loglik", "options"] = "generate"
    """causal_lm: how an answer is chosen: `generate` (greedy generation, the answer read by
    `answer_pattern`), `loglik` (the candidate label, e.g. "answer2", whose response has the
    highest log-likelihood; candidates from the instruction's "Answer format: a/b/c" line, else
    every gold answer of the record's source) or `options` (lm-evaluation-harness's multiple
    choice: the option *text* likeliest after "Question: ...\nAnswer:", acc or acc_norm per
    source; records that offer no options are answered by generation)."""
    train_on: Literal["label", "option_text"] = "label"
    """causal_lm: what a multiple-choice record is trained to write: `label` (the record's own
    output after the prompt template, e.g. LLM-Adapters' "the correct answer is answer2") or
    `option_text` (the gold option's text after "Question: ...\nAnswer:", what `scoring:
    options` reads; needs that scoring)."""
    target: Literal["attention", "attention_mlp", "all_linear"] = "attention"
    """Layers adapted when adapter.target_modules is unset: the attention projections, or
    attention + MLP projections (as the LLaMA seeds do; known per architecture), or every
    linear layer outside the task head (PEFT's `all-linear`; any architecture). A search
    dimension too: `target: {choice: [attention, all_linear]}`. The default is measured
    (docs/benchmarks.md §4.6): all_linear was no better beyond noise on SST-2 or SmolLM2."""
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
        from trainables.contract import check_template

        check_template(value)
        return value

    @field_validator("answer_pattern")
    @classmethod
    def _check_answer_pattern(cls, value: str) -> str:
        from trainables.contract import check_pattern

        check_pattern(value)
        return value

    @model_validator(mode="after")
    def _default_metric(self) -> TaskSpec:
        if self.type == "causal_lm" and "metric" not in self.model_fields_set:
            self.metric = "answer_accuracy"
        return self

    @field_validator("train_on")
    @classmethod
    def _check_train_on(cls, value: str, info: Any) -> str:
        if value == "option_text" and info.data.get("scoring", "generate") != "options":
            raise ValueError("'option_text' trains what `scoring: options` reads; set task.scoring: options "
                             "(or train_on: label)")
        return value


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
    # `sora_lambda`...) may be set here; `_adapter_option_problems` checks them
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
    init: Literal["default", "gaussian", "pissa", "olora", "eva"] = "default"
    """How A and B start (PEFT's init_lora_weights), for lora, rora and loraplus: `default` (A
    kaiming, B = 0), `gaussian` (A normal), `pissa` / `olora` (the base weight's principal
    singular / QR directions; the base becomes the residual, and the export converts back to a
    plain LoRA of rank 2r on the original base), `eva` (data-driven: A from the singular vectors
    of each layer's inputs on 8 training batches; B = 0, the base unchanged)."""

    @field_validator("scaling", mode="before")
    @classmethod
    def _check_scaling(cls, value: Any) -> Any:
        # Before the `str | float` union runs, so a bad value gives one message, not one per member.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("must be 'lora', 'rora', 'rslora' or a number in [0, 1]")
        from trainables.contract import scaling_exponent

        scaling_exponent(value)  # raises ValueError with the allowed values
        return value


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
    min_rung_size: int | None = Field(None, ge=1)
    """MOASHA: while a rung holds fewer trials than this, a trial that is non-dominated among
    them goes on; from this many on, the better ⌈n/reduction_factor⌉ by Pareto rank and
    crowding. None: ⌊reduction_factor⌋ + 1 (3 at 2), where ⌈n/η⌉ would keep one trial."""
    brackets: int = Field(1, ge=1, le=4)
    """Hyperband brackets: trials are dealt in turn to B brackets, bracket b's first rung at
    grace_period · reduction_factor^b, each trial judged only within its own (late bloomers)."""


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
    compare: list[str] | None = None
    """`choice` dimensions to compare fairly, e.g. [scaling, rank]: one cell per combination of
    their values, every cell given the same `trials_per_cell` trials; the other dimensions (lr,
    alpha, ...) are searched inside each cell by the same design of points, and early stopping
    acts within a cell only (raysearch/experiment/comparison.py). `raysearch leaderboard NAME --by ...` shows
    the best of each cell."""
    trials_per_cell: int | None = Field(None, gt=0)
    """With `compare`: the points of the other dimensions each cell trains (a Latin hypercube,
    the same in every cell)."""
    seeds: int = Field(1, ge=1)
    """With `compare`: train every point with this many seeds (train.seed, train.seed + 1, ...),
    so a difference between cells comes with its spread."""

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
    no Ray Train worker group (that group starts a controller and a worker process for every
    trial; docs/benchmarks.md §1 measures it). false: every trial is a Ray Train run. Trials of
    2+ workers always are."""

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
    pruning: PruningSpec | None = None
    """Prune `model` first (causal_lm, LLaMA family) and train every trial on it: docs/pruning.md."""
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
        from raysearch.search.storage import search_dir

        return search_dir(self.storage or DEFAULT_STORAGE, self.name)

    @model_validator(mode="after")
    def _seed_dimension(self) -> "Spec":
        """search.seeds > 1: `seed` (train.seed) becomes a dimension, train.seed, +1, ..."""
        if self.search.seeds > 1 and SEED_DIMENSION not in self.search.space:
            self.search.space[SEED_DIMENSION] = Dimension(choice=[self.train.seed + i for i in range(self.search.seeds)])
        return self


def num_trials_for(search: SearchSpec) -> int:
    """Trials the search will run: cells × trials_per_cell × seeds for a comparison, the grid
    size for `grid`, else `num_trials`."""
    if search.compare and search.trials_per_cell:
        compared = grid_points({name: search.space[name] for name in search.compare if name in search.space})
        return len(compared) * search.trials_per_cell * search.seeds
    if search.sampler == "grid":
        return len(grid_points(search.space))
    return search.num_trials

