"""A structurally pruned base model: whole KV groups and MLP channels removed from a causal LM
(LLM-Pruner, Ma et al. 2023), built once per recipe and cached like `builtin:smollm2`.

**What is removed.** In a LLaMA-family decoder (llama, mistral, qwen2) every layer has
`num_key_value_heads` KV groups, a group being one key/value head with the `n_rep` query heads
that share it (GQA), and `intermediate_size` MLP channels. A KV group is the rows of k_proj and
v_proj of its head, the rows of q_proj of its query heads and the matching columns of o_proj; an
MLP channel is a row of gate_proj and of up_proj and a column of down_proj. Removing a group or
a channel removes exactly those rows and columns: the result is a smaller dense model of the
same architecture. transformers' config has one head count and one intermediate size for every
layer, so the pruning is *uniform per layer*: every layer keeps the same number of KV groups and
of channels, the ones that score highest in that layer. hidden_size, head_dim, the embeddings,
norms and lm_head are unchanged, so the folder loads with `AutoModelForCausalLM.from_pretrained`
alone (config: num_attention_heads, num_key_value_heads, intermediate_size, head_dim written).

**Importance**, per group or channel (`importance`; trainables/pruning_importance.py):
`taylor` (default), LLM-Pruner's element-wise first order, the sum over the group's weights of
|w · ∂L/∂w| on the calibration texts, the first-order estimate of what zeroing them changes in
the loss; `magnitude`, the L2 norm of the group's weights (no calibration data).

**Removed count**: round half up of ratio × count (`removed_count`), per layer; `attention_ratio`
and `mlp_ratio` default to `ratio`. A recipe that would leave no KV group or no channel is
refused before anything starts (raysearch/experiment/model_probe.py).

**torch-pruning** does the surgery. The MLP's coupled layers are found by its dependency graph
(`tp.DependencyGraph`: pruning gate_proj's output channels pulls in up_proj's outputs and
down_proj's inputs through the SiLU-and-multiply) and removed by the group's `prune()`; the
graph's group is checked to be exactly those three before anything is cut. For attention its
graph does not serve GQA: `get_pruning_group` from k_proj did not return on transformers 5's
LLaMA (`repeat_kv`'s expand and reshape), so the attention rows and columns are computed here
and removed with torch-pruning's pruning functions (`prune_linear_out_channels` on q/k/v,
`prune_linear_in_channels` on o_proj). For the same reason the importance is computed by
raysearch, not by `tp.importance.GroupTaylorImportance`.

**Calibration** (`taylor` only): `calibration.examples` records drawn with `calibration.seed`
from `calibration.data` (.json/.jsonl/.csv/.tsv/.parquet), each cut to `max_tokens` tokens. A
record's text is its `text` field, else its instruction record written as the Alpaca prompt plus
its `output` (the LLM-Adapters form). The default data is the experiment's own first source with
its test split (task.test_fraction, test_seed) left out, the same records trials never see.

**Cache**: `<cache>/models/pruned-<model>-<16 hex digits>/`, the digits the SHA-256 of the
recipe and the base model's identity (the SmolLM2 GGUF file's hash, a local folder's config
hash and weight files' sizes and times, a hub id as given) and the calibration file's hash.
Built under an exclusive `flock` on `<folder>.lock` into a temporary folder, marked `.complete`,
renamed into place; trials that start together wait on the lock and read the finished folder.
The folder holds fp32 weights (a trial loads them in its own precision), the tokenizer, the
recipe and what it did in `pruning.json` and the kept indices of every layer in
`pruning_kept.json`. Importance is measured in fp32, on a GPU when there is one.

This module (and pruning_importance.py) imports torch, transformers and torch-pruning only inside
the functions that build: the driver reaches the recipe, its hash and the calibration count
through trainables/entry.py.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from trainables.files import is_local_source, split_files
from trainables.pretrained import build_once, cache_dir, file_sha256
from trainables.pruning_importance import (calibration_batches, calibration_texts, head_dim_of, layers_of,
                                           magnitude_scores, num_kv_groups, parameter_count, projections,
                                           taylor_scores, top_indices)

RECIPE_FORMAT = 1  # bump when what a recipe builds changes: old folders are then not reused
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
IMPORTANCES = ("taylor", "magnitude")
RECIPE_FILE = "pruning.json"
KEPT_FILE = "pruning_kept.json"
TINY_LLAMA_VERSION = "tiny-llama-seed0-v1"  # builtin:tiny-llama is built from code: its identity is that code's


# --- the recipe: plain dicts, no torch ------------------------------------------------


def removed_count(ratio: float, total: int) -> int:
    """Groups (or channels) a layer loses: `ratio × total` rounded half up (0.5 of 3 is 2)."""
    return int(math.floor(ratio * total + 0.5))


def kept_counts(shape: Mapping[str, Any], attention_ratio: float, mlp_ratio: float) -> tuple[int, int]:
    """(KV groups, MLP channels) each layer keeps, from a config's `num_key_value_heads`
    (default: num_attention_heads) and `intermediate_size`."""
    groups = int(shape.get("num_key_value_heads") or shape["num_attention_heads"])
    channels = int(shape["intermediate_size"])
    return groups - removed_count(attention_ratio, groups), channels - removed_count(mlp_ratio, channels)


def default_calibration_source(task: Mapping[str, Any]) -> str | None:
    """The experiment's own data, when `calibration.data` is unset: the first source of
    `task.dataset` if it is a local file or folder of records read as they are (not a table
    through templates); a folder gives its train file. None when there is no such source."""
    items = task.get("dataset")
    first = (items[0] if items else None) if isinstance(items, list) else items
    if isinstance(first, Mapping):
        if first.get("instruction"):
            return None
        first = first.get("path")
    if not isinstance(first, str) or not is_local_source(first):
        return None
    path = Path(first).expanduser()
    if path.is_dir():
        files = split_files(path)
        return str(files[0].resolve()) if files else None
    return str(path.resolve()) if path.exists() else str(path)


def pruning_recipe(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recipe of an experiment (a trial's config, or an experiment file's dump: `model`,
    `task` and the `pruning` section), with every default filled in; None without pruning.

    The calibration data defaults to the experiment's first source, its test split left out
    (`test_fraction`, `test_seed`); an explicit file is read whole. `magnitude` has no calibration."""
    section = config.get("pruning")
    if not section:
        return None
    ratio = section.get("ratio")
    attention = section.get("attention_ratio")
    mlp = section.get("mlp_ratio")
    importance = section.get("importance") or "taylor"
    recipe: dict[str, Any] = {
        "model": config["model"],
        "importance": importance,
        "attention_ratio": float(ratio if attention is None else attention),
        "mlp_ratio": float(ratio if mlp is None else mlp),
        "calibration": None,
    }
    if importance == "taylor":
        calibration = dict(section.get("calibration") or {})
        task = config.get("task") or {}
        data = calibration.get("data")
        own = data is None
        if own:
            data = default_calibration_source(task)
        recipe["calibration"] = {  # the section's defaults (raysearch/experiment/pruning.py) where one is missing
            "data": data,
            "examples": int(calibration.get("examples") or 32),
            "max_tokens": int(calibration.get("max_tokens") or 256),
            "seed": int(calibration.get("seed") or 0),
            # the experiment's own file: the records its test split holds are not read
            "test_fraction": float(task.get("test_fraction") or 0.0) if own else 0.0,
            "test_seed": int(task.get("test_seed") or 0) if own else 0,
        }
    return recipe


