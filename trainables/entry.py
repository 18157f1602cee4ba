"""The worker's code the driver calls, and its only way into trainables/ besides the names and
keys of trainables/contract.py (tests/unit/test_imports.py): the trial function Tune runs,
the adapter registry (to validate variant options), the scoring `raysearch evaluate` runs,
and what preflight probes on this machine before anything starts (raysearch/experiment/
model_probe.py and preflight.py: data files, model folders and configs, the SmolLM2 cache,
label counts, the pruning recipe and its calibration data). The file helpers and the pruning
recipe are stdlib only; everything else imports torch, transformers or datasets when first
called, so that importing this module stays light."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from trainables.files import is_local_source, source_name, split_files
from trainables.pruning import SUPPORTED_TYPES as PRUNABLE_MODEL_TYPES  # stdlib at import


def run_trial(sampled: dict[str, Any], base: dict[str, Any]) -> None:
    """The function Tune runs for each trial (trainables/trial.py): its sampled configuration and
    the experiment's base configuration; inline, or one Ray Train run."""
    from trainables.trial import run_trial as run

    run(sampled, base)


def adapter_registry() -> Mapping[str, Any]:
    """Variant name -> its Adapter class (trainables/adapters): what the experiment file may name."""
    from trainables.adapters import ADAPTERS

    return ADAPTERS


def score(*args: Any, **kwargs: Any) -> Any:
    """trainables/evaluation.py `evaluate`: an adapter or the bare model scored on held-out records."""
    from trainables.evaluation import evaluate

    return evaluate(*args, **kwargs)


def smollm2_gguf() -> Path:
    """builtin:smollm2's GGUF file (trainables/pretrained.py); nothing is converted."""
    from trainables.pretrained import smollm2_gguf as gguf

    return gguf()


def cache_dir() -> Path:
    """Where converted pretrained models are cached (trainables/pretrained.py)."""
    from trainables.pretrained import cache_dir as folder

    return folder()


def resolve_model_path(name: str) -> str:
    """A `model:` value as the worker loads it: a folder, a hub id, a built-in (trainables/models.py)."""
    from trainables.models import resolve_model_path as resolve

    return resolve(name)


def tiny_llama() -> tuple[Any, Any]:
    """builtin:tiny-llama, built from its config (model, tokenizer)."""
    from trainables.models import tiny_llama as build

    return build()


def matches_target(full_name: str, target: str) -> bool:
    """Whether a module name is one a `target_modules` entry selects (trainables/models.py)."""
    from trainables.models import matches_target as matches

    return matches(full_name, target)


def resolve_target_modules(model: Any, override: list[str] | None = None, preset: str = "attention") -> list[str]:
    """The modules an adapter wraps in `model` for `task.target` (or `adapter.target_modules`)."""
    from trainables.models import resolve_target_modules as resolve

    return resolve(model, override, preset)


def load_splits(task: dict[str, Any], seed: int = 0) -> Any:
    """The task's data as the worker reads it (trainables/data.py)."""
    from trainables.data import load_splits as load

    return load(task, seed)


def cached_hub_splits(source: str) -> Any | None:
    """An `hf:<id>[:<config>]` dataset's splits when the datasets cache holds it, read offline
    (nothing is downloaded, whatever the environment says); None when it is not cached."""
    import datasets
    import datasets.config as config

    dataset_id, _, name = source[len("hf:"):].partition(":")
    if not (Path(config.HF_DATASETS_CACHE) / dataset_id.replace("/", "___")).is_dir():
        return None
    offline = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = True
    try:
        return datasets.load_dataset(dataset_id, name or None)
    except Exception:  # noqa: BLE001 - not usable from the cache: the trials report why
        return None
    finally:
        config.HF_HUB_OFFLINE = offline


def pruning_recipe(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """An experiment's pruning recipe with its defaults filled in (trainables/pruning.py; stdlib,
    nothing read); None without a `pruning` section."""
    from trainables.pruning import pruning_recipe as recipe

    return recipe(config)


def pruning_record(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """An experiment's pruning recipe, its hash and its cache folder (trainables/pruning.py; the
    files are hashed, nothing is built); None without a `pruning` section."""
    from trainables.pruning import pruning_record as record

    return record(config)


def pruned_base(config: Mapping[str, Any]) -> Path:
    """The experiment's pruned base folder, built first (under its lock) if it is not cached."""
    from trainables.pruning import ensure_pruned, pruning_recipe

    recipe = pruning_recipe(config)
    if recipe is None:
        raise ValueError("the experiment has no pruning section")
    return ensure_pruned(recipe)


def calibration_problems(calibration: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, why) for a recipe's calibration data that cannot give its examples (stdlib only)."""
    from trainables.pruning_importance import calibration_problems as problems

    return problems(calibration)


def pruning_kept_counts(shape: Mapping[str, Any], attention_ratio: float, mlp_ratio: float) -> tuple[int, int]:
    """(KV groups, MLP channels) every layer keeps under these ratios, from a model config's fields."""
    from trainables.pruning import kept_counts

    return kept_counts(shape, attention_ratio, mlp_ratio)


def num_labels(splits: Any) -> int:
    """The label count a classification head gets from these splits."""
    from trainables.data import num_labels as count

    return count(splits)


__all__ = ["PRUNABLE_MODEL_TYPES", "adapter_registry", "run_trial", "score", "cache_dir", "cached_hub_splits",
           "calibration_problems", "is_local_source", "load_splits", "matches_target", "num_labels", "pruned_base",
           "pruning_kept_counts", "pruning_recipe", "pruning_record", "resolve_model_path", "resolve_target_modules", "smollm2_gguf",
           "source_name", "split_files", "tiny_llama"]
