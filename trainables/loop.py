"""The training recipe every trial runs on every worker: a Ray Train worker, or a
1-worker trial's Tune function (trainables/session.py says which; the loop does not care).

Reads top to bottom: setup (data, model, adapter, optimizer), train with
evaluations every `eval_every_steps`, report, export. It knows nothing about
any variant: the adapter is driven through its hooks (docs/design.md, "The adapter hooks").

The data order is global: every worker builds the same shuffled global batch
and takes its own slice, so N workers with global batch B see exactly what
one worker with batch B sees, and DDP's averaged gradient is the same.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from trainables.adapters import ADAPTERS
from trainables.contract import (ADAPTER_PARAMS, BUDGET_SETTLED, DIVERGED, EFFECTIVE_LORAPLUS_RATIO, EVALUATION, FINAL,
                                 RANK_ALLOCATION, RESUMED_FROM_STEP, SCALING_EXPONENT, STEP, scaling_exponent)
from trainables.checkpoint import (
    STATE_FILE,
    Resumed,
    read_training_state,
    restore_model,
    restore_training,
    save_training_state,
)
from trainables.models import upcast_trainable
from trainables.pruning import model_source
from trainables.session import Session, TrainSession
from trainables.tasks import make_task


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's worker function."""
    run_loop(config, TrainSession())


def run_loop(config: dict[str, Any], session: Session) -> None:
    try:
        train(config, session)
    except torch.OutOfMemoryError as error:
        raise TrialOutOfMemory(out_of_memory_hint(config, error)) from error


def train(config: dict[str, Any], session: Session) -> None:
    loop_started_at = time.time()  # the trial's own clock (benchmarks/overhead.py splits a trial's time with it)
    rank, world, device = session.rank, session.world, session.device
    train_cfg, task_cfg = config["train"], config["task"]
    torch.manual_seed(train_cfg["seed"])

    # --- setup: data, model, adapter -------------------------------------------
    # The task type (trainables/tasks.py) decides the data, the model class, the loss and
    # the evaluation: classification heads, or causal-LM instruction tuning.
    task = make_task(task_cfg, device, seed=train_cfg["seed"])
    # The experiment's model, or its pruned version (built once per recipe, cached: trainables/pruning.py).
    model, train_set, val_set = task.setup(model_source(config), trust_remote_code=config.get("trust_remote_code", False))

    global_batch = train_cfg["batch_size"]
    steps_per_epoch = max(1, len(train_set["labels"]) // global_batch)
    total_steps = max(1, math.ceil(train_cfg["epochs"] * steps_per_epoch))

    adapter = ADAPTERS[config["adapter"]["variant"]](
        task.adapter_config(config["adapter"], model), task_cfg.get("type", "classification"), total_steps=total_steps
    )
    # `prepare` takes what it needs from an endless stream of this worker's training
    # slices (GoRA: N batches) and one fixed validation batch, the same on every worker.
    val_batch = {k: v[:global_batch] for k, v in val_set.items()}
    model.to(device)  # GoRA's gradient pass runs where training will (PEFT adds adapters on the same device)
    with task.autocast():
        adapter.prepare(model, global_batches(train_set, global_batch, rank, world, train_cfg["seed"]), val_batch)
    model = adapter.attach(model)
    upcast_trainable(model)  # a bf16 base keeps fp32 adapter weights

    # A restarted worker group (killed worker, retried error, resumed search) continues
    # from the last evaluation's checkpoint instead of step 0.
    saved = read_checkpoint(session.get_checkpoint())
    if saved is not None:
        restore_model(model, saved)
    model = session.prepare_model(model)
    inner = model.module if hasattr(model, "module") else model

    optimizer = torch.optim.AdamW(adapter.param_groups(inner, train_cfg["lr"], train_cfg["weight_decay"]))
    clipped = clipped_parameters(inner, optimizer)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(train_cfg["warmup_ratio"] * total_steps), total_steps
    )
    resumed = Resumed(step=0, evaluations=0)
    if saved is not None:
        resumed = restore_training(saved, model=inner, optimizer=optimizer, scheduler=scheduler, adapter=adapter)

    setup_s = time.time() - loop_started_at  # data, model load, adapter, optimizer

    # --- train ----------------------------------------------------------------------
    batches = global_batches(train_set, global_batch, rank, world, train_cfg["seed"], skip=resumed.step)
    loss_sum, loss_count, evaluations = 0.0, 0, resumed.evaluations
    eval_s = 0.0  # seconds spent evaluating in this run of the loop: what evaluation costs a trial
    for step in range(resumed.step + 1, total_steps + 1):
        model.train()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = task.loss(model, batch)
        extra = adapter.extra_loss(inner, step)
        if extra is not None:
            loss = loss + extra
        if not all_finite(loss.detach(), device):
            # No loss value is reported: a NaN must never reach Tune, ASHA or Optuna.
            session.report({STEP: step, ADAPTER_PARAMS: adapter.adapter_params(inner), DIVERGED: True, FINAL: True})
            return
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, train_cfg["max_grad_norm"])
        optimizer.step()
        adapter.after_step(inner, step, batch)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1

        if step % train_cfg["eval_every_steps"] == 0 or step == total_steps:
            evaluations += 1
            eval_started_at = time.time()
            metrics = task.evaluate(inner, val_set, global_batch, rank, world)
            eval_s += time.time() - eval_started_at
            metrics.update({  # the keys the driver reads: trainables/contract.py
                STEP: step,
                EVALUATION: evaluations,  # the schedulers' clock: survives restarts, unlike Tune's iteration count
                "epoch": step / steps_per_epoch,
                "train_loss": mean_across_workers(loss_sum / loss_count, device),
                "lr": scheduler.get_last_lr()[0],
                ADAPTER_PARAMS: adapter.adapter_params(inner),
                BUDGET_SETTLED: step >= adapter.budget_settles_at(),  # raysearch/search/moasha.py
                RANK_ALLOCATION: json.dumps(adapter.rank_allocation(inner)),
                FINAL: step == total_steps,
                DIVERGED: False,
                "loop_started_at": loop_started_at,
                "setup_s": setup_s,
                "eval_s": eval_s,
                # what the variant applies, whatever was sampled: RoRA and GoRA scale by
                # alpha/sqrt(r) and LoRA+ raises B's learning rate without saying so in the config
                SCALING_EXPONENT: scaling_exponent(adapter.scaling()),
                EFFECTIVE_LORAPLUS_RATIO: adapter.loraplus_ratio(),
            })
            if resumed.step:
                metrics[RESUMED_FROM_STEP] = resumed.step
            loss_sum, loss_count = 0.0, 0
            if step == total_steps:  # the last checkpoint holds the exported adapter
                report(session, metrics, lambda folder: adapter.export(inner, folder / "adapter"))
            else:  # the others, what a restarted worker continues from
                report(session, metrics, lambda folder: save_training_state(
                    folder, model=inner, optimizer=optimizer, scheduler=scheduler, adapter=adapter,
                    step=step, evaluations=evaluations))


