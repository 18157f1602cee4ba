"""Checks of a valid experiment against this machine, before anything starts.

`load_spec` checks the file itself (shapes, types, ranges, variants, `when`). What it
cannot see is the world the file points at: data files, model folders, the MLflow
store, the results folder and the machine's CPUs/GPUs. `machine_problems` checks those,
cheaply (a file's header, not its records; one HTTP request with a short time-out), and
returns every problem at once, each with its YAML path and the fix. `raysearch run`
calls it before Ray is started, an MLflow run is opened or a folder is created.

Not checked, because they cannot be offline or without credentials: `hf:` datasets,
hub model ids, object-store storage (`s3://`, `gs://`: the first write checks it) and
database MLflow URIs other than sqlite.
"""
from __future__ import annotations

import csv
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from raysearch import storage
from raysearch.spec import Problem, Spec, dataset_paths
from trainables.files import VALIDATION_STEMS, find_split_file

HTTP_TIMEOUT_S = 3.0


def machine_problems(spec: Spec, storage_dir: str) -> list[Problem]:
    """Everything about `spec` this machine says no to (empty: fine to start)."""
    return [
        *dataset_problems(spec),
        *model_problems(spec),
        *target_problems(spec),
        *fit_problems(spec),
        *mlflow_problems(spec.tracking.mlflow_uri),
        *storage_problems(spec, storage_dir),
        *resource_problems(spec),
    ]


# --- data ------------------------------------------------------------------------------


def _is_local(source: str) -> bool:
    return not source.startswith(("hf:", "builtin:")) and "://" not in source


def _split_files(path: Path) -> list[Path]:
    """The files a local dataset is read from: the file itself, or a folder's train/validation files."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file())
    return [f for f in (find_split_file(files, ("train",)), find_split_file(files, VALIDATION_STEMS)) if f is not None]


def columns_of(path: Path) -> list[str] | None:
    """Column names of a data file, from its header or first record; None when that cannot be read cheaply."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(newline="", errors="replace") as f:
                reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
                return next(reader, [])
        if suffix == ".parquet":
            import pyarrow.parquet

            return list(pyarrow.parquet.read_schema(path).names)
        if suffix in (".json", ".jsonl"):
            with path.open(errors="replace") as f:
                head = f.read(1 << 20)  # the first record is in the first MiB of any sane file
            text = head.lstrip()
            if text.startswith("["):
                text = text[1:].lstrip()
            record, _ = json.JSONDecoder().raw_decode(text)
            return list(record) if isinstance(record, dict) else None
    except (OSError, ValueError, ImportError):
        return None
    return None


def dataset_problems(spec: Spec) -> list[Problem]:
    problems = []
    for where, source in dataset_paths(spec.task):
        if _is_local(source) and not Path(source).expanduser().exists():  # hf: ids are not looked up (offline)
            problems.append(Problem(where, source, "no such file or folder. Give an existing .csv/.tsv/.json/.jsonl/"
                                    ".parquet file or a folder with train.* (and validation.*/dev.*), hf:<id>, "
                                    "or builtin:demo"))
    source = spec.task.dataset
    if problems or spec.task.type != "classification" or not _is_local(source):
        return problems
    path = Path(source).expanduser()
    wanted = [("task.label_field", spec.task.label_field)]
    wanted += [("task.text_fields", name) for name in spec.task.text_fields or []]
    for file in _split_files(path):
        columns = columns_of(file)
        if columns is None:
            continue
        for field, name in wanted:
            if name not in columns:
                problems.append(Problem(field, name, f"no column {name!r} in {file}; its columns: "
                                        f"{', '.join(columns)}. Set {field} to one of them."))
    return problems


# --- model -----------------------------------------------------------------------------


def model_problems(spec: Spec) -> list[Problem]:
    """A local model folder must exist. `builtin:` models ship with the package; hub ids
    (`name` or `org/name`) are not checked: that needs the network (HF_HUB_OFFLINE)."""
    name = spec.model
    if name == "builtin:smollm2":
        from trainables.pretrained import smollm2_gguf  # the file only: nothing is converted here

        try:
            smollm2_gguf()
        except ValueError as error:
            return [Problem("model", name, str(error))]
        return []
    if name.startswith("builtin:"):
        return []
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        return [Problem("model", name, "no such model folder. Give an existing folder saved with "
                        "save_pretrained, a hub id like org/name, or builtin:minilm")]
    return []


