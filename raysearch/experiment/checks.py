"""Checks that need the whole experiment file: dimension names against the adapter registry
and which variants can use them, variant options, `when` conditions, objectives, early-stopping
metrics, what the task type rules out, and the grid size. Each returns `Problem`s."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from raysearch.experiment.problems import MISSING, Problem, message, unwrap_optional
from raysearch.experiment.sections import (CAUSAL_LM_METRICS, CAUSAL_LM_ONLY, CLASSIFICATION_METRICS, CLASSIFICATION_ONLY,
                                AdapterSpec, SearchSpec, SourceSpec, Spec, TaskSpec, TrainSpec)
from raysearch.experiment.sections import num_trials_for
from raysearch.experiment.space import Dimension, grid_points
from raysearch.experiment.space import when_problems as space_when_problems
from trainables.contract import CAUSAL_LM_BUILTINS, SEED_DIMENSION, TASK_DIMENSIONS, TRAIN_DIMENSIONS

# The adapter registry (name -> class with ClassVar `hyperparams` and `options`). Imported
# lazily by `registry()` because it imports torch, which `raysearch --help` should not pay
# for. Tests replace it with a fake registry by monkeypatching this module-level name.
ADAPTERS: dict[str, Any] | None = None


def registry() -> dict[str, Any]:
    """The adapter registry (trainables/adapters), imported on first use."""
    global ADAPTERS
    if ADAPTERS is None:
        from trainables.entry import adapter_registry

        adapters = adapter_registry()

        ADAPTERS = adapters
    return ADAPTERS


def _field_problems(model: type[BaseModel], field: str, value: Any) -> list[str]:
    """Messages for `value` as `model.field` (empty list when valid)."""
    if field == "target_modules" and value is not None:
        value = [value]  # a choice value names one module set
    try:
        model.model_validate({field: value})
    except ValidationError as error:
        return [message(item, model) for item in error.errors()]
    return []


def _dimension_value_problems(name: str, dim: Dimension, model: type[BaseModel]) -> list[Problem]:
    base = f"search.space.{name}"
    problems = []
    if dim.kind == "choice":
        for i, value in enumerate(dim.choice or []):
            problems += [Problem(f"{base}.choice[{i}]", value, m) for m in _field_problems(model, name, value)]
        return problems
    annotation = unwrap_optional(model.model_fields[name].annotation)
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


def _init_problems(spec: Spec, adapters: dict[str, Any]) -> list[Problem]:
    """`adapter.init` other than the default only where every variant that may run takes it."""
    if spec.adapter.init == "default":
        return []
    variant_dim = spec.search.space.get("variant")
    candidates = variant_dim.choice if variant_dim is not None and variant_dim.kind == "choice" else [spec.adapter.variant]
    refused = [v for v in candidates or [] if v in adapters and "init" not in adapters[v].hyperparams]
    if not refused:
        return []
    able = sorted(v for v, cls in adapters.items() if "init" in cls.hyperparams)
    return [Problem("adapter.init", spec.adapter.init, f"{', '.join(refused)} start their adapters their own way; "
                    f"init is for {', '.join(able)} (to mix, search `init` with `when: {{variant: [...]}}`)")]


def renamed_options(adapters: dict[str, Any]) -> dict[str, str]:
    """Former option name -> its name now, over every variant (`Options.renamed`)."""
    return {old: new for cls in adapters.values()
            for old, new in (getattr(getattr(cls, "options", None), "renamed", None) or {}).items()}


def _adapter_option_problems(spec: Spec, adapters: dict[str, Any]) -> list[Problem]:
    """Keys of `adapter:` beyond the shared fields must be some variant's option, with a valid value."""
    problems, renamed = [], renamed_options(adapters)
    for key, value in (spec.adapter.model_extra or {}).items():
        models = _option_models(adapters, key)
        if not models and key in renamed:
            problems.append(Problem(f"adapter.{key}", value, f"renamed to '{renamed[key]}' (adapter.{renamed[key]})"))
            continue
        if not models:
            known = sorted(set(AdapterSpec.model_fields) | {
                f for cls in adapters.values() for f in getattr(getattr(cls, "options", None), "model_fields", {})})
            problems.append(Problem(f"adapter.{key}", value, f"unknown adapter option; allowed: {', '.join(known)}"))
            continue
        for model in models:
            problems += [Problem(f"adapter.{key}", value, m) for m in _field_problems(model, key, value)
                         if Problem(f"adapter.{key}", value, m) not in problems]
    return problems


def semantic_problems(spec: Spec) -> list[Problem]:
    """Every problem that needs the whole file (the second pass of validation)."""
    adapters = registry()
    space = spec.search.space
    adapter_dims = set().union(*(cls.hyperparams for cls in adapters.values())) if adapters else set()
    allowed = {"variant"} | TRAIN_DIMENSIONS | TASK_DIMENSIONS | adapter_dims
    problems = _variant_problems(spec, adapters)
    renamed = renamed_options(adapters)
    for name, dim in space.items():
        if name not in allowed and name in renamed:
            problems.append(Problem(f"search.space.{name}", dim.model_dump(by_alias=True, exclude_defaults=True),
                                    f"renamed to '{renamed[name]}' (search.space.{renamed[name]})"))
        elif name not in allowed:
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
    problems += _init_problems(spec, adapters)
    problems += _usable_problems(spec, adapters)
    when_problems = space_when_problems(space)
    problems += when_problems

    problems += _task_problems(spec)
    problems += _pruning_problems(spec)
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
    if not when_problems:
        problems += _compare_problems(spec)
    return problems


