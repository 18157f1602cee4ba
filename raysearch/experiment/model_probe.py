"""Checks of a valid experiment against its model, before anything starts, without loading
weights: the model folder or file is there, the target modules exist (per variant and
`task.target`), the task type fits the model's head, the label count, the tokenizer's end
token and chat template, GoRA's rank range, and a `pruning:` recipe against the model's shape
and its calibration data. Read from the model's config, or from the model built on the meta
device. Part of `preflight.machine_problems`.
"""
from __future__ import annotations

import json
from pathlib import Path

from raysearch.experiment.spec import MISSING, Problem, Spec
from trainables.entry import is_local_source, split_files

def model_problems(spec: Spec) -> list[Problem]:
    """A local model folder must exist. `builtin:` models ship with the package; hub ids
    (`name` or `org/name`) are not checked: that needs the network (HF_HUB_OFFLINE)."""
    name = spec.model
    if name == "builtin:smollm2":
        from trainables.entry import smollm2_gguf  # the file only: nothing is converted here

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
    from trainables.entry import resolve_target_modules

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
        from trainables.entry import cache_dir

        folders = sorted((cache_dir() / "models").glob("smollm2-*/config.json"))
        return str(folders[-1].parent) if folders else None  # else the first trial converts and checks it
    if name in ("builtin:tiny-llama", "builtin:minilm") or Path(name).expanduser().is_dir():
        return name
    return None


# What `builtin:tiny-llama` (built in memory, no folder) would say in a config.json.
_IN_MEMORY_CONFIGS = {"builtin:tiny-llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                             "num_attention_heads": 2, "num_key_value_heads": 2,
                                             "intermediate_size": 64}}
# builtin:smollm2's shape before its first conversion (its config.json once converted): SmolLM2-135M.
_SMOLLM2_SHAPE = {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536}


def _model_config(spec: Spec) -> dict | None:
    """The model's config.json as a dict (json only: no transformers import, no weights), or
    None where it cannot be read offline (see _model_path)."""
    path = _model_path(spec)
    if path is None:
        return None
    if path in _IN_MEMORY_CONFIGS:
        return dict(_IN_MEMORY_CONFIGS[path])
    from trainables.entry import resolve_model_path

    try:
        return json.loads((Path(resolve_model_path(path)).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None  # a folder this check cannot read is the trials' to report


def _meta_model(spec: Spec):
    """The experiment's model with its layers but no weights (meta device); None when only its
    hub id is known, or the model cannot be built from its config here. Built once per model,
    task type and trust setting (target_problems and the GoRA check both read it)."""
    path = _model_path(spec)
    if path is None:
        return None
    key = (path, spec.task.type, spec.trust_remote_code)
    if key not in _META_MODELS:
        _META_MODELS.clear()  # one model at a time: a meta model holds no weights, but its modules add up
        _META_MODELS[key] = _build_meta_model(path, spec)
    return _META_MODELS[key]


_META_MODELS: dict[tuple, object] = {}


def _build_meta_model(path: str, spec: Spec):
    import torch

    from trainables.contract import IN_MEMORY_BUILTINS
    from trainables.entry import resolve_model_path

    try:
        if path in IN_MEMORY_BUILTINS:
            from trainables.entry import tiny_llama

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
    if not isinstance(source, str) or not (source == "builtin:demo" or is_local_source(source)):
        return None
    if is_local_source(source):
        path = Path(source).expanduser()
        files = split_files(path) if path.exists() else []
        if not files or sum(f.stat().st_size for f in files) > DATA_SIZE_TO_COUNT_LABELS:
            return None
    from trainables.entry import load_splits, num_labels

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
    from trainables.entry import resolve_model_path

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
        from trainables.entry import resolve_model_path

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
    from trainables.entry import matches_target, resolve_target_modules

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


def pruning_problems(spec: Spec) -> list[Problem]:
    """What `pruning:` needs beyond the file: a LLaMA-family model (from its config; a hub id is
    not read offline), at least one KV group and one MLP channel left in every layer, and
    calibration data with `examples` readable records (taylor). Nothing is loaded or built."""
    from raysearch.experiment.pruning import pruning_config
    from trainables.entry import PRUNABLE_MODEL_TYPES, calibration_problems, pruning_kept_counts, pruning_recipe

    pruning = spec.pruning
    attention_ratio, mlp_ratio = pruning.effective() if pruning is not None else (None, None)
    if pruning is None or attention_ratio is None or mlp_ratio is None or spec.task.type != "causal_lm":
        return []  # load_spec reported it
    problems = []
    config = _model_config(spec) or (dict(_SMOLLM2_SHAPE) if spec.model == "builtin:smollm2" else None)
    if config is not None and config.get("model_type") not in PRUNABLE_MODEL_TYPES:
        problems.append(Problem("model", spec.model, f"`pruning` removes KV groups and MLP channels of "
                                f"{', '.join(PRUNABLE_MODEL_TYPES)} models; this is a {config.get('model_type', '?')!r} "
                                "model. Use a LLaMA-family decoder or remove the pruning section"))
    elif config is not None and all(config.get(k) for k in ("num_attention_heads", "intermediate_size")):
        groups = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        channels = int(config["intermediate_size"])
        kept_groups, kept_channels = pruning_kept_counts(config, attention_ratio, mlp_ratio)
        for kept, total, ratio, field, what in ((kept_groups, groups, attention_ratio, "attention_ratio", "KV groups"),
                                                (kept_channels, channels, mlp_ratio, "mlp_ratio", "MLP channels")):
            if kept >= 1:
                continue
            where = f"pruning.{field}" if getattr(pruning, field) is not None else "pruning.ratio"
            problems.append(Problem(where, ratio, f"would leave none of the {total} {what} of every layer of "
                                    f"{spec.model} ({ratio:g} x {total} rounds to {total}). Allowed: below "
                                    f"{(total - 0.5) / total:.4g}"))
    recipe = pruning_recipe(pruning_config(spec) or {})
    calibration = (recipe or {}).get("calibration")
    defaulted = pruning.calibration.data is None
    if calibration and not (defaulted and calibration["data"] and not Path(calibration["data"]).exists()):
        # (the experiment's own data file missing is dataset_problems' to report)
        for field, why in calibration_problems(calibration):
            value = calibration.get(field) if calibration.get(field) is not None else MISSING
            problems.append(Problem(f"pruning.calibration.{field}", value, why))
    return problems