def target_problems(spec: Spec) -> list[Problem]:
    """`adapter.target_modules` (and a `target_modules` dimension's choices) must name layers
    the model has: read from the model built on PyTorch's meta device from its config (no
    weights read, nothing allocated). Only when modules are named and the model is local or
    built in; hub ids are not looked up offline, and the presets are resolved per architecture."""
    named = [("adapter.target_modules", spec.adapter.target_modules)] if spec.adapter.target_modules else []
    dimension = spec.search.space.get("target_modules")
    if dimension is not None and dimension.choice:
        named += [(f"search.space.target_modules.choice[{i}]", list(value)) for i, value in enumerate(dimension.choice)
                  if isinstance(value, (list, tuple)) and value]
    if not named:
        return []
    model = _meta_model(spec)
    if model is None:
        return []
    from trainables.models import resolve_target_modules

    problems = []
    for where, modules in named:
        try:
            resolve_target_modules(model, list(modules))
        except ValueError as error:
            problems.append(Problem(where, list(modules), str(error)))
    return problems


def _model_path(spec: Spec) -> str | None:
    """Where the experiment's model config can be read offline (a folder, or an in-memory
    builtin's name); None for a hub id, or SmolLM2 before its first conversion."""
    name = spec.model
    if name == "builtin:smollm2":
        from trainables.pretrained import cache_dir

        folders = sorted((cache_dir() / "models").glob("smollm2-*/config.json"))
        return str(folders[-1].parent) if folders else None  # else the first trial converts and checks it
    if name in ("builtin:tiny-llama", "builtin:minilm") or Path(name).expanduser().is_dir():
        return name
    return None


