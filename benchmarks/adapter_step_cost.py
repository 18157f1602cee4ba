"""Adapter step cost: every registered variant vs PEFT LoRA at the same (starting) rank.

For each model (MiniLM-L6 classifier, a small LLaMA-style causal LM built from a
config) and each variant, one process builds the adapter exactly as the training
loop does (construct -> prepare -> attach -> AdamW on `param_groups`) and times
training steps through the hooks: forward + extra_loss + backward + clip (what the loop clips) +
optimizer.step (the step time), then `after_step` separately. Variants are measured interleaved, round by round,
so machine noise hits all of them alike; the ratio to LoRA is per round, then the
median is reported. One-off costs (GoRA's gradient pass in `prepare`, ALoRA's
scoring rounds and AdaLoRA's allocation inside `after_step`) are reported as a
fraction of the whole measured run.

Memory: after the timed rounds, one more step counts, storage by storage, what a training
step holds: every weight, the trainable ones' gradients and AdamW state, and the
activations autograd saves for backward (its saved-tensor hooks). Not all are alive at
once (gradients appear as backward frees the saved activations), so their sum overstates
their part of the peak. Counting tensors rather than asking the allocator gives the same
bytes on any device, CPU included; it leaves out allocator overhead and short-lived
temporaries, which a CUDA run's `torch.cuda.max_memory_allocated` would add.

    python benchmarks/adapter_step_cost.py            # full: ~8 min on 2 CPU cores
    python benchmarks/adapter_step_cost.py --quick    # seconds; what the test runs
    python benchmarks/adapter_step_cost.py --models llama-4x256 --variants rora salora sora --rounds 15 --steps 10
        # a longer look at a few variants on one model
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from trainables.adapters import ADAPTERS  # noqa: E402
from trainables.loop import clipped_parameters  # noqa: E402
from trainables.models import resolve_model_path  # noqa: E402

LLAMA = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, vocab_size=2048, max_position_embeddings=256)
LLAMA_QUICK = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    task_type: str
    vocab: int
    batch: int
    seq: int


@dataclass
class Measured:
    steps: list[float] = field(default_factory=list)  # seconds per training step, one per round
    prepare_s: float = 0.0
    after_step_s: float = 0.0
    total_s: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)  # bytes, from `Runner.memory()`


def minilm(num_labels: int = 2) -> torch.nn.Module:
    return AutoModelForSequenceClassification.from_pretrained(resolve_model_path("builtin:minilm"),
                                                              num_labels=num_labels)


def llama(quick: bool) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **(LLAMA_QUICK if quick else LLAMA)))
    return build


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("tiny-llama", llama(True), "causal_lm", LLAMA_QUICK["vocab_size"], 4, 16)]
    return [Case("minilm-l6", minilm, "classification", 30522, 16, 64),
            Case("llama-4x256", llama(False), "causal_lm", LLAMA["vocab_size"], 8, 128)]


def batches(case: Case, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(5, case.vocab, (case.batch, case.seq), generator=g)
        labels = ids.clone() if case.task_type == "causal_lm" else torch.randint(0, 2, (case.batch,), generator=g)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def adapter_config(variant: str, rank: int) -> dict[str, Any]:
    return {"variant": variant, "rank": rank, "alpha": 2 * rank, "dropout": 0.0}


class Runner:
    """One variant on one model, set up like the loop; `step()` times one training step."""

    def __init__(self, case: Case, variant: str, rank: int, total_steps: int) -> None:
        torch.manual_seed(0)
        self.stream = batches(case, seed=1)
        self.adapter = ADAPTERS[variant](adapter_config(variant, rank), case.task_type, total_steps=total_steps)
        self.measured = Measured()
        model = case.build()
        started = time.perf_counter()
        self.adapter.prepare(model, batches(case, seed=2), next(batches(case, seed=3)))
        self.measured.prepare_s = time.perf_counter() - started
        self.model = self.adapter.attach(model)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.adapter.param_groups(self.model, 1e-4, 0.0))
        self.clipped = clipped_parameters(self.model, self.optimizer)  # as the loop: not SoRA's gates
        self.step_index = 0

    def step(self, saved: dict[int, int] | None = None) -> float:
        """One training step; with `saved`, also records the storages autograd keeps for backward."""
        self.step_index += 1
        batch = next(self.stream)
        started = time.perf_counter()
        with contextlib.nullcontext() if saved is None else self.recording(saved):
            loss = self.model(**batch).loss
            extra = self.adapter.extra_loss(self.model, self.step_index)
        (loss if extra is None else loss + extra).backward()
        torch.nn.utils.clip_grad_norm_(self.clipped, 1.0)
        self.optimizer.step()
        hook_started = time.perf_counter()
        self.adapter.after_step(self.model, self.step_index, batch)
        hook_s = time.perf_counter() - hook_started
        self.optimizer.zero_grad(set_to_none=True)
        self.measured.after_step_s += hook_s
        self.measured.total_s += time.perf_counter() - started
        return hook_started - started  # the step proper; `after_step` is accounted separately

    def recording(self, saved: dict[int, int]) -> Any:
        """Autograd's saved-tensor hooks, noting each saved storage that is not a parameter's."""
        weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)

    def memory(self) -> dict[str, int]:
        """What one training step holds, in bytes, counted tensor by tensor (not the allocator's
        view, so it is the same on any device): every weight, the trainable ones' gradients and
        AdamW state, and the activations autograd saves for the backward pass."""
        saved: dict[int, int] = {}
        self.step(saved)
        params = list(self.model.parameters())
        state = [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        memory = {"weights": sum(p.nbytes for p in params),
                  "gradients": sum(p.nbytes for p in params if p.requires_grad),
                  "optimizer": sum(t.nbytes for t in state),
                  "saved": sum(saved.values())}
        return memory | {"total": sum(memory.values())}


def measure(case: Case, variants: list[str], rank: int, rounds: int, steps_per_round: int) -> dict[str, Measured]:
    total_steps = rounds * steps_per_round + 2
    runners = {v: Runner(case, v, rank, total_steps) for v in variants}
    for runner in runners.values():  # warm-up: first steps allocate
        runner.step()
        runner.step()
    for _ in range(rounds):
        for variant, runner in runners.items():
            runner.measured.steps.append(statistics.median(runner.step() for _ in range(steps_per_round)))
    for variant, runner in runners.items():
        runner.measured.total_s += runner.measured.prepare_s
        runner.measured.memory = runner.memory()  # after the timed rounds, so its hooks time nothing
    return {v: r.measured for v, r in runners.items()}


def ratios(measured: dict[str, Measured]) -> dict[str, float]:
    """Per-round step time / LoRA's step time in the same round, median over rounds."""
    lora = measured["lora"].steps
    return {v: statistics.median(s / l for s, l in zip(m.steps, lora)) for v, m in measured.items()}


