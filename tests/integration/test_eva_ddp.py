"""EVA under DDP: workers reading different batches start from the same A, the SVD of all
workers' layer inputs together (PEFT gathers them; two gloo processes, ~15 s)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from trainables.adapters import ADAPTERS
from trainables.adapters.lora import lora_layers

pytestmark = pytest.mark.integration

CONFIG = {"rank": 4, "alpha": 8, "scaling": "lora", "dropout": 0.0, "loraplus_ratio": None, "target_modules": None,
          "init": "eva"}


def worker_batches(rank: int, vocab: int):
    g = torch.Generator().manual_seed(100 + rank)  # each worker sees different data
    while True:
        yield {"input_ids": torch.randint(1, vocab, (6, 12), generator=g),
               "attention_mask": torch.ones(6, 12, dtype=torch.long), "labels": torch.randint(0, 2, (6,), generator=g)}


def eva_a(model_dir: str, rank: int) -> dict[str, torch.Tensor]:
    """Every layer's A after the EVA init on this worker's batches."""
    torch.manual_seed(1)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    adapter = ADAPTERS["lora"](CONFIG, "classification")
    adapter.prepare(base, worker_batches(rank, base.config.vocab_size), {})
    model = adapter.attach(base)
    return {name: layer.lora_A["default"].weight.detach().clone() for name, layer in lora_layers(model)}


def _worker(rank: int, world: int, init_file: str, model_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.save(eva_a(model_dir, rank), f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


def test_workers_with_different_batches_start_from_the_same_a(tiny_model_dir, tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path / "init"), str(tiny_model_dir), str(tmp_path)), nprocs=2)
    gathered = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    alone = eva_a(str(tiny_model_dir), 0)  # no process group: worker 0's batches only
    assert gathered[0].keys() == alone.keys() and alone
    for name in alone:
        torch.testing.assert_close(gathered[0][name], gathered[1][name])
        assert not torch.allclose(gathered[0][name], alone[name], atol=1e-3), name  # the other worker's inputs count
