"""Checks of a valid experiment against this machine, before anything starts.

`load_spec` checks the file itself (shapes, types, ranges, variants, `when`). What it
cannot see is the world the file points at: data files, model folders, the MLflow
store, the results folder and the machine's CPUs/GPUs. `machine_problems` checks those,
cheaply (a file's header, not its records; one HTTP request with a short time-out), and
returns every problem at once, each with its YAML path and the fix. `raysearch run`
calls it before Ray is started, an MLflow run is opened or a folder is created.

Not checked, because they cannot be offline or without credentials: `hf:` datasets the
local cache does not hold (a cached one is read from the cache and checked), hub model ids, object-store storage (`s3://`, `gs://`: the first write checks it) and
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

from raysearch.search import storage
from raysearch.experiment.spec import Problem, Spec, dataset_paths
from raysearch.experiment.model_probe import fit_problems, model_problems, pruning_problems, target_problems
from trainables.entry import is_local_source, split_files

HTTP_TIMEOUT_S = 3.0


def machine_problems(spec: Spec, storage_dir: str) -> list[Problem]:
    """Everything about `spec` this machine says no to (empty: fine to start)."""
    return [
        *dataset_problems(spec),
        *model_problems(spec),
        *target_problems(spec),
        *fit_problems(spec),
        *pruning_problems(spec),
        *mlflow_problems(spec.tracking.mlflow_uri),
        *storage_problems(spec, storage_dir),
        *resource_problems(spec),
    ]


# --- data ------------------------------------------------------------------------------


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
        if is_local_source(source) and not Path(source).expanduser().exists():  # hf: ids are not looked up (offline)
            problems.append(Problem(where, source, "no such file or folder. Give an existing .csv/.tsv/.json/.jsonl/"
                                    ".parquet file or a folder with train.* (and validation.*/dev.*), hf:<id>, "
                                    "or builtin:demo"))
    if not problems:
        problems.extend(column_problems(spec))
    if not problems:  # the columns are there: what every row holds
        problems.extend(record_problems(spec))
    if not problems and spec.task.type == "causal_lm" and spec.task.scoring == "options":
        problems.extend(choice_file_problems(spec))
    return problems


def column_problems(spec: Spec) -> list[Problem]:
    """A local classification file's label and text columns, from its header or first record."""
    source, problems = spec.task.dataset, []
    if spec.task.type != "classification" or not is_local_source(source):
        return problems
    path = Path(source).expanduser()
    wanted = [("task.label_field", spec.task.label_field)]
    wanted += [("task.text_fields", name) for name in spec.task.text_fields or []]
    for file in split_files(path):
        columns = columns_of(file)
        if columns is None:
            continue
        for field, name in wanted:
            if name not in columns:
                problems.append(Problem(field, name, f"no column {name!r} in {file}; its columns: "
                                        f"{', '.join(columns)}. Set {field} to one of them."))
    return problems


def record_problems(spec: Spec) -> list[Problem]:
    """Every row of every local data file the task reads (trainables/records.py): readable,
    not empty, with the fields the task trains on. Streamed; SST-2's 67k rows take ~0.2 s."""
    from trainables.contract import data_problems

    task, problems = spec.task, []
    items = task.dataset if isinstance(task.dataset, list) else [task.dataset]
    for (where, source), item in zip(dataset_paths(task), items):
        if is_local_source(source):
            files = [(str(file), {}) for file in split_files(Path(source).expanduser())]
            training = bool(files) and (Path(files[0][0]) == Path(source).expanduser()
                                        or Path(files[0][0]).stem.lower().startswith("train"))
        elif source.startswith("hf:"):
            from trainables.entry import cached_hub_splits

            splits = cached_hub_splits(source)  # checked only when the datasets cache has it
            if splits is None:
                continue
            if "train" not in splits:
                problems.append(Problem(where, source, f"the cached dataset has no 'train' split (its splits: "
                                        f"{', '.join(splits)}). Nothing was started."))
                continue
            named = ["train", *[n for n in ("validation", "dev") if n in splits][:1]]
            files = [(f"{source} (cached, split {n})", {"rows": iter(splits[n])}) for n in named]
            training = True
        else:
            continue
        if task.type == "classification":
            needs = {"fields": [task.label_field, *(task.text_fields or [])], "label_field": task.label_field}
        elif getattr(item, "instruction", None):  # a labelled table through templates
            needs = {"fields": [item.label_field], "templates": [item.instruction, item.output],
                     "label_field": item.label_field, "label_names": item.label_names}
        else:
            needs = {"instructions": True}
        labels: list[set[str]] = []
        for number, (file, given) in enumerate(files):
            labels.append(set())
            split = (task.test_fraction, len(files) > 1) if number == 0 and training else None
            problems.extend(Problem(where, file, f"{message}. Nothing was started: fix the data or leave "
                                    "the source out.")
                            for message in data_problems(file, **needs, split=split, labels=labels[-1], **given))
        unseen = sorted(labels[1] - labels[0]) if len(labels) > 1 and task.type == "classification" else []
        if unseen and not problems:
            problems.append(Problem(where, files[1][0], f"labels {unseen[:5]} are not in the training file "
                                    f"{files[0][0]} (its labels: {sorted(labels[0])[:10]}): the head would have "
                                    "classes no trial trains on. Nothing was started: fix the labels."))
    return problems


def choice_file_problems(spec: Spec) -> list[Problem]:
    """`scoring: options` reads every multiple-choice record's options: a local JSON/JSONL source
    with a record whose options or gold answer cannot be read is refused, naming the record."""
    from trainables.contract import choice_problems

    problems = []
    items = spec.task.dataset if isinstance(spec.task.dataset, list) else [spec.task.dataset]
    for (where, source), item in zip(dataset_paths(spec.task), items):
        if getattr(item, "instruction", None) or not is_local_source(source):
            continue  # a labelled table through templates: its options are the template's answer format
        for file in split_files(Path(source).expanduser()):
            if file.suffix.lower() not in (".json", ".jsonl"):
                continue
            try:
                found = choice_problems(str(file))
            except (OSError, ValueError) as error:
                found = [f"cannot be read as JSON records ({error})"]
            problems.extend(Problem(where, str(file), f"{message}. With task.scoring: options every record that "
                                    "offers options (AnswerN:/SolutionN:/EndingN:/OptionN:, an 'Answer format:' "
                                    "line, or `choices`) needs them readable and an `answer` naming one of them.")
                            for message in found)
    return problems


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
    from raysearch.experiment.redaction import redact  # the URI may carry user:password

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