def report(case: Case, rank: int, measured: dict[str, Measured]) -> list[dict[str, Any]]:
    rows = []
    for variant, ratio in ratios(measured).items():
        m = measured[variant]
        one_off = m.prepare_s + m.after_step_s
        rows.append({"model": case.name, "variant": variant, "rank": rank,
                     "step_ms": 1000 * statistics.median(m.steps), "vs_lora": ratio,
                     "prepare_s": m.prepare_s, "after_step_share": m.after_step_s / m.total_s,
                     "one_off_share": one_off / m.total_s,
                     "memory_mb": {k: v / 2**20 for k, v in m.memory.items()},
                     "saved_vs_lora": m.memory["saved"] / measured["lora"].memory["saved"],
                     "memory_vs_lora": m.memory["total"] / measured["lora"].memory["total"]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<12} {'variant':<12} {'rank':>4} {'step ms':>9} {'x LoRA':>7} {'prepare s':>9} "
          f"{'hooks %':>8} {'one-off %':>9} {'saved MB':>9} {'x LoRA':>7} {'step MB':>8} {'x LoRA':>7}")
    for r in rows:
        print(f"{r['model']:<12} {r['variant']:<12} {r['rank']:>4} {r['step_ms']:>9.1f} {r['vs_lora']:>7.2f} "
              f"{r['prepare_s']:>9.2f} {100 * r['after_step_share']:>7.1f}% {100 * r['one_off_share']:>8.1f}% "
              f"{r['memory_mb']['saved']:>9.1f} {r['saved_vs_lora']:>7.2f} {r['memory_mb']['total']:>8.1f} "
              f"{r['memory_vs_lora']:>7.2f}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: checks the script runs")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--models", nargs="*", default=None, help="minilm-l6 and/or llama-4x256 (default both)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 6)
    variants = ["lora"] + [v for v in (args.variants or sorted(ADAPTERS)) if v != "lora"]
    rows: list[dict[str, Any]] = []
    for case in cases(args.quick):
        if args.models and not args.quick and case.name not in args.models:
            continue
        rows += report(case, args.rank, measure(case, variants, args.rank, rounds, steps))
    print_table(rows)
    print(f"\nrank {args.rank}, {rounds} rounds x {steps} steps, interleaved; x LoRA = median per-round ratio. "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu\n"
          "memory: one step's tensors, counted by storage (same on any device; allocator overhead and "
          "temporaries not included): saved = activations kept for backward; step = weights + trainable "
          "gradients + AdamW state + saved, more than is alive at once")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