# What `builtin:tiny-llama` (built in memory, no folder) would say in a config.json.
_IN_MEMORY_CONFIGS = {"builtin:tiny-llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}}


def _model_config(spec: Spec) -> dict | None:
    """The model's config.json as a dict (json only: no transformers import, no weights), or
    None where it cannot be read offline (see _model_path)."""
    path = _model_path(spec)
    if path is None:
        return None
    if path in _IN_MEMORY_CONFIGS:
        return dict(_IN_MEMORY_CONFIGS[path])
    from trainables.models import resolve_model_path

    try:
        return json.loads((Path(resolve_model_path(path)).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None  # a folder this check cannot read is the trials' to report


def _meta_model(spec: Spec):
    """The experiment's model with its layers but no weights (meta device); None when only its
    hub id is known, or the model cannot be built from its config here."""
    path = _model_path(spec)
    if path is None:
        return None
    import torch

    from trainables.contract import IN_MEMORY_BUILTINS
    from trainables.models import resolve_model_path

    try:
        if path in IN_MEMORY_BUILTINS:
            from trainables.models import tiny_llama

            return tiny_llama()[0]
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(resolve_model_path(path), trust_remote_code=spec.trust_remote_code)
        kind = AutoModelForCausalLM if spec.task.type == "causal_lm" else AutoModelForSequenceClassification
        with torch.device("meta"):
            return kind.from_config(config, trust_remote_code=spec.trust_remote_code)
    except Exception:  # noqa: BLE001 - a model this check cannot build is the trials' to report
        return None


def fit_problems(spec: Spec) -> list[Problem]:
    """What the model's config says no to: a task type it has no head for, a trained classifier
    head with another label count than the data's, a chat prompt without a chat template, and
    GoRA's rank cap above what the targeted layers can hold. Read from config files and the
    meta-device model, like `target_problems`; skipped for hub ids (offline)."""
    config = _model_config(spec)
    if config is None:
        return []
    problems = _task_type_problems(spec, config)
    if problems:
        return problems  # the other checks assume the task fits
    if spec.task.type == "classification":
        problems += _label_count_problems(spec, config)
    else:
        problems += _eos_problems(spec, config)
        if spec.task.prompt_template == "chat":
            problems += _chat_template_problems(spec)
    problems += _gora_rank_problems(spec)
    return problems


def _architectures(config: dict) -> list[str]:
    return list(config.get("architectures") or [])


GENERATING_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _task_type_problems(spec: Spec, config: dict) -> list[Problem]:
    model_type, architectures = config.get("model_type", "?"), _architectures(config)
    described = f"{spec.model} is a {model_type} model ({', '.join(architectures) or 'no architectures listed'})"
    if spec.task.type == "causal_lm":
        if architectures and not any(name.endswith(GENERATING_HEADS) for name in architectures):
            return [Problem("task.type", "causal_lm", f"{described}: an encoder or a model without a causal-LM head, "
                            "which cannot generate answers. Use a decoder (builtin:smollm2, a LLaMA/Qwen/GPT folder) "
                            "or task.type: classification")]
        return []
    if spec.model.startswith("builtin:") or any(name.endswith("ForSequenceClassification") for name in architectures):
        return []  # the built-in models (BERT, LLaMA) have the head; so does a folder saved with one
    # transformers' own table, imported only here: a driver with a built-in model never pays for it
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return [Problem("task.type", "classification", f"{described}: transformers has no sequence-classification "
                        "head for it. Use task.type: causal_lm, or a model with one (BERT, LLaMA, Qwen, ...)")]
    return []


def _label_count_problems(spec: Spec, config: dict) -> list[Problem]:
    """A folder whose classifier head is already trained (architectures name
    ...ForSequenceClassification) loads only with the label count it was trained for."""
    if not any(name.endswith("ForSequenceClassification") for name in _architectures(config)):
        return []  # a fresh head is sized to the data's labels
    labels = _data_label_count(spec)
    trained = len(config.get("id2label") or {}) or int(config.get("num_labels") or 0)
    if labels is None or not trained or labels == trained:
        return []
    return [Problem("model", spec.model, f"its classifier head was trained for {trained} labels; "
                    f"task.dataset has {labels} (task.label_field: {spec.task.label_field}). Use the base model "
                    "without that head (a folder saved from AutoModel) or data with the same labels")]


DATA_SIZE_TO_COUNT_LABELS = 50 << 20  # bytes: larger files are left to the first trial


def _data_label_count(spec: Spec) -> int | None:
    source = spec.task.dataset
    if not isinstance(source, str) or not (source == "builtin:demo" or _is_local(source)):
        return None
    if _is_local(source):
        path = Path(source).expanduser()
        files = _split_files(path) if path.exists() else []
        if not files or sum(f.stat().st_size for f in files) > DATA_SIZE_TO_COUNT_LABELS:
            return None
    from trainables.data import load_splits, num_labels

    try:
        return num_labels(load_splits(spec.task.model_dump()))
    except Exception:  # noqa: BLE001 - unreadable data is reported by dataset_problems or the first trial
        return None


def _eos_problems(spec: Spec, config: dict) -> list[Problem]:
    """A causal-LM answer ends with the tokenizer's EOS token (and padding falls back to it):
    a local folder must name one in config.json or its tokenizer files."""
    path = _model_path(spec)
    if path is None or path in _IN_MEMORY_CONFIGS or spec.model == "builtin:smollm2" or config.get("eos_token_id") is not None:
        return []
    from trainables.models import resolve_model_path

    folder = Path(resolve_model_path(path)).expanduser()
    for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if data.get("eos_token") or data.get("eos_token_id") is not None:
            return []
    return [Problem("model", spec.model, "its tokenizer names no EOS token (config.json, tokenizer_config.json, "
                    "special_tokens_map.json): a causal-LM answer could never end. Give a model folder whose "
                    "tokenizer has one")]


def _chat_template_problems(spec: Spec) -> list[Problem]:
    """From the tokenizer's files (tokenizer_config.json, chat_template.jinja/.json)."""
    path = _model_path(spec)
    if spec.model == "builtin:smollm2" or path is None:
        return []  # SmolLM2's GGUF carries its chat template
    if path not in _IN_MEMORY_CONFIGS:  # tiny-llama's tokenizer (MiniLM's vocabulary) has none
        from trainables.models import resolve_model_path

        folder = Path(resolve_model_path(path)).expanduser()
        if any((folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
            return []
        try:
            if json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"):
                return []
        except (OSError, ValueError):
            return []  # no tokenizer files this check can read: the trials' to report
    return [Problem("task.prompt_template", "chat", f"the tokenizer of {spec.model} has no chat template. "
                    "Use prompt_template: alpaca, or a template string with {instruction}")]


def _gora_rank_problems(spec: Spec) -> list[Problem]:
    """GoRA gives each layer up to `gora_r_max` ranks; a layer of shape d_out x d_in holds at
    most min(d_in, d_out) independent ones."""
    r_max = getattr(spec.adapter, "gora_r_max", None)
    if r_max is None or "gora" not in _variants(spec):
        return []
    model = _meta_model(spec)
    if model is None:
        return []
    from trainables.models import matches_target, resolve_target_modules

    try:
        targets = resolve_target_modules(model, list(spec.adapter.target_modules or []) or None)
    except (ValueError, TypeError):
        return []  # target_problems reports it
    smallest = min((min(module.in_features, module.out_features) for name, module in model.named_modules()
                    if hasattr(module, "in_features") and any(matches_target(name, t) for t in targets)), default=None)
    if smallest is None or r_max <= smallest:
        return []
    return [Problem("adapter.gora_r_max", r_max, f"above the smallest targeted layer's rank limit, "
                    f"min(d_in, d_out) = {smallest}. Allowed: 1..{smallest}")]


def _variants(spec: Spec) -> set[str]:
    dimension = spec.search.space.get("variant")
    if dimension is not None and dimension.choice:
        return {str(value) for value in dimension.choice}
    return {str(spec.adapter.variant)} if getattr(spec.adapter, "variant", None) else set()


# --- MLflow ----------------------------------------------------------------------------


def _writable_folder(path: Path) -> str | None:
    """Why files cannot be created at `path` (its folders created as needed); None if they can."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def mlflow_problems(uri: str) -> list[Problem]:
    from raysearch.redaction import redact  # the URI may carry user:password

    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HTTP_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return []  # the server answers (maybe 401/404 at /health): reachable
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            return [Problem("tracking.mlflow_uri", redact(uri),
                            f"the MLflow server does not answer within {HTTP_TIMEOUT_S:g} s ({reason}). Start it "
                            "(mlflow server --host 127.0.0.1 --port 5000) or pass --mlflow-uri sqlite:///mlflow.db")]
        return []
    database = storage.mlflow_file(uri)
    if database is None:
        return []  # databricks, postgresql://...: checked by MLflow at the first write
    if scheme == "sqlite":
        folder = Path(os.path.abspath(database)).parent
        if not folder.is_dir():
            return [Problem("tracking.mlflow_uri", redact(uri), f"folder {folder} does not exist (SQLite does not "
                            "create folders). Create it, or use e.g. --mlflow-uri sqlite:///mlflow.db")]
        if database.exists() and not os.access(database, os.W_OK):
            return [Problem("tracking.mlflow_uri", redact(uri), f"{database} is not writable")]
    why = _writable_folder(database / "x" if scheme != "sqlite" else database)
    if why:
        return [Problem("tracking.mlflow_uri", redact(uri), f"{why}. Choose an MLflow store in a folder you can "
                        "write, e.g. --mlflow-uri sqlite:///mlflow.db")]
    return []


# --- storage ---------------------------------------------------------------------------


def storage_problems(spec: Spec, storage_dir: str) -> list[Problem]:
    local = storage.local_path(storage_dir)
    if local is None:
        return []  # object stores: credentials and permissions are checked by the first write
    why = _writable_folder(local / "x")
    if why:
        return [Problem("storage", spec.storage or storage_dir, f"{why}; the results of search '{spec.name}' "
                        "cannot be written there. Choose another folder (--storage DIR or `storage:`).")]
    return []


# --- resources -------------------------------------------------------------------------


def resource_problems(spec: Spec) -> list[Problem]:
    """What one trial asks for must fit on this machine. Skipped on a cluster (RAY_ADDRESS),
    where `resources.init_ray` checks the cluster's totals and the autoscaler may add nodes."""
    resources, problems = spec.resources, []
    workers = resources.workers_per_trial
    if spec.train.batch_size % workers:
        problems.append(Problem("train.batch_size", spec.train.batch_size, f"not divisible by "
                                f"resources.workers_per_trial = {workers}; the global batch is split evenly "
                                "across workers. Choose a multiple of it."))
    if os.environ.get("RAY_ADDRESS"):
        return problems
    cpus = os.cpu_count() or 1
    if workers * resources.cpus_per_worker > cpus:
        problems.append(Problem("resources.cpus_per_worker", resources.cpus_per_worker,
                                f"a trial needs workers_per_trial x cpus_per_worker = {workers} x "
                                f"{resources.cpus_per_worker:g} CPUs; this machine has {cpus}. Lower them "
                                "(fractions such as 0.5 are allowed), or run on a cluster (RAY_ADDRESS)."))
    if resources.gpus_per_worker > 0:
        import torch  # only when GPUs are asked for: importing torch takes seconds

        gpus = torch.cuda.device_count()
        if workers * resources.gpus_per_worker > gpus:
            problems.append(Problem("resources.gpus_per_worker", resources.gpus_per_worker,
                                    f"a trial needs workers_per_trial x gpus_per_worker = {workers} x "
                                    f"{resources.gpus_per_worker:g} GPUs; this machine has {gpus}. Set "
                                    "gpus_per_worker: 0 to train on CPU, lower workers_per_trial, or run on "
                                    "a cluster with GPUs (RAY_ADDRESS)."))
    return problems