def _compare_problems(spec: Spec) -> list[Problem]:
    """`compare`, `trials_per_cell` and `seeds` (raysearch/experiment/comparison.py) fit the space and each other."""
    search, problems = spec.search, []
    if not search.compare:
        if search.trials_per_cell is not None:
            problems.append(Problem("search.trials_per_cell", search.trials_per_cell,
                                    "only used with search.compare (the dimensions whose cells get these trials)"))
        if search.seeds > 1:
            problems.append(Problem("search.seeds", search.seeds, "repeats the points of a comparison; set "
                                    "search.compare and search.trials_per_cell too"))
        return problems
    choices = [n for n, d in search.space.items() if d.kind == "choice" and n != SEED_DIMENSION]
    for i, name in enumerate(search.compare):
        dim = search.space.get(name)
        if dim is None or name == SEED_DIMENSION:
            problems.append(Problem(f"search.compare[{i}]", name, f"no dimension named '{name}' to compare; "
                                    f"compare takes choice dimensions: {', '.join(choices) or 'none defined'}"))
        elif dim.kind != "choice":
            problems.append(Problem(f"search.compare[{i}]", name, f"'{name}' is a `{dim.kind}` dimension; a cell is a "
                                    "combination of `choice` values, so compare takes choice dimensions"))
        elif any(key not in search.compare for key in dim.when or {}):
            problems.append(Problem(f"search.compare[{i}]", name, f"'{name}' has `when` on "
                                    f"{', '.join(k for k in dim.when if k not in search.compare)}, which is not "
                                    "compared; compare that dimension too"))
        elif search.compare.index(name) != i:
            problems.append(Problem(f"search.compare[{i}]", name, "named twice"))
    if search.trials_per_cell is None:
        problems.append(Problem("search.trials_per_cell", MISSING, "required with search.compare: the trials each "
                                "cell gets (e.g. 6)"))
    if search.sampler == "grid":
        problems.append(Problem("search.sampler", "grid", "a comparison fixes every cell's points itself; "
                                "remove sampler: grid"))
    expected = search.space.get(SEED_DIMENSION)
    if search.seeds > 1 and (expected is None or expected.choice != [spec.train.seed + i for i in range(search.seeds)]):
        problems.append(Problem("search.space.seed", expected.model_dump(by_alias=True, exclude_defaults=True)
                                if expected else MISSING, f"with search.seeds the seeds are the dimension `seed`: "
                                f"remove it from the space (it becomes train.seed .. train.seed + {search.seeds - 1})"))
    if not problems and "num_trials" in search.model_fields_set:
        total = num_trials_for(search)
        if search.num_trials != total:
            problems.append(Problem("search.num_trials", search.num_trials, f"a comparison runs cells x trials_per_cell "
                                    f"x seeds = {total} trials; remove num_trials or set it to {total}"))
    others = [n for n in search.space if n not in search.compare and n != SEED_DIMENSION]
    if not problems and not others and search.trials_per_cell > 1:
        problems.append(Problem("search.trials_per_cell", search.trials_per_cell, "every dimension is compared, so "
                                "a cell has one configuration: use trials_per_cell: 1 (and seeds for repeats)"))
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
    from trainables.entry import source_name as default_name  # no heavy imports

    return default_name(item if isinstance(item, str) else item.path)


def _task_problems(spec: Spec) -> list[Problem]:
    """What the task type rules out: metrics, fields and models of the other type."""
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


def _pruning_problems(spec: Spec) -> list[Problem]:
    """What the file alone says about `pruning:`: the ratios it applies, and a causal LM to prune.
    What needs the model's config or the calibration file is preflight's
    (raysearch/experiment/model_probe.py `pruning_problems`)."""
    pruning, problems = spec.pruning, []
    if pruning is None:
        return problems
    if pruning.ratio is None and (pruning.attention_ratio is None or pruning.mlp_ratio is None):
        problems.append(Problem("pruning.ratio", MISSING, "required: the fraction of KV groups and MLP channels "
                                "every layer loses, in (0, 1), e.g. 0.25 (or set both pruning.attention_ratio and "
                                "pruning.mlp_ratio)"))
    elif pruning.effective() == (0, 0):
        problems.append(Problem("pruning", {"attention_ratio": 0, "mlp_ratio": 0}, "removes nothing: give "
                                "attention_ratio or mlp_ratio a value in (0, 1), or remove the pruning section"))
    if spec.task.type != "causal_lm":
        problems.append(Problem("task.type", spec.task.type, "`pruning` removes a decoder's KV groups and MLP channels: "
                                "it needs task.type causal_lm with a LLaMA-family model (builtin:smollm2, "
                                "builtin:tiny-llama, a folder or hub id), or remove the pruning section"))
    if spec.model == "builtin:minilm" and spec.task.type != "causal_lm":  # with causal_lm, _task_problems says it
        problems.append(Problem("model", spec.model, "builtin:minilm is a BERT encoder, not a causal LM: `pruning` "
                                "needs a LLaMA-family decoder (builtin:smollm2, builtin:tiny-llama, a folder or hub id)"))
    if pruning.importance == "magnitude" and pruning.calibration.model_dump(exclude_defaults=True):
        problems.append(Problem("pruning.calibration", pruning.calibration.model_dump(exclude_defaults=True),
                                "only read by importance: taylor; magnitude needs no data. Remove it, or set "
                                "importance: taylor"))
    return problems


def _grid_problems(search: SearchSpec) -> list[Problem]:
    if not any(dim.kind == "choice" for dim in search.space.values()):
        return [Problem("search.sampler", "grid", "grid needs at least one `choice` dimension")]
    size = len(grid_points(search.space))
    if "num_trials" in search.model_fields_set and search.num_trials != size:
        return [Problem("search.num_trials", search.num_trials,
                        f"the grid has {size} points; remove num_trials or set it to {size}")]
    return []
