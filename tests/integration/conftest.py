from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from trainables.models import resolve_model_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT with MiniLM's tokenizer, saved locally (built from a config)."""
    path = tmp_path_factory.mktemp("tiny-bert-minilm-vocab")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    config = AutoConfig.for_model("bert", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