def base_identity(model: str) -> dict[str, Any]:
    """What names the base model's weights, cheaply: a pruned folder is rebuilt when it changes."""
    if model == "builtin:tiny-llama":
        return {"builtin": model, "version": TINY_LLAMA_VERSION}
    if model == "builtin:smollm2":
        from trainables.pretrained import smollm2_gguf

        gguf = smollm2_gguf()
        stat = gguf.stat()
        return {"builtin": model, "gguf_sha256": file_sha256(gguf, stat.st_size, stat.st_mtime_ns)}
    path = Path(model).expanduser()
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or path.exists():
        folder = path.resolve()
        config = folder / "config.json"
        weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) if folder.is_dir() else []
        return {"folder": str(folder),
                "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
                "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]}
    return {"hub": model}  # offline there is no revision to read: the id names it


def recipe_identity(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the pruned weights depend on: the recipe, the base model's identity and the
    calibration file's content."""
    identity = {"format": RECIPE_FORMAT, **recipe, "base": base_identity(recipe["model"])}
    calibration = recipe.get("calibration")
    if calibration:
        if not calibration.get("data") or not Path(calibration["data"]).is_file():
            raise ValueError(f"pruning.calibration.data: no calibration file ({calibration.get('data')!r}); set "
                             "it to a .json/.jsonl/.csv/.tsv/.parquet file of records")
        path = Path(calibration["data"])
        stat = path.stat()
        identity["calibration"] = {**calibration, "sha256": file_sha256(path, stat.st_size, stat.st_mtime_ns)}
    return identity


def recipe_hash(recipe: Mapping[str, Any], identity: Mapping[str, Any] | None = None) -> str:
    """SHA-256 (hex) of `recipe_identity` (or of `identity`, when already computed): what names
    the cached folder."""
    text = json.dumps(identity or recipe_identity(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def pruned_folder(recipe: Mapping[str, Any], digest: str | None = None) -> Path:
    """Where the recipe's pruned model is (or will be) cached."""
    digest = digest or recipe_hash(recipe)
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in recipe["model"].removeprefix("builtin:"))
    return cache_dir() / "models" / f"pruned-{slug.strip('-.')[-40:]}-{digest[:16]}"


def pruning_record(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the driver records of an experiment's pruning (MLflow params and tags, `raysearch
    export`): the recipe, its hash and the folder it is cached in; None without pruning."""
    recipe = pruning_recipe(config)
    if recipe is None:
        return None
    digest = recipe_hash(recipe)
    return {"recipe": recipe, "hash": digest, "folder": str(pruned_folder(recipe, digest))}


# --- the cache ----------------------------------------------------------------------------


def model_source(config: Mapping[str, Any]) -> str:
    """The model a trial (or `raysearch evaluate`) loads: the experiment's `model`, or with a
    `pruning` section its pruned folder, built first if no finished one is cached."""
    recipe = pruning_recipe(config)
    if recipe is None:
        return str(config["model"])
    return str(ensure_pruned(recipe))


def ensure_pruned(recipe: Mapping[str, Any]) -> Path:
    """The recipe's pruned folder, building it under the folder's lock if it is not cached."""
    return _ensure(recipe)[0]


def _ensure(recipe: Mapping[str, Any]) -> tuple[Path, bool]:
    """(folder, whether this call built it)."""
    folder = pruned_folder(recipe)
    return folder, build_once(folder, lambda tmp: build(recipe, tmp))


def build(recipe: Mapping[str, Any], folder: Path) -> str:
    """Prune the base model and write it to `folder` (build_once's temporary folder, renamed
    into place when this returns); returns the completion marker's text."""
    import torch

    from trainables.models import load_causal_lm

    started = time.time()
    model, tokenizer = load_causal_lm(recipe["model"], dtype=torch.float32)
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        raise ValueError(f"structured pruning supports {', '.join(SUPPORTED_TYPES)} models; "
                         f"{recipe['model']} is {config.model_type!r}")
    groups_kept, channels_kept = kept_counts(config.to_dict(), recipe["attention_ratio"], recipe["mlp_ratio"])
    if groups_kept < 1 or channels_kept < 1:
        raise ValueError(f"the recipe would leave {groups_kept} KV group(s) and {channels_kept} MLP channel(s) "
                         "per layer; lower pruning.ratio")
    before = parameter_count(model)
    shape = {"layers": config.num_hidden_layers, "attention_heads": config.num_attention_heads,
             "kv_groups": num_kv_groups(config), "head_dim": head_dim_of(config),
             "intermediate_size": config.intermediate_size}
    calibration = recipe.get("calibration")
    tokens = 0
    if recipe["importance"] == "taylor":
        batches = calibration_batches(tokenizer, calibration_texts(calibration), calibration["max_tokens"])
        tokens = int(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        scores = taylor_scores(model.to(device), batches)
        model.to("cpu")
    elif recipe["importance"] == "magnitude":
        scores = magnitude_scores(model)
    else:
        raise ValueError(f"unknown importance {recipe['importance']!r}; allowed: {', '.join(IMPORTANCES)}")
    kept = [(top_indices(kv, groups_kept), top_indices(mlp, channels_kept)) for kv, mlp in scores]
    pruned = prune(model, kept)
    after = parameter_count(pruned)
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    identity = recipe_identity(recipe)
    digest = recipe_hash(recipe, identity)
    record = {
        "recipe": dict(recipe), "hash": digest, "identity": identity,
        "method": "structured pruning of whole KV groups and MLP channels, uniform per layer (LLM-Pruner); "
                  f"importance {recipe['importance']}",
        "shape_before": shape,
        "shape_after": {**shape, "attention_heads": groups_kept * shape["attention_heads"] // shape["kv_groups"],
                        "kv_groups": groups_kept, "intermediate_size": channels_kept},
        "parameters": {"before": before, "after": after, "fraction_kept": after / before},
        "calibration_tokens": tokens,
        "build_seconds": round(time.time() - started, 2),
        "torch_pruning": _version("torch-pruning"),
    }
    (folder / RECIPE_FILE).write_text(json.dumps(record, indent=1))
    (folder / KEPT_FILE).write_text(json.dumps([{"kv_groups": g, "mlp_channels": c} for g, c in kept]))
    return f"pruned {recipe['model']} ({digest[:16]})\n"


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --- surgery ----------------------------------------------------------------------------


def prune(model: Any, kept: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Any:
    """A new model of the same architecture holding only the kept KV groups and MLP channels of
    every layer (`kept[layer] = (groups, channels)`, as many in every layer). The surgery is
    torch-pruning's; the result is rebuilt from the updated config and loaded strictly, so the
    config written with it is known to match its weights."""
    import warnings

    import torch
    import torch_pruning as tp
    from transformers import AutoModelForCausalLM

    config = model.config
    groups, d = num_kv_groups(config), head_dim_of(config)
    n_rep = config.num_attention_heads // groups
    channels = config.intermediate_size
    if len({len(g) for g, _ in kept}) != 1 or len({len(c) for _, c in kept}) != 1:
        raise ValueError("every layer must keep as many KV groups and as many MLP channels (one config for all)")
    model.eval()
    for parameter in model.parameters():  # the graph is traced through autograd
        parameter.requires_grad_(True)
    with warnings.catch_warnings():  # the norms' weights are "unwrapped parameters": never pruned here
        warnings.simplefilter("ignore")
        example = torch.tensor([[int(config.bos_token_id or 0)] * 4])
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                      output_transform=lambda out: out.logits)
    for layer, (kept_groups, kept_channels) in zip(layers_of(model), kept):
        modules = projections(layer)
        removed_groups = [g for g in range(groups) if g not in set(kept_groups)]
        q_rows = [g * n_rep * d + i for g in removed_groups for i in range(n_rep * d)]
        kv_rows = [g * d + i for g in removed_groups for i in range(d)]
        if removed_groups:
            tp.prune_linear_out_channels(modules["q"], q_rows)
            tp.prune_linear_out_channels(modules["k"], kv_rows)
            tp.prune_linear_out_channels(modules["v"], kv_rows)
            tp.prune_linear_in_channels(modules["o"], q_rows)
        removed_channels = sorted(set(range(channels)) - set(kept_channels))
        if removed_channels:
            group = graph.get_pruning_group(modules["gate"], tp.prune_linear_out_channels, idxs=removed_channels)
            touched = {(id(dep.target.module), graph.is_out_channel_pruning_fn(dep.handler))
                       for dep, _ in group.items if isinstance(dep.target.module, torch.nn.Linear)}
            expected = {(id(modules["gate"]), True), (id(modules["up"]), True), (id(modules["down"]), False)}
            if touched != expected:
                raise RuntimeError("torch-pruning's dependency graph couples other layers to this MLP's channels "
                                   "than gate/up (outputs) and down (inputs); this architecture is not supported")
            group.prune()
    new_config = config.__class__.from_dict(config.to_dict())
    kept_groups, kept_channels = len(kept[0][0]), len(kept[0][1])
    new_config.num_key_value_heads = kept_groups
    new_config.num_attention_heads = kept_groups * n_rep
    new_config.head_dim = d  # no longer hidden_size / num_attention_heads
    new_config.intermediate_size = kept_channels
    fresh = AutoModelForCausalLM.from_config(new_config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = model.generation_config
    return fresh.eval()
