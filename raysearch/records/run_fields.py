"""What a trial's MLflow run records, derived from Tune's objects: params from a config
(flattened, secrets masked), metrics from a reported result, the step it belongs to, the
scaling rule a variant applies, where the trial's checkpoint is, and the pruning recipe of the
base every trial trained on."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from raysearch.experiment.redaction import loggable
from raysearch.records.mlflow_reader import TAG_PRUNED_BASE, TAG_PRUNING_HASH, finite
from trainables.contract import ADAPTER_PARAMS, CHECKPOINT_PATH, RESUMED_FROM_STEP, STEP

_PLAIN_METRICS = (ADAPTER_PARAMS, "train_loss", "lr", "epoch", RESUMED_FROM_STEP, "eval_s")
_MAX_PARAM_CHARS = 6000  # MLflow 3 limit on a param value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def artifact_location(mlflow_uri: str, experiment_name: str) -> str | None:
    """A sqlite store keeps artifacts next to its database file, not in the driver's working
    directory (MLflow's default), which for a Ray job is a temporary copy of the project.
    None for servers and databases: the server decides."""
    if not mlflow_uri.startswith("sqlite:///"):
        return None
    database = Path(mlflow_uri[len("sqlite:///"):]).resolve()
    return (database.parent / "mlruns" / experiment_name).as_uri()


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened, stringified, secret-free params ready for MLflow."""
    params = {}
    for key, value in flatten(config).items():
        params[key] = loggable(key, value)[:_MAX_PARAM_CHARS]
    return params


def metrics_of(result: Mapping[str, Any], extra_keys: Iterable[str] = ()) -> dict[str, float]:
    """The finite metrics of one reported result worth keeping in MLflow."""
    wanted = {k for k in result if k.startswith("val_")} | set(_PLAIN_METRICS) | set(extra_keys)
    return {k: float(result[k]) for k in sorted(wanted) if k in result and finite(result[k])}


def scaling_rule(exponent: float) -> str:
    """The adapter scale alpha / r**p as text: alpha/r (LoRA), alpha/sqrt(r) (RoRA, rsLoRA, GoRA)."""
    if exponent == 1.0:
        return "alpha/r"
    if exponent == 0.5:
        return "alpha/sqrt(r)"
    return f"alpha/r^{exponent:g}"


def result_step(result: Mapping[str, Any]) -> int:
    step = result.get(STEP)
    if step is None or not finite(step):
        step = result.get("training_iteration", 0) or 0
    return int(step)


def trial_checkpoint(trial: Any, result: dict, storage_scheme: str = "") -> Any:
    """The trial's checkpoint: Tune's own, or the Ray Train checkpoint whose path the
    Tune function forwarded (TuneReportCallback reports it as `checkpoint_path`, without
    its filesystem: `bucket/key` for s3://bucket/key, so the scheme is put back)."""
    if getattr(trial, "checkpoint", None) is not None:
        return trial.checkpoint
    path = result.get(CHECKPOINT_PATH)
    if not path:
        return None
    from ray.tune import Checkpoint

    if storage_scheme and "://" not in path:
        path = f"{storage_scheme}://{path}"
    return Checkpoint(path)


def pruning_fields(record: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) every trial run of a search on a pruned base carries: the recipe as
    `pruning.*` params (`pruning.importance`, `pruning.attention_ratio`, `pruning.mlp_ratio`,
    `pruning.calibration.data`, ..., `pruning.base_model`), and the cache folder and recipe hash as
    tags (`trainables/entry.py` `pruning_record`). Empty without pruning."""
    if not record:
        return {}, {}
    recipe = dict(record["recipe"])
    base = recipe.pop("model")
    params = params_of({"pruning": {**recipe, "base_model": base}})
    params = {k: v for k, v in params.items() if k != "pruning.calibration" or v != "None"}
    tags = {TAG_PRUNED_BASE: str(record["folder"]), TAG_PRUNING_HASH: str(record["hash"])}
    return params, tags
