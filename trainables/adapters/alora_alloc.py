"""ALoRA (Liu et al., 2024, "ALoRA: Allocating Low-Rank Adaptation for Fine-tuning Large
Language Models"): ablation-scored rank reallocation between modules, under a fixed budget.

    z = s · B (m ⊙ A x),   m ∈ {0,1}^(rank + spare): `rank` live slots per module at the start
    IS(k) = [S(M) − S(M ∖ k)] + [S(M | m ← {k}) − S(M | m ← ∅)],   S = −loss on one fixed val batch
    each round: switch off the n_A lowest-IS ranks, open as many slots in modules that lost none

Registered as "alora_alloc", not "alora": PEFT's aLoRA (`LoraConfig(alora_invocation_tokens=...)`)
is *Activated* LoRA, a different method (an adapter that switches on at an invocation string).

Rounds fall at `alora_first_round` of the steps and then evenly; the budget rank · n_modules
holds after every round. The schedule, the module-emptied baseline in the third term, how a
reopened slot starts, DDP, and the tests: docs/variants.md, ALoRA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainables.adapters.base import Options
from trainables.adapters.gated import Gate, GatedLoRA

NEVER_LIVE = -1  # `closed_at` of a spare slot that has never been open


class ALoRAOptions(Options):
    alora_rounds: int = Field(3, ge=0)
    """N_A: reallocation rounds (0: plain LoRA with a fixed rank)."""
    alora_ranks_per_round: int = Field(4, ge=1)
    """n_A: ranks switched off (and as many opened elsewhere) per round, over all modules."""
    alora_spare: int | None = Field(None, ge=0)
    """Spare slots per module, the most ranks a module can gain. None: min(rank, N_A · n_A): a module
    can double its rank, or take every rank the rounds move."""
    alora_first_round: float = Field(0.25, gt=0, lt=1)
    """K1: fraction of the steps before the first round; the rounds split the rest evenly (K2 = (1 − K1) / N_A)."""


class ALoRAGate(Gate):
    """A binary, non-trainable mask over the slots; `variants` (V, slots) masks V copies of a
    batch at once while scoring (the batch dimension holds V blocks of the same batch)."""

    def __init__(self, slots: int, live: int) -> None:
        super().__init__(slots)
        mask = torch.zeros(slots)
        mask[:live] = 1.0
        self.register_buffer("mask", mask)
        closed_at = torch.full((slots,), NEVER_LIVE, dtype=torch.long)
        closed_at[:live] = 0
        self.register_buffer("closed_at", closed_at)  # step a slot was last switched off
        self.variants: torch.Tensor | None = None

    def forward(self) -> torch.Tensor:
        return self.mask

    def gate_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.variants is None:
            return super().gate_input(module, args)
        (ax, *rest) = args
        n_variants = self.variants.shape[0]
        gated = ax.reshape(n_variants, -1, ax.shape[-1]) * self.variants[:, None, :].to(ax.dtype)
        return (gated.reshape(ax.shape), *rest)

    def live_slots(self) -> list[int]:
        return self.mask.nonzero().flatten().tolist()

    def free_slots(self) -> int:
        return self.slots - len(self.live_slots())


@dataclass
class Round:
    """What one reallocation round did (kept on the adapter, for tests and inspection)."""

    step: int
    closed: list[tuple[str, int, float]] = field(default_factory=list)  # (module, slot, IS)
    opened: list[tuple[str, int]] = field(default_factory=list)  # (module, slot)


class ALoRA(GatedLoRA):
    name: ClassVar[str] = "alora_alloc"
    options: ClassVar[type[Options]] = ALoRAOptions
    score_rows: ClassVar[int] = 64  # rows per scoring forward: as many masked copies of the val batch as fit

    def __init__(self, config: dict[str, Any], task_type: str = "classification", total_steps: int = 1) -> None:
        super().__init__(config, task_type, total_steps)
        self.opts: ALoRAOptions
        self.val_batch: dict[str, torch.Tensor] | None = None
        self.generator: torch.Generator | None = None
        self.history: list[Round] = []

    # -- the gated layer --------------------------------------------------------------------
    def spare(self) -> int:
        if self.opts.alora_spare is not None:
            return self.opts.alora_spare
        return min(int(self.config["rank"]), self.opts.alora_rounds * self.opts.alora_ranks_per_round)

    def slots(self) -> int:
        return int(self.config["rank"]) + self.spare()

    def make_gate(self, name: str, slots: int) -> Gate:
        return ALoRAGate(slots, live=int(self.config["rank"]))

    def round_steps(self) -> list[int]:
        """The steps after which a round runs: K1, then the rest of training split evenly."""
        first, rounds = self.opts.alora_first_round, self.opts.alora_rounds
        steps = {math.ceil(self.total_steps * (first + (1 - first) * i / rounds)) for i in range(rounds)}
        return sorted(s for s in steps if 1 <= s < self.total_steps)

    def budget_settles_at(self) -> int:
        return max(self.round_steps(), default=0)  # the last round reallocates and closes slots

    # -- hooks --------------------------------------------------------------------------------
    def prepare(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], val_batch: dict[str, torch.Tensor]
    ) -> None:
        self.val_batch = {k: v.detach().cpu() for k, v in val_batch.items()}

    def attach(self, model: nn.Module) -> nn.Module:
        # Same seed on every worker (the loop seeds each one alike): same new A rows everywhere.
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        return super().attach(model)

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        # Masks and closing steps are gate buffers (in the model); the rows drawn for the
        # slots opened by later rounds come from this generator.
        return {"generator": self.generator.get_state()}

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def after_step(self, model: nn.Module, step: int, batch: dict[str, torch.Tensor]) -> None:
        if step in self.round_steps():
            self.reallocate(model, step)

    # -- one round ------------------------------------------------------------------------------
    @torch.no_grad()
    def reallocate(self, model: nn.Module, step: int) -> Round:
        """Score every live rank, switch off the n_A lowest, open as many slots elsewhere."""
        layers = {name: layer for name, layer, _ in self.gates(model)}
        gates: dict[str, ALoRAGate] = {name: gate for name, _, gate in self.gates(model)}
        done = Round(step)
        if not any(gate.free_slots() for gate in gates.values()):  # nowhere to move a rank to
            self.history.append(done)
            return done
        importance = self.importance(model)
        ranked = sorted((score, i, name, k) for i, name in enumerate(gates) for k, score in importance[name].items())
        closing, recipients = self.plan(gates, ranked)
        for score, _, name, k in closing:
            gates[name].mask[k] = 0.0
            gates[name].closed_at[k] = step
            done.closed.append((name, k, score))
        # Highest mean importance first; one slot each, round-robin, while slots remain.
        order = sorted(recipients, key=lambda n: -sum(importance[n].values()) / len(importance[n]))
        left = len(closing)
        while left:
            for name in order:
                if left and gates[name].free_slots():
                    done.opened.append((name, self.open_slot(layers[name], gates[name])))
                    left -= 1
        self.history.append(done)
        return done

    def plan(self, gates: dict[str, ALoRAGate], ranked: list[tuple[float, int, str, int]]) -> tuple[list, list[str]]:
        """The lowest n_A ranks, fewer if the modules that lose none cannot take them all."""
        for n in range(min(self.opts.alora_ranks_per_round, len(ranked)), 0, -1):
            closing = ranked[:n]
            lost = {name for _, _, name, _ in closing}
            recipients = [name for name, gate in gates.items()
                          if name not in lost and gate.live_slots() and gate.free_slots()]
            if sum(gates[name].free_slots() for name in recipients) >= n:
                return closing, recipients
        return [], []

    @torch.no_grad()
    def open_slot(self, layer: nn.Module, gate: ALoRAGate) -> int:
        """Open a dead slot as LoRA starts a rank: A row redrawn, B column 0 (output unchanged).
        Never-live slots first (zero Adam moments), then the one closed longest ago."""
        dead = [k for k in range(gate.slots) if gate.mask[k] == 0]
        slot = min(dead, key=lambda k: (int(gate.closed_at[k]) != NEVER_LIVE, int(gate.closed_at[k]), k))
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        row = torch.empty(1, A.shape[1])
        nn.init.kaiming_uniform_(row, a=math.sqrt(5), generator=self.generator)  # PEFT's init of A
        A[slot] = row[0].to(A.device, A.dtype)
        B[:, slot] = 0.0
        gate.mask[slot] = 1.0
        return slot

    # -- AB-LoRA importance ---------------------------------------------------------------------
    @torch.no_grad()
    def importance(self, model: nn.Module) -> dict[str, dict[int, float]]:
        """IS(k) of every live rank k, per module: [S(M) − S(M∖k)] + [S(m ← {k}) − S(m ← ∅)]."""
        gates: dict[str, ALoRAGate] = {name: gate for name, _, gate in self.gates(model)}
        variants: list[tuple[str | None, torch.Tensor | None]] = [(None, None)]  # the model as it is
        for name, gate in gates.items():
            variants.append((name, torch.zeros_like(gate.mask)))  # module emptied
            for k in gate.live_slots():
                without, only = gate.mask.clone(), torch.zeros_like(gate.mask)
                without[k], only[k] = 0.0, 1.0
                variants += [(name, without), (name, only)]
        scores = self.scores(model, variants).tolist()
        full, i, out = scores[0], 1, {}
        for name, gate in gates.items():
            empty, out[name] = scores[i], {}
            i += 1
            for k in gate.live_slots():
                out[name][k] = (full - scores[i]) + (scores[i + 1] - empty)
                i += 2
        return out

    def scores(self, model: nn.Module, variants: list[tuple[str | None, torch.Tensor | None]]) -> torch.Tensor:
        """S = −loss on the validation batch for each variant (a module -> mask override),
        several variants per forward; eval mode, restored after. Broadcast from rank 0 under DDP."""
        if self.val_batch is None:
            raise RuntimeError("ALoRA scores ranks on the validation batch `prepare()` receives; call "
                               "`adapter.prepare(model, batches, val_batch)` before `attach()`")
        gates: dict[str, ALoRAGate] = {name: gate for name, _, gate in self.gates(model)}
        device = next(iter(gates.values())).mask.device
        inputs = {k: v.to(device) for k, v in self.val_batch.items() if k != "labels"}
        labels = self.val_batch["labels"].to(device)
        per_forward = max(1, self.score_rows // len(labels))
        problem = problem_type(model, labels)
        was_training, out = model.training, []
        model.eval()
        try:
            for start in range(0, len(variants), per_forward):
                chunk = variants[start : start + per_forward]
                for name, gate in gates.items():
                    gate.variants = torch.stack([mask if target == name else gate.mask for target, mask in chunk])
                repeated = {k: v.repeat(len(chunk), *[1] * (v.dim() - 1)) for k, v in inputs.items()}
                logits = model(**repeated).logits
                out += [-task_loss(part, labels, problem) for part in logits.chunk(len(chunk))]
        finally:
            for gate in gates.values():
                gate.variants = None
            model.train(was_training)
        scores = torch.stack(out).float()
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(scores, src=0)
        return scores.cpu()


def problem_type(model: nn.Module, labels: torch.Tensor) -> str:
    """The loss transformers' heads use: config.problem_type, or inferred the way they infer it."""
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None):
        return config.problem_type
    if getattr(config, "num_labels", 2) == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def task_loss(logits: torch.Tensor, labels: torch.Tensor, problem: str) -> torch.Tensor:
    """The loss the model computes with `labels=` (mean over the batch), for one copy of the batch."""
    logits = logits.float()
    if logits.dim() == 3 and labels.dim() == 2:  # causal LM: predict token t+1, skip -100
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float().reshape(logits.shape[:-1]))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