def clipped_parameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """What the loop clips: the model's parameters that the main optimizer steps, in model order.
    A parameter an adapter steps itself in `after_step` keeps its raw gradient (SoRA's gates: the
    paper's proximal step, whose band |∇g| ≤ λ is about the gradient itself; docs/variants.md,
    "SoRA"), and one outside the model is not clipped either (SaLoRA's λ)."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in model.parameters() if id(p) in stepped]


def global_batches(
    tensors: dict[str, torch.Tensor], global_batch: int, rank: int, world: int, seed: int, skip: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled global batches (full batches only); this worker's slice of each.
    `skip`: batches already trained on (a resumed trial continues the same order)."""
    n = len(tensors["labels"])
    per_epoch = max(1, n // global_batch)
    epoch, first = divmod(skip, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10_007 + epoch))
        for start in range(first * global_batch, n - global_batch + 1, global_batch):
            idx = order[start : start + global_batch][rank::world]
            yield {k: v[idx] for k, v in tensors.items()}
        epoch, first = epoch + 1, 0


def all_finite(loss: torch.Tensor, device: torch.device) -> bool:
    """True on every worker only if the loss is finite on every worker."""
    flag = torch.tensor([float(torch.isfinite(loss).all())], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def mean_across_workers(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor)
    return float(tensor.item() / dist.get_world_size())


def read_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
    """The training state of a reported checkpoint; None for a first start (or a final
    checkpoint, which holds the exported adapter only)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        if not (Path(directory) / STATE_FILE).is_file():
            return None
        return read_training_state(Path(directory))


class TrialOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message says what to lower."""


def out_of_memory_hint(config: dict[str, Any], error: BaseException) -> str:
    first_line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    adapter, train_cfg, resources = config["adapter"], config["train"], config["resources"]
    return (
        f"out of GPU memory with train.batch_size={train_cfg['batch_size']}, adapter rank "
        f"{adapter.get('rank')} on {resources['workers_per_trial']} worker(s): lower train.batch_size "
        "(or spread it over more resources.workers_per_trial), search smaller ranks, set "
        "task.gradient_checkpointing: true, or shorten task.max_length. "
        f"torch said: {first_line[:300]}"
    )


def report(session: Session, metrics: dict[str, Any], write: Callable[[Path], Any]) -> None:
    """Report `metrics` with a checkpoint whose folder `write` fills. Every worker holds the
    same state, so rank 0 alone writes; every worker reports."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if session.rank == 0 else None
        if folder is not None:
            write(folder)
        session.report(metrics, folder)
