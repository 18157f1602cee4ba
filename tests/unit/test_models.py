"""trainables.models: model paths, target modules per architecture, classifier heads."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from trainables.models import (
    TARGET_MODULES,
    classifier_head_names,
    linear_module_names,
    resolve_model_path,
    resolve_target_modules,
    tiny_config,
)

TINY_TYPES = ["bert", "roberta", "distilbert", "llama", "qwen2", "gpt2"]


def _tiny(model_type: str):
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type))


def test_builtin_minilm_resolves_to_a_model_folder():
    path = Path(resolve_model_path("builtin:minilm"))
    assert path.is_dir() and (path / "config.json").is_file()


def test_missing_local_path_and_unknown_builtin_are_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="unknown built-in model"):
        resolve_model_path("builtin:nope")


def test_existing_local_path_and_hub_id_pass_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_default_targets_match_layers_of_the_model(model_type):
    model = _tiny(model_type)
    targets = resolve_target_modules(model)
    assert targets == TARGET_MODULES[model_type]
    names = linear_module_names(model)
    for target in targets:
        assert any(n == target or n.endswith("." + target) for n in names), target


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_classifier_heads_are_top_level_modules(model_type):
    model = _tiny(model_type)
    heads = classifier_head_names(model)
    children = dict(model.named_children())
    assert heads and all(head in children for head in heads)
    expected = {"bert": "classifier", "roberta": "classifier", "distilbert": "classifier",
                "llama": "score", "qwen2": "score", "gpt2": "score"}[model_type]
    assert expected in heads


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_all_linear_is_every_linear_layer_but_the_head(model_type):
    model = _tiny(model_type)
    targets = resolve_target_modules(model, preset="all_linear")
    heads = classifier_head_names(model)
    assert targets == [n for n in linear_module_names(model) if n.split(".")[0] not in heads]
    assert set(targets) > {n for n in linear_module_names(model) for t in TARGET_MODULES[model_type]
                           if n == t or n.endswith("." + t)}  # the attention projections and more
    assert not any(t.split(".")[0] in heads for t in targets)


def test_all_linear_on_a_causal_lm_leaves_the_output_layer_alone():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    targets = resolve_target_modules(model, preset="all_linear")
    assert "lm_head" not in targets and len(targets) == 2 * 7  # q k v o gate up down in each of 2 layers


def test_override_wins_and_is_validated():
    model = _tiny("llama")
    assert resolve_target_modules(model, ["up_proj", "down_proj"]) == ["up_proj", "down_proj"]
    with pytest.raises(ValueError, match=r"\['c_attn'\].*candidates: .*'q_proj'"):
        resolve_target_modules(model, ["q_proj", "c_attn"])


def test_unknown_architecture_lists_linear_layers():
    model = _tiny("bert")
    model.config.model_type = "my-new-arch"
    with pytest.raises(ValueError, match=r"'my-new-arch'.*'query'.*adapter\.target_modules"):
        resolve_target_modules(model)


def test_tiny_config_is_tiny():
    config = tiny_config("llama", num_labels=3)
    assert config.hidden_size == 32 and config.num_hidden_layers == 2 and config.num_labels == 3
    with pytest.raises(ValueError, match="no tiny config"):
        tiny_config("t5")


def test_load_classifier_builtin_minilm():
    from trainables.models import load_classifier

    model, tokenizer = load_classifier("builtin:minilm", num_labels=3)
    assert model.config.num_labels == 3 and model.config.model_type == "bert"
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    assert classifier_head_names(model) == ["classifier"]
